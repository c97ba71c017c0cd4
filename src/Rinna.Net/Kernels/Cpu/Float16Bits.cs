using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>float16 conversions for managed code, bit for bit what <c>(float)Half</c> gives.</summary>
internal static class Float16Bits
{
    /// <summary>2¹¹²: the float32 exponent bias (127) minus float16's (15).</summary>
    private static readonly float ExponentRebias = BitConverter.Int32BitsToSingle((127 + 112) << 23);

    /// <summary>
    /// A run of float16 bit patterns → float32, vectorized (.NET has no F16C intrinsics): exponent and mantissa shifted
    /// into float32's places and scaled by 2¹¹², which is exact for normal and subnormal values alike; a vector holding an
    /// infinity or NaN (which that scaling would turn into infinity) converts one value at a time instead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Widen(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("The destination is shorter than the source.", nameof(destination));
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var exponentMask = Vector256.Create(0x7C00u);
            for (; i + Vector256<ushort>.Count <= source.Length; i += Vector256<ushort>.Count)
            {
                var (low, high) = Vector256.Widen(Vector256.Create(source.Slice(i, Vector256<ushort>.Count)));
                if (Vector256.EqualsAny(low & exponentMask, exponentMask) || Vector256.EqualsAny(high & exponentMask, exponentMask))
                {
                    for (int k = i; k < i + Vector256<ushort>.Count; k++) destination[k] = (float)BitConverter.UInt16BitsToHalf(source[k]);
                    continue;
                }
                Convert(low).CopyTo(destination.Slice(i, Vector256<float>.Count));
                Convert(high).CopyTo(destination.Slice(i + Vector256<float>.Count, Vector256<float>.Count));
            }
        }
        for (; i < source.Length; i++) destination[i] = (float)BitConverter.UInt16BitsToHalf(source[i]);
    }

    private static Vector256<float> Convert(Vector256<uint> bits)
    {
        var magnitude = (Vector256.ShiftLeft(bits & Vector256.Create(0x7FFFu), 13).AsSingle() * Vector256.Create(ExponentRebias)).AsUInt32();
        return (magnitude | Vector256.ShiftLeft(bits & Vector256.Create(0x8000u), 16)).AsSingle();
    }
}
