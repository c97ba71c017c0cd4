using System.Buffers;
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
/// does not handle, goes through the script instead.
/// </remarks>
internal static class RowwiseInt8
{
    /// <summary>
    /// Quantizes contiguous CPU rows <c>[M, K]</c> (1 ≤ M ≤ <see cref="Int8Gemv.MaxRows"/>) of bfloat16 or float32
    /// activations (the dtypes <see cref="Rescale(Tensor, ReadOnlySpan{float}, Tensor, Tensor?, ScalarType, bool, Tensor?)"/> produces), each
    /// <c>round(x / scale)</c> with its own <c>scale = max(absmax, 1e-30) / 127</c>. Returns false, doing nothing, when
    /// the rows are not ones this path takes or when <paramref name="threshold"/> is positive and some magnitude exceeds it
    /// (the outlier decomposition is needed). Row m's scale goes to <c>scales[m]</c>; the caller's span (a stack buffer
    /// of <see cref="Int8Gemv.MaxRows"/>) keeps the per-token path free of allocations.
    /// </summary>
    public static bool TryQuantize(Tensor x, double threshold, out Tensor quantized, Span<float> scales)
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
            if (pooled is not null) BFloat16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(x.bytes), pooled.AsSpan(0, rows * length));
            for (int r = 0; r < rows; r++)
            {
                float absMax = AbsMax(values.Slice(r * length, length));
                // NaN and infinity fall through to the script, which handles them as ATen does.
                if (!float.IsFinite(absMax) || (threshold > 0.0 && absMax > threshold)) return false;
                scales[r] = MathF.Max(absMax, 1e-30f) / 127.0f;
            }
            var codes = empty(rows, length, dtype: ScalarType.Int8);
            var destination = MemoryMarshal.Cast<byte, sbyte>(codes.bytes);
            for (int r = 0; r < rows; r++)
                Quantize(values.Slice(r * length, length), scales[r], destination.Slice(r * length, length));
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
    /// </summary>
    public static Tensor Rescale(Tensor accumulator, ReadOnlySpan<float> scales, Tensor weightScale, Tensor? bias, ScalarType dtype,
        bool gelu = false, Tensor? residual = null)
    {
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
                    block[..count], output.Slice(at * size, count * size));
            }
        return result;
    }

    /// <summary>
    /// One block of <see cref="Rescale(Tensor, ReadOnlySpan{float}, Tensor, Tensor?, ScalarType, bool, Tensor?)"/>: the
    /// int32 sums <paramref name="acc"/> of one activation row (scale <paramref name="scale"/>) rescaled, biased, through the
    /// GELU where asked, plus a <paramref name="residual"/> and then a <paramref name="secondResidual"/> where given (their
    /// bytes in the output dtype, or empty), each step rounded to the output dtype, into <paramref name="output"/>'s bytes.
    /// <paramref name="values"/> is scratch of the block's length.
    /// </summary>
    internal static void RescaleBlock(ReadOnlySpan<int> acc, float scale, ReadOnlySpan<float> rowScale, ReadOnlySpan<float> bias, bool hasBias,
        bool gelu, bool bfloat16, ReadOnlySpan<byte> residual, ReadOnlySpan<byte> secondResidual, Span<float> values, Span<byte> output)
    {
        Rescale(acc, scale, rowScale, bias, hasBias, values);
        if (gelu)
        {
            if (bfloat16) RoundTrip(values);
            ExactGelu.Apply(values);
        }
        AddResidual(values, residual, bfloat16);
        AddResidual(values, secondResidual, bfloat16);
        if (bfloat16) NarrowToBFloat16(values, MemoryMarshal.Cast<byte, ushort>(output));
        else values.CopyTo(MemoryMarshal.Cast<byte, float>(output));
    }

    /// <summary>Adds a residual held in the output dtype (bytes; empty for none) to values rounded to that dtype first.</summary>
    private static void AddResidual(Span<float> values, ReadOnlySpan<byte> summands, bool bfloat16)
    {
        if (summands.IsEmpty) return;
        if (bfloat16)
        {
            RoundTrip(values);
            var summand = MemoryMarshal.Cast<byte, ushort>(summands);
            for (int i = 0; i < values.Length; i++) values[i] += BFloat16Bits.Widen(summand[i]);
        }
        else
        {
            var summand = MemoryMarshal.Cast<byte, float>(summands);
            for (int i = 0; i < values.Length; i++) values[i] += summand[i];
        }
    }

    /// <summary>
    /// Quantizes one row of float32 activations as <see cref="TryQuantize"/> does, into <paramref name="codes"/>; false,
    /// leaving the codes undefined, when a value is not finite or a magnitude exceeds a positive <paramref name="threshold"/>.
    /// </summary>
    internal static bool TryQuantizeRow(ReadOnlySpan<float> values, double threshold, Span<sbyte> codes, out float scale)
    {
        float absMax = AbsMax(values);
        scale = MathF.Max(absMax, 1e-30f) / 127.0f;
        if (!float.IsFinite(absMax) || (threshold > 0.0 && absMax > threshold)) return false;
        Quantize(values, scale, codes);
        return true;
    }

    /// <summary>Each value as bfloat16 holds it (<see cref="BFloat16Bits.RoundTrip(float)"/>).</summary>
    private static void RoundTrip(Span<float> values)
    {
        for (int i = 0; i < values.Length; i++) values[i] = BFloat16Bits.RoundTrip(values[i]);
    }

    private static float AbsMax(ReadOnlySpan<float> values)
    {
        int i = 0;
        var best = Vector256<float>.Zero;
        var notANumber = Vector256<float>.Zero;
        for (; i + Vector256<float>.Count <= values.Length; i += Vector256<float>.Count)
        {
            var value = Vector256.Create(values.Slice(i, Vector256<float>.Count));
            best = Vector256.Max(best, Vector256.Abs(value));
            notANumber |= ~Vector256.Equals(value, value); // Max would drop NaN lanes, and a NaN must reach the caller
        }
        if (notANumber != Vector256<float>.Zero) return float.NaN;
        float max = 0;
        for (int lane = 0; lane < Vector256<float>.Count; lane++) max = MathF.Max(max, best[lane]);
        for (; i < values.Length; i++) max = MathF.Max(max, MathF.Abs(values[i]));
        return max;
    }

    private static void Quantize(ReadOnlySpan<float> values, float scale, Span<sbyte> destination)
    {
        // Division, not multiplication by a reciprocal, and rounding half to even: what ATen's div and round do.
        int i = 0, width = Vector256<sbyte>.Count;
        var divisor = Vector256.Create(scale);
        for (; i + width <= values.Length; i += width)
        {
            var low = Vector256.Narrow(Codes(values, i, divisor), Codes(values, i + 8, divisor));
            var high = Vector256.Narrow(Codes(values, i + 16, divisor), Codes(values, i + 24, divisor));
            Vector256.Narrow(low, high).CopyTo(destination.Slice(i, width));
        }
        for (; i < values.Length; i++) destination[i] = (sbyte)MathF.Round(values[i] / scale, MidpointRounding.ToEven);
    }

    private static Vector256<int> Codes(ReadOnlySpan<float> values, int at, Vector256<float> divisor)
        => Vector256.ConvertToInt32(Vector256.Round(Vector256.Create(values.Slice(at, Vector256<float>.Count)) / divisor));

    private static void Rescale(ReadOnlySpan<int> acc, float scale, ReadOnlySpan<float> rowScale, ReadOnlySpan<float> bias, bool hasBias, Span<float> destination)
    {
        int i = 0;
        var xScale = Vector256.Create(scale);
        for (; i + Vector256<float>.Count <= acc.Length; i += Vector256<float>.Count)
        {
            var combined = xScale * Vector256.Create(rowScale.Slice(i, Vector256<float>.Count));
            var value = Vector256.ConvertToSingle(Vector256.Create(acc.Slice(i, Vector256<int>.Count))) * combined;
            if (hasBias) value += Vector256.Create(bias.Slice(i, Vector256<float>.Count));
            value.CopyTo(destination.Slice(i, Vector256<float>.Count));
        }
        for (; i < acc.Length; i++)
        {
            float value = acc[i] * (scale * rowScale[i]);
            destination[i] = hasBias ? value + bias[i] : value;
        }
    }

    /// <summary>float32 → bfloat16 with round-to-nearest-even as c10::BFloat16 converts (NaN stays NaN).</summary>
    private static void NarrowToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        int i = 0, width = Vector256<float>.Count;
        for (; i + width <= source.Length; i += width)
            BFloat16Bits.Round(Vector256.Create(source.Slice(i, width))).CopyTo(destination.Slice(i, width));
        for (; i < source.Length; i++) destination[i] = BFloat16Bits.Round(source[i]);
    }
}
