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

    /// <summary><see cref="Round(float)"/> of four values (in the lower half of the result).</summary>
    public static Vector128<ushort> Round(Vector128<float> values)
    {
        var bits = values.AsUInt32();
        var rounded = (bits + Vector128.Create(0x7FFFu) + ((bits >>> 16) & Vector128<uint>.One)) >>> 16;
        var kept = Vector128.ConditionalSelect(Vector128.Equals(values, values).AsUInt32(), rounded, Vector128.Create(0x7FC0u));
        return Vector128.Narrow(kept, kept);
    }

    /// <summary><see cref="RoundTrip(float)"/> of four values.</summary>
    public static Vector128<float> RoundTrip(Vector128<float> values)
    {
        var bits = values.AsUInt32();
        var rounded = (bits + Vector128.Create(0x7FFFu) + ((bits >>> 16) & Vector128<uint>.One)) & Vector128.Create(0xFFFF0000u);
        return Vector128.ConditionalSelect(Vector128.Equals(values, values), rounded.AsSingle(), Vector128.Create(Widen(0x7FC0)));
    }

    /// <summary>A run of bfloat16 values → float32, in the vector width the CPU runs (<see cref="LaneWidths.Default"/>).</summary>
    public static void Widen(ReadOnlySpan<ushort> source, Span<float> destination) => Widen(source, destination, LaneWidths.Default);

    /// <summary><see cref="Widen(ReadOnlySpan{ushort}, Span{float})"/> in the given vector width.</summary>
    internal static unsafe void Widen(ReadOnlySpan<ushort> source, Span<float> destination, LaneWidth width)
    {
        if (destination.Length < source.Length) throw new ArgumentException("The destination is shorter than the source.", nameof(destination));
        fixed (ushort* from = source)
        fixed (float* to = destination)
        {
            if (width == LaneWidth.Vector256) Widen<Vector256<float>, FloatLanes256>(from, to, source.Length);
            else Widen<Vector128<float>, FloatLanes128>(from, to, source.Length);
        }
    }

    private static unsafe void Widen<TVector, TLanes>(ushort* source, float* destination, int length)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        int i = 0;
        for (; i + TLanes.Count <= length; i += TLanes.Count) TLanes.Store(TLanes.LoadBFloat16(source + i), destination + i);
        for (; i < length; i++) destination[i] = Widen(source[i]);
    }
}
