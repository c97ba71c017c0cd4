using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Quantization;

/// <summary>
/// bitsandbytes' blockwise 4-bit quantization (<c>quantize_4bit</c> / <c>dequantize_4bit</c>), with its NF4 and FP4
/// code books and its double quantization of the block scales, re-expressed from bitsandbytes' CUDA kernels so that the
/// dequantized weights are bit for bit bitsandbytes' (docs/quantization.md lists the definitions and the commit read).
/// </summary>
public static class Bnb4BitQuantization
{
    /// <summary>The FP4 data type name (transformers' default <c>bnb_4bit_quant_type</c>).</summary>
    public const string Fp4 = "fp4";

    /// <summary>The NF4 (NormalFloat4) data type name.</summary>
    public const string Nf4 = "nf4";

    /// <summary>Weights per block of the flattened <c>[out, in]</c> weight, each with its own absmax scale.</summary>
    public const int BlockSize = 64;

    /// <summary>Block scales per block of the second (8-bit) quantization under double quantization.</summary>
    public const int AbsmaxBlockSize = 256;

    /// <summary>NF4's 16 values by code, as bitsandbytes' <c>nf4_dequantization_lut</c> holds them (float32).</summary>
    internal static readonly float[] Nf4Code =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    ];

    /// <summary>
    /// FP4's 16 values by code: bitsandbytes' <c>fp4_dequantization_lut</c> for the three low bits, negated when bit 3
    /// (the sign) is set, as its <c>dDequantizeFP4Tree</c> does (so code 8 is −0).
    /// </summary>
    internal static readonly float[] Fp4Code =
    [
        0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f,
        -0.0f, -0.005208333333f, -0.66666667f, -1.0f, -0.33333333f, -0.5f, -0.16666667f, -0.25f,
    ];

    private static readonly Lazy<float[]> dynamicMap = new(CreateDynamicMap);

    /// <summary>The code book of <paramref name="quantType"/> (<see cref="Fp4"/> or <see cref="Nf4"/>).</summary>
    internal static float[] CodeOf(string quantType) => quantType switch
    {
        Fp4 => Fp4Code,
        Nf4 => Nf4Code,
        _ => throw new ArgumentException($"The 4-bit type must be \"{Fp4}\" or \"{Nf4}\", got \"{quantType}\".", nameof(quantType)),
    };

    /// <summary>bitsandbytes' signed 8-bit dynamic map (<c>create_dynamic_map()</c>), the code of the double-quantized scales.</summary>
    internal static float[] DynamicMap => dynamicMap.Value;

    // The thresholds bitsandbytes' dQuantizeNF4 and dQuantizeFP4 decision trees hard-code (midpoints of neighbouring code
    // values as float32 literals), ascending. A tree that goes up on x > t returns how many thresholds lie below x, so
    // both the scalar and the vector code count them instead of branching (random weights mispredict half the branches).
    private static readonly float[] Nf4Thresholds =
    [
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f, -0.23460740596055984f,
        -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f, 0.2035212516784668f,
        0.2920137718319893f, 0.3893125355243683f, 0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f,
    ];

    /// <summary>dQuantizeFP4's magnitude thresholds: the midpoints between FP4's magnitudes (divided by 12, FP4's largest).</summary>
    private static readonly float[] Fp4Thresholds = [0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f];

    /// <summary>FP4's 3-bit magnitude code by the number of thresholds below the magnitude (the tree's leaves in ascending order).</summary>
    private static readonly int[] Fp4CodeByCount = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

    private static readonly Vector256<int>[] Fp4CodeByCountVectors = [.. Fp4CodeByCount.Select(c => Vector256.Create(c))];

    private static readonly Vector256<float>[] Nf4ThresholdVectors = [.. Nf4Thresholds.Select(t => Vector256.Create(t))];

    private static readonly Vector256<float>[] Fp4ThresholdVectors = [.. Fp4Thresholds.Select(t => Vector256.Create(t))];

    /// <summary>
    /// The FP4 code of a normalized value, as bitsandbytes' <c>dQuantizeFP4</c>: sign bit 3, and the magnitude placed
    /// against <see cref="Fp4Thresholds"/>. A NaN (0/0 of an all-zero block) exceeds no threshold: code 0, as on the GPU.
    /// </summary>
    internal static byte QuantizeFp4(float x)
    {
        float a = MathF.Abs(x);
        int below = 0;
        foreach (var t in Fp4Thresholds) below += a > t ? 1 : 0;
        return (byte)(Fp4CodeByCount[below] | (x < 0 ? 0b1000 : 0));
    }

    /// <summary>The NF4 code of a normalized value, as bitsandbytes' <c>dQuantizeNF4</c>: the thresholds below it. NaN gives code 0.</summary>
    internal static byte QuantizeNf4(float x)
    {
        int below = 0;
        foreach (var t in Nf4Thresholds) below += x > t ? 1 : 0;
        return (byte)below;
    }

    /// <summary>
    /// The index of <paramref name="x"/> in the sorted 256-entry <paramref name="code"/> by bitsandbytes' non-stochastic
    /// <c>dQuantize</c>: a 7-step binary search, then the nearer of the found entry and its neighbour on x's side, with
    /// the midpoint computed in float32 (ties to the found entry).
    /// </summary>
    internal static byte QuantizeDynamic(ReadOnlySpan<float> code, float x)
    {
        int pivot = 127, upperPivot = 255, lowerPivot = 0;
        float lower = -1.0f, upper = 1.0f, value = code[pivot];
        for (int step = 64; step > 0; step >>= 1)
        {
            if (x > value) { lowerPivot = pivot; lower = value; pivot += step; }
            else { upperPivot = pivot; upper = value; pivot -= step; }
            value = code[pivot];
        }
        if (upperPivot == 255) upper = code[255];
        if (lowerPivot == 0) lower = code[0];
        if (x > value) return (byte)(x > (upper + value) * 0.5f ? upperPivot : pivot);
        return (byte)(x < (lower + value) * 0.5f ? lowerPivot : pivot);
    }

    /// <summary>
    /// bitsandbytes' <c>create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)</c>: for i = 0..6, the means of
    /// neighbouring points of <c>torch.linspace(0.1, 1, 2^i + 1)</c> (float32) times ±10^(i−6), then 0 and 1, sorted.
    /// </summary>
    /// <remarks>
    /// linspace is written out as ATen's CPU kernel computes it: <c>step = (end − start) / (steps − 1)</c>, the first half
    /// <c>start + step·k</c>, the second half <c>end − step·(steps − 1 − k)</c>, each a fused multiply-add because the
    /// compiler contracts them in ATen's AVX2, AVX-512 and Arm64 builds (the kernels x64 and Arm CPUs run). Computing it
    /// here rather than calling libtorch keeps the map the same on every machine.
    /// </remarks>
    private static float[] CreateDynamicMap()
    {
        var data = new List<float>(256) { 0f, 1.0f };
        for (int i = 0; i < 7; i++)
        {
            int steps = (1 << i) + 1;
            float start = 0.1f, end = 1.0f, step = (end - start) / (steps - 1);
            // 10 ** (i - 6) as Python evaluates it, converted to float32 as ATen converts a scalar factor.
            float scale = (float)(i == 6 ? 1.0 : Math.Pow(10, i - 6));
            float previous = start;
            for (int k = 1; k < steps; k++)
            {
                float point = k < steps / 2 ? MathF.FusedMultiplyAdd(step, k, start) : MathF.FusedMultiplyAdd(-step, steps - 1 - k, end);
                float mean = (previous + point) / 2.0f;
                data.Add(mean * scale);
                data.Add(mean * -scale);
                previous = point;
            }
        }
        data.Sort();
        return data.ToArray();
    }

    /// <summary>
    /// Quantizes a float32 span (a slice of the flattened weight starting at a block boundary, of even length unless it
    /// is the end) into packed codes and block scales, as bitsandbytes' <c>kQuantizeBlockwise</c> with an NF4/FP4 data
    /// type: the block's absmax (padded with zeros), each value times <c>1 / absmax</c> in float32, the code of that, two
    /// codes per byte with the first value in the high nibble. The arithmetic is the CUDA build's fast math
    /// (<see cref="CudaFastMath"/>): the GPU's reciprocal decides values within a unit of a code threshold.
    /// </summary>
    internal static void QuantizeBlocks(ReadOnlySpan<float> values, bool nf4, Span<byte> packed, Span<float> absmax)
    {
        int blocks = (values.Length + BlockSize - 1) / BlockSize;
        for (int b = 0; b < blocks; b++)
        {
            var block = values.Slice(b * BlockSize, Math.Min(BlockSize, values.Length - b * BlockSize));
            if (block.Length == BlockSize && Vector256.IsHardwareAccelerated)
            {
                absmax[b] = BlockAbsmax(block);
                CodeFullBlock(block, CudaFastMath.Reciprocal(absmax[b]), nf4, packed.Slice(b * BlockSize / 2, BlockSize / 2));
                continue;
            }
            float max = 0f; // the kernel pads a partial block with zeros, so its max is never below 0
            foreach (var v in block)
            {
                float a = MathF.Abs(v);
                if (a > max) max = a; // as fmaxf: a NaN weight does not become the scale
            }
            max = CudaFastMath.Flush(max);
            absmax[b] = max;
            float inverse = CudaFastMath.Reciprocal(max);
            for (int i = 0; i < block.Length; i += 2)
            {
                // The value past the end of an odd-length tensor is the kernel's zero padding.
                float first = CudaFastMath.Multiply(block[i], inverse), second = CudaFastMath.Multiply(i + 1 < block.Length ? block[i + 1] : 0f, inverse);
                packed[(b * BlockSize + i) / 2] = nf4
                    ? (byte)((QuantizeNf4(first) << 4) | QuantizeNf4(second))
                    : (byte)((QuantizeFp4(first) << 4) | QuantizeFp4(second));
            }
        }
    }

    /// <summary>A full block's absmax on 256-bit vectors, as the scalar path (NaN never wins a comparison), flushed as the GPU does.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float BlockAbsmax(ReadOnlySpan<float> block)
    {
        ref float first = ref MemoryMarshal.GetReference(block[..BlockSize]);
        var max = Vector256<float>.Zero;
        for (int i = 0; i < BlockSize; i += Vector256<float>.Count)
        {
            var a = Vector256.Abs(Vector256.LoadUnsafe(ref first, (nuint)i));
            max = Vector256.ConditionalSelect(Vector256.GreaterThan(a, max), a, max);
        }
        float absmax = 0f;
        for (int lane = 0; lane < Vector256<float>.Count; lane++)
            if (max[lane] > absmax) absmax = max[lane];
        return CudaFastMath.Flush(absmax);
    }

    /// <summary>
    /// One full block's codes on 256-bit vectors, the same float32 operations as the scalar path: each value times
    /// <paramref name="inverse"/> (<c>1 / absmax</c>), its code, and the codes packed two to a byte (first value in the
    /// high nibble) on vectors too.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit]
    private static void CodeFullBlock(ReadOnlySpan<float> block, float inverse, bool nf4, Span<byte> pairs)
    {
        ref float first = ref MemoryMarshal.GetReference(block[..BlockSize]);
        var scale = Vector256.Create(inverse);
        Span<Vector256<long>> bytes = stackalloc Vector256<long>[BlockSize / Vector256<float>.Count];
        for (int v = 0; v < bytes.Length; v++)
        {
            var x = CudaFastMath.Flush(CudaFastMath.Flush(Vector256.LoadUnsafe(ref first, (nuint)(v * Vector256<float>.Count))) * scale);
            var code = nf4 ? CodeNf4(x) : CodeFp4(x);
            // Each 64-bit lane holds an even value's code (low half) and the next one's (high half): their byte.
            var lanes = code.AsInt64();
            bytes[v] = (Vector256.ShiftLeft(lanes, 4) | Vector256.ShiftRightLogical(lanes, 32)) & Vector256.Create(0xFFL);
        }
        var packed = Vector256.Narrow(
            Vector256.Narrow(Vector256.Narrow(bytes[0], bytes[1]), Vector256.Narrow(bytes[2], bytes[3])),
            Vector256.Narrow(Vector256.Narrow(bytes[4], bytes[5]), Vector256.Narrow(bytes[6], bytes[7])));
        packed.AsByte().CopyTo(pairs);
    }

    /// <summary>NF4 codes of eight normalized values: how many of <see cref="Nf4Thresholds"/> lie below each (NaN: 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> CodeNf4(Vector256<float> x)
    {
        var code = Vector256<int>.Zero;
        var thresholds = Nf4ThresholdVectors;
        for (int t = 0; t < thresholds.Length; t++) code -= Vector256.GreaterThan(x, thresholds[t]).AsInt32();
        return code;
    }

    /// <summary>FP4 codes of eight normalized values, as <see cref="QuantizeFp4"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> CodeFp4(Vector256<float> x)
    {
        var a = Vector256.Abs(x);
        var below = Vector256<int>.Zero;
        var thresholds = Fp4ThresholdVectors;
        for (int t = 0; t < thresholds.Length; t++) below -= Vector256.GreaterThan(a, thresholds[t]).AsInt32();
        var code = Vector256<int>.Zero;
        for (int k = 1; k < Fp4CodeByCountVectors.Length; k++)
            code |= Vector256.Equals(below, Vector256.Create(k)) & Fp4CodeByCountVectors[k];
        return code | (Vector256.LessThan(x, Vector256<float>.Zero).AsInt32() & Vector256.Create(0b1000));
    }

    /// <summary>
    /// Double quantization of float32 block scales, as bitsandbytes' <c>quantize_4bit(compress_statistics=True)</c>:
    /// the offset is their mean (libtorch's float32 mean), and <c>absmax − offset</c> is quantized in blocks of 256 with
    /// the dynamic map (<see cref="QuantizeDynamic"/> of the value times <c>1 / block absmax</c>, both in
    /// <see cref="CudaFastMath"/>'s arithmetic).
    /// </summary>
    internal static (byte[] Codes, float[] Absmax, float Offset) DoubleQuantize(float[] absmax)
    {
        float offset;
        using (var t = from_array(absmax))
        using (var mean = t.mean())
            offset = mean.item<float>();
        return DoubleQuantize(absmax, offset);
    }

    /// <summary>
    /// Double quantization around a given offset. A GPU's mean of the same scales sums them in another order and can
    /// differ in its last bits; from the same offset the codes are bitsandbytes' bit for bit.
    /// </summary>
    internal static (byte[] Codes, float[] Absmax, float Offset) DoubleQuantize(float[] absmax, float offset)
    {
        var code = DynamicMap;
        var codes = new byte[absmax.Length];
        var absmax2 = new float[(absmax.Length + AbsmaxBlockSize - 1) / AbsmaxBlockSize];
        var centered = new float[AbsmaxBlockSize];
        for (int j = 0; j < absmax2.Length; j++)
        {
            int start = j * AbsmaxBlockSize, length = Math.Min(AbsmaxBlockSize, absmax.Length - start);
            float max = 0f;
            for (int i = 0; i < length; i++)
            {
                centered[i] = absmax[start + i] - offset;
                float a = MathF.Abs(centered[i]);
                if (a > max) max = a;
            }
            max = CudaFastMath.Flush(max);
            absmax2[j] = max;
            float inverse = CudaFastMath.Reciprocal(max);
            for (int i = 0; i < length; i++) codes[start + i] = QuantizeDynamic(code, CudaFastMath.Multiply(centered[i], inverse));
        }
        return (codes, absmax2, offset);
    }

    /// <summary>The scale of block <paramref name="block"/> after double quantization: <c>code[q] · absmax2 + offset</c>, two float32 roundings.</summary>
    internal static float DequantizeAbsmax(ReadOnlySpan<byte> codes, ReadOnlySpan<float> absmax2, float offset, int block)
    {
        float scaled = CudaFastMath.Multiply(DynamicMap[codes[block]], absmax2[block / AbsmaxBlockSize]);
        return scaled + offset;
    }

    private static readonly Lazy<ulong[]> nf4Pairs = new(() => PairTable(Nf4Code));
    private static readonly Lazy<ulong[]> fp4Pairs = new(() => PairTable(Fp4Code));

    /// <summary>For each byte, its two code-book values as adjacent floats (high nibble first in memory).</summary>
    private static ulong[] PairTable(float[] code)
    {
        var pairs = new ulong[256];
        for (int b = 0; b < 256; b++)
            pairs[b] = (uint)BitConverter.SingleToInt32Bits(code[b >> 4]) | ((ulong)(uint)BitConverter.SingleToInt32Bits(code[b & 0x0F]) << 32);
        return pairs;
    }

    /// <summary>
    /// Writes <c>code[q] · absmax</c> (float32) for as many values as <paramref name="destination"/> holds, from flat index
    /// <paramref name="start"/>: whole blocks through a byte-to-pair table and a vector product, the rest one by one.
    /// </summary>
    internal static void DequantizeRange(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, float[] code, long start, Span<float> destination)
    {
        int done = 0;
        if (start % BlockSize == 0 && (code == Nf4Code || code == Fp4Code))
        {
            var pairs = code == Nf4Code ? nf4Pairs.Value : fp4Pairs.Value;
            for (; done + BlockSize <= destination.Length; done += BlockSize)
            {
                long at = start + done;
                var bytes = packed.Slice((int)(at >> 1), BlockSize / 2);
                var block = destination.Slice(done, BlockSize);
                var values = MemoryMarshal.Cast<float, ulong>(block);
                for (int j = 0; j < bytes.Length; j++) values[j] = pairs[bytes[j]];
                var scale = Vector256.Create(absmax[(int)(at / BlockSize)]);
                for (int i = 0; i < BlockSize; i += Vector256<float>.Count)
                    CudaFastMath.Flush(Vector256.Create(block.Slice(i, Vector256<float>.Count)) * scale).CopyTo(block.Slice(i, Vector256<float>.Count));
            }
        }
        for (int i = done; i < destination.Length; i++)
        {
            long at = start + i;
            int q = (packed[(int)(at >> 1)] >> ((at & 1) == 0 ? 4 : 0)) & 0x0F;
            destination[i] = CudaFastMath.Multiply(code[q], absmax[(int)(at / BlockSize)]);
        }
    }

    internal static Span<float> AsFloats(Tensor t) => MemoryMarshal.Cast<byte, float>(t.bytes);
}
