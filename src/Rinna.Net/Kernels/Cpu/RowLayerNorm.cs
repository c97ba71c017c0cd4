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
    /// <paramref name="destination"/>: the float32 values of the bfloat16 results, in the vector width
    /// <paramref name="width"/> (<see cref="LaneWidths.Default"/> where the CPU runs it).
    /// </summary>
    public static void Apply(ushort* x, ushort* weight, ushort* bias, double eps, int length, float* destination, LaneWidth width)
    {
        if (width == LaneWidth.Vector256) Apply<Vector256<float>, FloatLanes256>(x, weight, bias, eps, length, destination);
        else Apply<Vector128<float>, FloatLanes128>(x, weight, bias, eps, length, destination);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Apply<TVector, TLanes>(ushort* x, ushort* weight, ushort* bias, double eps, int length, float* destination)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        int step = TLanes.Count, i = 0;
        var sums = TLanes.Broadcast(0);
        for (; i + step <= length; i += step)
        {
            var value = TLanes.LoadBFloat16(x + i);
            TLanes.Store(value, destination + i);
            sums = TLanes.Add(sums, value);
        }
        float sum = TLanes.Sum(sums);
        for (; i < length; i++) sum += destination[i] = BFloat16Bits.Widen(x[i]);
        float mean = sum / length;

        var (means, squares) = (TLanes.Broadcast(mean), TLanes.Broadcast(0));
        for (i = 0; i + step <= length; i += step)
        {
            var deviation = TLanes.Subtract(TLanes.Load(destination + i), means);
            squares = TLanes.Add(squares, TLanes.Multiply(deviation, deviation));
        }
        float squareSum = TLanes.Sum(squares);
        for (; i < length; i++) squareSum += (destination[i] - mean) * (destination[i] - mean);
        float variance = squareSum / length;

        float rstd = (float)(1.0 / Math.Sqrt(Math.Max(variance, 0f) + eps));
        float shift = -mean * rstd;
        var (scales, shifts) = (TLanes.Broadcast(rstd), TLanes.Broadcast(shift));
        for (i = 0; i + step <= length; i += step)
        {
            // Each product and sum rounded on its own, as libtorch's kernel does: no fused multiply-add.
            var normalized = TLanes.Add(TLanes.Multiply(TLanes.Load(destination + i), scales), shifts);
            var y = TLanes.Add(TLanes.Multiply(normalized, TLanes.LoadBFloat16(weight + i)), TLanes.LoadBFloat16(bias + i));
            TLanes.Store(TLanes.RoundTripBFloat16(y), destination + i);
        }
        for (; i < length; i++)
        {
            float normalized = destination[i] * rstd + shift;
            destination[i] = BFloat16Bits.RoundTrip(normalized * BFloat16Bits.Widen(weight[i]) + BFloat16Bits.Widen(bias[i]));
        }
    }
}
