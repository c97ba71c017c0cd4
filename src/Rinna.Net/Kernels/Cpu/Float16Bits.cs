using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

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

    /// <summary>
    /// Rounds finite float32 values below 65520 in magnitude (those float16 holds) to the nearest float16, in place, as
    /// <c>(float)(Half)x</c> does (ties to even), eight at a time: normal float16 values by rounding the float32
    /// mantissa to 10 bits in integer arithmetic, subnormal ones (below 2⁻¹⁴) to whole multiples of 2⁻²⁴.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RoundToHalf(Span<float> values)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + Vector256<float>.Count <= values.Length; i += Vector256<float>.Count)
                RoundToHalf(Vector256.Create(values.Slice(i, Vector256<float>.Count))).CopyTo(values.Slice(i, Vector256<float>.Count));
        }
        for (; i < values.Length; i++) values[i] = (float)(Half)values[i];
    }

    /// <summary><see cref="RoundToHalf(Span{float})"/> of eight values, under the same condition (finite, below 65520 in magnitude).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> RoundToHalf(Vector256<float> x)
    {
        var bits = x.AsUInt32();
        var normal = (bits + Vector256.Create(0xFFFu) + ((bits >> 13) & Vector256<uint>.One)) & Vector256.Create(0xFFFFE000u);
        var subnormal = Vector256.Round(x * Vector256.Create(16777216f)) * Vector256.Create(1f / 16777216f); // multiples of 2⁻²⁴
        return Vector256.ConditionalSelect(Vector256.LessThan(bits & Vector256.Create(0x7FFFFFFFu), Vector256.Create(0x38800000u)).AsSingle(), // below 2⁻¹⁴
            subnormal, normal.AsSingle());
    }

    /// <summary>
    /// Float16 bits, sign-extended to int32 lanes, as float32 <c>w · 2⁻¹¹²</c> exactly: exponent and mantissa shifted into
    /// float32's places and the sign kept, three vector operations. Float16 subnormals become float32 subnormals, which
    /// some CPUs (Intel's) handle by microcode assists; <see cref="Exact(Vector512{int})"/> avoids them.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Scaled(Vector512<int> bits) => Avx512F.And(Avx512F.ShiftLeftLogical(bits, 13), Vector512.Create(ScaledMask)).AsSingle();

    /// <summary><see cref="Scaled(Vector512{int})"/> on 256-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Scaled(Vector256<int> bits) => (Vector256.ShiftLeft(bits, 13) & Vector256.Create(ScaledMask)).AsSingle();

    /// <summary><see cref="Scaled(Vector512{int})"/> on 128-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Scaled(Vector128<int> bits) => (Vector128.ShiftLeft(bits, 13) & Vector128.Create(ScaledMask)).AsSingle();

    /// <summary><see cref="Scaled(Vector512{int})"/> for one value.</summary>
    public static float Scaled(ushort bits) => BitConverter.Int32BitsToSingle(((short)bits << 13) & ScaledMask);

    /// <summary>The sign (bit 31 after the shift, as sign extension put it there) and the shifted exponent and mantissa.</summary>
    private const int ScaledMask = unchecked((int)0x8FFFE000);

    /// <summary>
    /// Float16 bits, sign-extended to int32 lanes, as their exact float32 values, without ever forming a float32 subnormal
    /// (CPUs that take a microcode assist on one run this at full speed). Exponent and mantissa move into float32's places
    /// and the exponent is rebiased by an integer add: exact for normal values (<c>v ≥ 2⁻¹⁴</c>), while a float16 subnormal
    /// <c>m · 2⁻²⁴</c> comes out as <c>v = 2⁻¹⁵ + m · 2⁻²⁵</c>, whose exact value is <c>2v − 2⁻¹⁴</c> (a normal float32 or
    /// zero). That is below <c>v</c> exactly when <c>v &lt; 2⁻¹⁴</c>, so the minimum of the two picks the right value per lane
    /// without a mask; the sign, whose bit is still clear, is or-ed in last. Seven vector operations with AVX-512 (which
    /// fuses the last two), eight with AVX2. Infinities and NaNs come out as large finite values: callers exclude them.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exact(Vector512<int> bits)
    {
        var value = (Vector512.ShiftRightLogical(Vector512.ShiftLeft(bits, 17), 4) + Vector512.Create(Rebias)).AsSingle();
        var exact = Vector512.MinNative(value, Vector512.FusedMultiplyAdd(value, Vector512.Create(2f), Vector512.Create(-SmallestNormal)));
        return (exact.AsInt32() | (bits & Vector512.Create(SignBit))).AsSingle();
    }

    /// <summary><see cref="Exact(Vector512{int})"/> on 256-bit vectors (AVX2 on x64).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exact(Vector256<int> bits)
    {
        var value = (Vector256.ShiftRightLogical(Vector256.ShiftLeft(bits, 17), 4) + Vector256.Create(Rebias)).AsSingle();
        var exact = Vector256.MinNative(value, Vector256.FusedMultiplyAdd(value, Vector256.Create(2f), Vector256.Create(-SmallestNormal)));
        return (exact.AsInt32() | (bits & Vector256.Create(SignBit))).AsSingle();
    }

    /// <summary><see cref="Exact(Vector512{int})"/> on 128-bit vectors (NEON on Arm64, SSE on x64).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Exact(Vector128<int> bits)
    {
        var value = (Vector128.ShiftRightLogical(Vector128.ShiftLeft(bits, 17), 4) + Vector128.Create(Rebias)).AsSingle();
        var exact = Vector128.MinNative(value, Vector128.FusedMultiplyAdd(value, Vector128.Create(2f), Vector128.Create(-SmallestNormal)));
        return (exact.AsInt32() | (bits & Vector128.Create(SignBit))).AsSingle();
    }

    /// <summary>The float32 exponent bias minus float16's, in the exponent field.</summary>
    private const int Rebias = 112 << 23;

    private const int SignBit = unchecked((int)0x80000000);

    /// <summary>2⁻¹⁴, float16's smallest normal value.</summary>
    private const float SmallestNormal = 1f / 16384;

    private static Vector256<float> Convert(Vector256<uint> bits)
    {
        var magnitude = (Vector256.ShiftLeft(bits & Vector256.Create(0x7FFFu), 13).AsSingle() * Vector256.Create(ExponentRebias)).AsUInt32();
        return (magnitude | Vector256.ShiftLeft(bits & Vector256.Create(0x8000u), 16)).AsSingle();
    }
}
