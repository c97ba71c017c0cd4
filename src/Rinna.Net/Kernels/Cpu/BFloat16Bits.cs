using System.Runtime.Intrinsics;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>bfloat16 conversions for the managed kernels, bit for bit what c10::BFloat16 does.</summary>
internal static class BFloat16Bits
{
    /// <summary>bfloat16 → float32: the bits are the top half of the float32.</summary>
    public static float Widen(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>float32 → bfloat16, rounding to nearest even (NaN stays NaN).</summary>
    public static ushort Round(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        return float.IsNaN(value) ? (ushort)0x7FC0 : (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }

    /// <summary>The value as bfloat16 holds it, widened back: what a libtorch operation returning bfloat16 passes to the next.</summary>
    public static float RoundTrip(float value) => Widen(Round(value));

    /// <summary><see cref="Round(float)"/> of eight values.</summary>
    public static Vector128<ushort> Round(Vector256<float> values)
    {
        var bits = values.AsUInt32();
        var rounded = (bits + Vector256.Create(0x7FFFu) + ((bits >>> 16) & Vector256<uint>.One)) >>> 16;
        var kept = Vector256.ConditionalSelect(Vector256.Equals(values, values).AsUInt32(), rounded, Vector256.Create(0x7FC0u));
        return Vector128.Narrow(kept.GetLower(), kept.GetUpper());
    }

    /// <summary><see cref="RoundTrip(float)"/> of eight values.</summary>
    public static Vector256<float> RoundTrip(Vector256<float> values)
    {
        var bits = values.AsUInt32();
        var rounded = (bits + Vector256.Create(0x7FFFu) + ((bits >>> 16) & Vector256<uint>.One)) & Vector256.Create(0xFFFF0000u);
        return Vector256.ConditionalSelect(Vector256.Equals(values, values), rounded.AsSingle(), Vector256.Create(Widen(0x7FC0)));
    }

    /// <summary>A run of bfloat16 values → float32, vectorized.</summary>
    public static void Widen(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        int i = 0;
        for (; i + Vector256<ushort>.Count <= source.Length; i += Vector256<ushort>.Count)
        {
            var (low, high) = Vector256.Widen(Vector256.Create(source.Slice(i, Vector256<ushort>.Count)));
            Vector256.ShiftLeft(low, 16).AsSingle().CopyTo(destination.Slice(i, Vector256<float>.Count));
            Vector256.ShiftLeft(high, 16).AsSingle().CopyTo(destination.Slice(i + Vector256<float>.Count, Vector256<float>.Count));
        }
        for (; i < source.Length; i++) destination[i] = Widen(source[i]);
    }
}
