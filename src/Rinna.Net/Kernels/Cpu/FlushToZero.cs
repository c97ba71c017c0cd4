using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// Subnormal float32 values flushed to zero of the same sign, as a GPU's <c>.ftz</c> instructions do: the arithmetic of
/// bitsandbytes' fast-math CUDA kernels, which the 4-bit kernels reproduce bit for bit.
/// </summary>
internal static class FlushToZero
{
    /// <summary>The smallest normal float32 (FLT_MIN); smaller magnitudes flush to zero.</summary>
    public const float MinNormal = 1.17549435e-38f;

    /// <summary>A subnormal flushed to zero of the same sign.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Flush(float x) => MathF.Abs(x) < MinNormal ? MathF.CopySign(0f, x) : x;

    /// <summary>The same, lane by lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Flush(Vector256<float> x) =>
        Vector256.ConditionalSelect(Vector256.LessThan(Vector256.Abs(x), Vector256.Create(MinNormal)), x & Vector256.Create(-0f), x);

    /// <summary>The same, lane by lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Flush(Vector128<float> x) =>
        Vector128.ConditionalSelect(Vector128.LessThan(Vector128.Abs(x), Vector128.Create(MinNormal)), x & Vector128.Create(-0f), x);
}
