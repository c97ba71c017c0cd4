using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// <c>nn.LayerNorm</c> of one bfloat16 row with bfloat16 weight and bias, formed as libtorch's CPU kernel forms it for
/// reduced-precision inputs: statistics in float32, <c>rstd = 1 / √(max(var, 0) + eps)</c> in double, then
/// <c>((x · rstd) + (−mean · rstd)) · γ + β</c> in float32 with every operation rounded, and one rounding to bfloat16.
/// </summary>
/// <remarks>
/// Only the mean and variance are summed in a different order than libtorch's (plain vector sums, where libtorch uses
/// Welford's update); they agree to float32 rounding, which moves a bfloat16 result by its last bit at most, and rarely.
/// </remarks>
internal static unsafe class RowLayerNorm
{
    /// <summary>
    /// Normalizes the bfloat16 row <paramref name="x"/> of <paramref name="length"/> elements into
    /// <paramref name="destination"/>: the float32 values of the bfloat16 results.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Apply(ushort* x, ushort* weight, ushort* bias, double eps, int length, float* destination)
    {
        BFloat16Bits.Widen(new ReadOnlySpan<ushort>(x, length), new Span<float>(destination, length));
        int step = Vector256<float>.Count, i = 0;
        var sums = Vector256<float>.Zero;
        for (; i + step <= length; i += step) sums += Vector256.Load(destination + i);
        float sum = Vector256.Sum(sums);
        for (; i < length; i++) sum += destination[i];
        float mean = sum / length;

        var (means, squares) = (Vector256.Create(mean), Vector256<float>.Zero);
        for (i = 0; i + step <= length; i += step)
        {
            var deviation = Vector256.Load(destination + i) - means;
            squares += deviation * deviation;
        }
        float squareSum = Vector256.Sum(squares);
        for (; i < length; i++) squareSum += (destination[i] - mean) * (destination[i] - mean);
        float variance = squareSum / length;

        float rstd = (float)(1.0 / Math.Sqrt(Math.Max(variance, 0f) + eps));
        float shift = -mean * rstd;
        var (scales, shifts) = (Vector256.Create(rstd), Vector256.Create(shift));
        for (i = 0; i + step <= length; i += step)
        {
            var normalized = Vector256.Load(destination + i) * scales + shifts;
            var y = normalized * FloatLanes256.LoadBFloat16(weight + i) + FloatLanes256.LoadBFloat16(bias + i);
            BFloat16Bits.RoundTrip(y).Store(destination + i);
        }
        for (; i < length; i++)
        {
            float normalized = destination[i] * rstd + shift;
            destination[i] = BFloat16Bits.RoundTrip(normalized * BFloat16Bits.Widen(weight[i]) + BFloat16Bits.Widen(bias[i]));
        }
    }
}
