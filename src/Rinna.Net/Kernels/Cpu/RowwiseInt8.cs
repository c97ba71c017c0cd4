using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// The per-token steps around the int8 product for a decode step's row, or the few rows of a continuous-batching step,
/// on the CPU: absmax quantization of each row's activations before it, and the rescale, bias and dtype conversion after
/// it, each one pass in managed code.
/// </summary>
/// <remarks>
/// Why: for a few tokens these steps run on a few thousand elements per row, where ten separate ATen calls inside the
/// TorchScript function cost a sizeable fraction of the product itself (benchmarks/RESULTS.md has the timings). They
/// compute exactly what <see cref="AtenInt8Kernels.Script"/> computes, in the same float32 operations and order, so the
/// results are bitwise equal (a test holds both paths to it). Rows are independent in the script unless one holds an
/// outlier feature, whose column is then taken out of every row; so a step with any outlier, or any input this class
/// does not handle, goes through the script instead. The loops are written once over <see cref="IFloatLanes{TVector}"/>
/// and run in 256-bit vectors on x64 and 128-bit ones on Arm64 (<see cref="LaneWidths.Default"/>), with the same bits.
/// </remarks>
internal static unsafe class RowwiseInt8
{
    /// <summary>
    /// Quantizes contiguous CPU rows <c>[M, K]</c> (1 ≤ M ≤ <see cref="Int8Gemv.MaxRows"/>) of bfloat16 or float32
    /// activations (the dtypes <see cref="Rescale(Tensor, ReadOnlySpan{float}, Tensor, Tensor?, ScalarType, bool, Tensor?, LaneWidth?)"/> produces), each
    /// <c>round(x / scale)</c> with its own <c>scale = max(absmax, 1e-30) / 127</c>. Returns false, doing nothing, when
    /// the rows are not ones this path takes or when <paramref name="threshold"/> is positive and some magnitude exceeds it
    /// (the outlier decomposition is needed). Row m's scale goes to <c>scales[m]</c>; the caller's span (a stack buffer
    /// of <see cref="Int8Gemv.MaxRows"/>) keeps the per-token path free of allocations. The vector loops run in
    /// <paramref name="width"/>, <see cref="LaneWidths.Default"/> when null.
    /// </summary>
    public static bool TryQuantize(Tensor x, double threshold, out Tensor quantized, Span<float> scales, LaneWidth? width = null)
    {
        quantized = null!;
        if (x.device_type != TorchSharp.DeviceType.CPU || x.dim() != 2 || x.size(0) < 1 || x.size(0) > Math.Min(Int8Gemv.MaxRows, scales.Length)
            || !x.is_contiguous() || x.dtype is not (ScalarType.BFloat16 or ScalarType.Float32))
            return false;
        int rows = (int)x.size(0), length = checked((int)x.size(1));
        // bfloat16 rows are widened once into a pooled buffer; float32 rows are read where they are.
        var pooled = x.dtype == ScalarType.BFloat16 ? ArrayPool<float>.Shared.Rent(rows * length) : null;
        try
        {
            ReadOnlySpan<float> values = pooled is null ? MemoryMarshal.Cast<byte, float>(x.bytes) : pooled.AsSpan(0, rows * length);
            var lanes = width ?? LaneWidths.Default;
            if (pooled is not null) BFloat16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(x.bytes), pooled.AsSpan(0, rows * length), lanes);
            for (int r = 0; r < rows; r++)
            {
                float absMax = AbsMax(values.Slice(r * length, length), lanes);
                // NaN and infinity fall through to the script, which handles them as ATen does.
                if (!float.IsFinite(absMax) || (threshold > 0.0 && absMax > threshold)) return false;
                scales[r] = MathF.Max(absMax, 1e-30f) / 127.0f;
            }
            var codes = empty(rows, length, dtype: ScalarType.Int8);
            var destination = MemoryMarshal.Cast<byte, sbyte>(codes.bytes);
            for (int r = 0; r < rows; r++)
                Quantize(values.Slice(r * length, length), scales[r], destination.Slice(r * length, length), lanes);
            quantized = codes;
            return true;
        }
        finally
        {
            if (pooled is not null) ArrayPool<float>.Shared.Return(pooled);
        }
    }

    /// <summary>
    /// <c>accumulator · (scale · weightScale) + bias</c> as <paramref name="dtype"/> (bfloat16 or float32), for the int32
    /// accumulator <c>[M, N]</c> of M rows, row m with <c>scales[m]</c>; then, where asked, the exact GELU and a
    /// <paramref name="residual"/> (contiguous <c>[M, N]</c> of <paramref name="dtype"/>), each step rounded to the dtype
    /// as separate libtorch operations round (the GELU's erf may differ in its last float32 bit, <see cref="ExactGelu"/>).
    /// The vector loops run in <paramref name="width"/>, <see cref="LaneWidths.Default"/> when null.
    /// </summary>
    public static Tensor Rescale(Tensor accumulator, ReadOnlySpan<float> scales, Tensor weightScale, Tensor? bias, ScalarType dtype,
        bool gelu = false, Tensor? residual = null, LaneWidth? width = null)
    {
        var lanes = width ?? LaneWidths.Default;
        int rows = (int)accumulator.size(0), length = checked((int)accumulator.size(1));
        var acc = MemoryMarshal.Cast<byte, int>(accumulator.bytes);
        var rowScale = MemoryMarshal.Cast<byte, float>(weightScale.bytes);
        var shift = bias is null ? default : MemoryMarshal.Cast<byte, float>(bias.bytes);
        var result = empty(rows, length, dtype: dtype);
        var output = result.bytes;
        var added = residual is null ? default : residual.bytes;
        bool bfloat16 = dtype != ScalarType.Float32;
        int size = bfloat16 ? sizeof(ushort) : sizeof(float);
        Span<float> block = stackalloc float[256];
        for (int r = 0; r < rows; r++)
            for (int start = 0; start < length; start += block.Length)
            {
                int count = Math.Min(block.Length, length - start), at = r * length + start;
                RescaleBlock(acc.Slice(at, count), scales[r], rowScale.Slice(start, count), bias is null ? default : shift.Slice(start, count),
                    bias is not null, gelu, bfloat16, residual is null ? default : added.Slice(at * size, count * size), default,
                    block[..count], output.Slice(at * size, count * size), lanes);
            }
        return result;
    }

    /// <summary>
    /// One block of <see cref="Rescale(Tensor, ReadOnlySpan{float}, Tensor, Tensor?, ScalarType, bool, Tensor?, LaneWidth?)"/>: the
    /// int32 sums <paramref name="acc"/> of one activation row (scale <paramref name="scale"/>) rescaled, biased, through the
    /// GELU where asked, plus a <paramref name="residual"/> and then a <paramref name="secondResidual"/> where given (their
    /// bytes in the output dtype, or empty), each step rounded to the output dtype, into <paramref name="output"/>'s bytes.
    /// <paramref name="values"/> is scratch of the block's length; the vector loops run in <paramref name="width"/>.
    /// </summary>
    internal static void RescaleBlock(ReadOnlySpan<int> acc, float scale, ReadOnlySpan<float> rowScale, ReadOnlySpan<float> bias, bool hasBias,
        bool gelu, bool bfloat16, ReadOnlySpan<byte> residual, ReadOnlySpan<byte> secondResidual, Span<float> values, Span<byte> output, LaneWidth width)
    {
        int count = acc.Length;
        if (rowScale.Length < count || (hasBias && bias.Length < count) || values.Length < count
            || output.Length < count * (bfloat16 ? sizeof(ushort) : sizeof(float))
            || (!residual.IsEmpty && residual.Length < output.Length) || (!secondResidual.IsEmpty && secondResidual.Length < output.Length))
            throw new ArgumentException("A span is shorter than the block.");
        fixed (int* sums = acc)
        fixed (float* rowScales = rowScale)
        fixed (float* shifts = bias)
        fixed (byte* first = residual)
        fixed (byte* second = secondResidual)
        fixed (float* block = values)
        fixed (byte* destination = output)
        {
            if (width == LaneWidth.Vector256)
                RescaleBlock<Vector256<float>, FloatLanes256>(sums, scale, rowScales, hasBias ? shifts : null, gelu, bfloat16, first, second, block, destination, count);
            else
                RescaleBlock<Vector128<float>, FloatLanes128>(sums, scale, rowScales, hasBias ? shifts : null, gelu, bfloat16, first, second, block, destination, count);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RescaleBlock<TVector, TLanes>(int* acc, float scale, float* rowScale, float* bias, bool gelu, bool bfloat16,
        byte* residual, byte* secondResidual, float* values, byte* output, int count)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        Rescale<TVector, TLanes>(acc, scale, rowScale, bias, values, count);
        if (gelu)
        {
            if (bfloat16) RoundTrip<TVector, TLanes>(values, count);
            ExactGelu.Apply(new Span<float>(values, count));
        }
        AddResidual<TVector, TLanes>(values, residual, bfloat16, count);
        AddResidual<TVector, TLanes>(values, secondResidual, bfloat16, count);
        if (bfloat16) NarrowToBFloat16<TVector, TLanes>(values, (ushort*)output, count);
        else new ReadOnlySpan<float>(values, count).CopyTo(new Span<float>(output, count));
    }

    /// <summary>Adds a residual held in the output dtype (null for none) to values rounded to that dtype first.</summary>
    private static void AddResidual<TVector, TLanes>(float* values, byte* summands, bool bfloat16, int count)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        if (summands == null) return;
        int i = 0;
        if (bfloat16)
        {
            var summand = (ushort*)summands;
            for (; i + TLanes.Count <= count; i += TLanes.Count)
                TLanes.Store(TLanes.Add(TLanes.RoundTripBFloat16(TLanes.Load(values + i)), TLanes.LoadBFloat16(summand + i)), values + i);
            for (; i < count; i++) values[i] = BFloat16Bits.RoundTrip(values[i]) + BFloat16Bits.Widen(summand[i]);
        }
        else
        {
            var summand = (float*)summands;
            for (; i + TLanes.Count <= count; i += TLanes.Count) TLanes.Store(TLanes.Add(TLanes.Load(values + i), TLanes.Load(summand + i)), values + i);
            for (; i < count; i++) values[i] += summand[i];
        }
    }

    /// <summary>
    /// Quantizes one row of float32 activations as <see cref="TryQuantize"/> does, into <paramref name="codes"/>; false,
    /// leaving the codes undefined, when a value is not finite or a magnitude exceeds a positive <paramref name="threshold"/>.
    /// </summary>
    internal static bool TryQuantizeRow(ReadOnlySpan<float> values, double threshold, Span<sbyte> codes, out float scale, LaneWidth width)
    {
        float absMax = AbsMax(values, width);
        scale = MathF.Max(absMax, 1e-30f) / 127.0f;
        if (!float.IsFinite(absMax) || (threshold > 0.0 && absMax > threshold)) return false;
        Quantize(values, scale, codes, width);
        return true;
    }

    /// <summary>Each value as bfloat16 holds it (<see cref="BFloat16Bits.RoundTrip(float)"/>).</summary>
    private static void RoundTrip<TVector, TLanes>(float* values, int count) where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        int i = 0;
        for (; i + TLanes.Count <= count; i += TLanes.Count) TLanes.Store(TLanes.RoundTripBFloat16(TLanes.Load(values + i)), values + i);
        for (; i < count; i++) values[i] = BFloat16Bits.RoundTrip(values[i]);
    }

    /// <summary>The largest magnitude, or NaN when a value is not finite.</summary>
    private static float AbsMax(ReadOnlySpan<float> values, LaneWidth width)
    {
        fixed (float* row = values)
            return width == LaneWidth.Vector256
                ? AbsMax<Vector256<float>, FloatLanes256>(row, values.Length)
                : AbsMax<Vector128<float>, FloatLanes128>(row, values.Length);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float AbsMax<TVector, TLanes>(float* values, int length) where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        int i = 0;
        var best = TLanes.Broadcast(0);
        // x · 0 is NaN exactly for a NaN or an infinity: the hardware's maximum may drop NaN lanes, and those must reach the caller.
        var (zero, finite) = (TLanes.Broadcast(0), TLanes.Broadcast(0));
        for (; i + TLanes.Count <= length; i += TLanes.Count)
        {
            var value = TLanes.Load(values + i);
            best = TLanes.Max(best, TLanes.Abs(value));
            finite = TLanes.Add(finite, TLanes.Multiply(value, zero));
        }
        if (float.IsNaN(TLanes.Sum(finite))) return float.NaN;
        float* lanes = stackalloc float[TLanes.Count];
        TLanes.Store(best, lanes);
        float max = 0;
        for (int lane = 0; lane < TLanes.Count; lane++) max = MathF.Max(max, lanes[lane]);
        for (; i < length; i++)
        {
            if (!float.IsFinite(values[i])) return float.NaN;
            max = MathF.Max(max, MathF.Abs(values[i]));
        }
        return max;
    }

    private static void Quantize(ReadOnlySpan<float> values, float scale, Span<sbyte> destination, LaneWidth width)
    {
        if (destination.Length < values.Length) throw new ArgumentException("The codes are shorter than the row.", nameof(destination));
        fixed (float* row = values)
        fixed (sbyte* codes = destination)
        {
            if (width == LaneWidth.Vector256) Quantize<Vector256<float>, FloatLanes256>(row, values.Length, scale, codes);
            else Quantize<Vector128<float>, FloatLanes128>(row, values.Length, scale, codes);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Quantize<TVector, TLanes>(float* values, int length, float scale, sbyte* destination)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        // Division, not multiplication by a reciprocal, and rounding half to even: what ATen's div and round do.
        int i = 0, n = TLanes.Count;
        var divisor = TLanes.Broadcast(scale);
        for (; i + 4 * n <= length; i += 4 * n)
            TLanes.StoreRoundedSBytes(TLanes.Divide(TLanes.Load(values + i), divisor), TLanes.Divide(TLanes.Load(values + i + n), divisor),
                TLanes.Divide(TLanes.Load(values + i + 2 * n), divisor), TLanes.Divide(TLanes.Load(values + i + 3 * n), divisor), destination + i);
        for (; i < length; i++) destination[i] = (sbyte)MathF.Round(values[i] / scale, MidpointRounding.ToEven);
    }

    private static void Rescale<TVector, TLanes>(int* acc, float scale, float* rowScale, float* bias, float* destination, int count)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        int i = 0;
        var xScale = TLanes.Broadcast(scale);
        for (; i + TLanes.Count <= count; i += TLanes.Count)
        {
            var value = TLanes.Multiply(TLanes.LoadInt32(acc + i), TLanes.Multiply(xScale, TLanes.Load(rowScale + i)));
            TLanes.Store(bias == null ? value : TLanes.Add(value, TLanes.Load(bias + i)), destination + i);
        }
        for (; i < count; i++)
        {
            float value = acc[i] * (scale * rowScale[i]);
            destination[i] = bias == null ? value : value + bias[i];
        }
    }

    /// <summary>float32 → bfloat16 with round-to-nearest-even as c10::BFloat16 converts (NaN stays NaN).</summary>
    private static void NarrowToBFloat16<TVector, TLanes>(float* source, ushort* destination, int count)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        int i = 0;
        for (; i + TLanes.Count <= count; i += TLanes.Count) TLanes.StoreBFloat16(TLanes.Load(source + i), destination + i);
        for (; i < count; i++) destination[i] = BFloat16Bits.Round(source[i]);
    }
}
