using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

/// <summary>
/// An independent, deliberately plain statement of bitsandbytes' 4-bit quantization (bitsandbytes @ 95f9af3,
/// csrc/kernels.cu and bitsandbytes/functional.py), written apart from the library's code: tables typed from the
/// source, decisions by counting thresholds rather than by decision trees, one element at a time. The arithmetic is
/// the CUDA build's fast math: subnormals flush to zero, and the reciprocal is the GPU's (the library's table of it,
/// measured on a GPU and checked against bitsandbytes' own output by <see cref="BitsandbytesReferenceTests"/>).
/// </summary>
internal static class Bnb4BitReference
{
    /// <summary>csrc/kernels.cu, nf4_dequantization_lut.</summary>
    public static readonly float[] Nf4 =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    ];

    /// <summary>csrc/kernels.cu, the thresholds of dQuantizeNF4 in ascending order (value &gt; threshold k ⇒ code &gt; k).</summary>
    public static readonly float[] Nf4Thresholds =
    [
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f, -0.23460740596055984f,
        -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f, 0.2035212516784668f,
        0.2920137718319893f, 0.3893125355243683f, 0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f,
    ];

    /// <summary>csrc/kernels.cu, fp4_dequantization_lut (indexed by the three magnitude bits; bit 3 is the sign).</summary>
    public static readonly float[] Fp4Magnitudes = [0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f];

    /// <summary>dQuantizeFP4's magnitude thresholds, ascending, and the 3-bit codes of the magnitudes between them.</summary>
    public static readonly float[] Fp4Thresholds = [0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f];
    public static readonly int[] Fp4CodesByMagnitude = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

    public static float Fp4Value(int code) => (code & 8) != 0 ? -Fp4Magnitudes[code & 7] : Fp4Magnitudes[code & 7];

    public static int CodeOf(float normalized, bool nf4)
    {
        if (nf4) return Nf4Thresholds.Count(t => normalized > t); // NaN exceeds none: code 0
        int sign = normalized < 0 ? 8 : 0;
        float magnitude = Math.Abs(normalized);
        return sign | Fp4CodesByMagnitude[Fp4Thresholds.Count(t => magnitude > t)];
    }

    /// <summary>
    /// functional.py create_dynamic_map(signed=True, 7, 8) with torch.linspace's float32 arithmetic written out (ATen's
    /// CPU kernel: step = (end − start) / (steps − 1); the first half start + i·step, the second half end − (steps − 1 − i)·step).
    /// </summary>
    public static float[] DynamicMap()
    {
        var values = new List<float> { 0f, 1f };
        for (int i = 0; i < 7; i++)
        {
            int steps = (1 << i) + 1;
            float start = 0.1f, end = 1.0f, step = (end - start) / (steps - 1);
            var boundaries = new float[steps];
            for (int k = 0; k < steps; k++) boundaries[k] = k < steps / 2 ? MathF.FusedMultiplyAdd(step, k, start) : MathF.FusedMultiplyAdd(-step, steps - 1 - k, end);
            float scale = (float)Math.Pow(10, -6 + i);
            for (int k = 0; k + 1 < steps; k++)
            {
                float mean = (boundaries[k] + boundaries[k + 1]) / 2.0f;
                values.Add(scale * mean);
                values.Add(-scale * mean);
            }
        }
        values.Sort();
        return values.ToArray();
    }

    /// <summary>The nearer of two neighbouring codes, the midpoint taken in float32 (dQuantize without rounding noise).</summary>
    public static int DynamicCodeOf(float[] map, float x)
    {
        int count = 0;
        for (int k = 0; k + 1 < map.Length; k++)
            if (x > (map[k] + map[k + 1]) * 0.5f) count++;
        return count;
    }

    public sealed record Result(byte[] Packed, float[] Absmax, float[] DequantizedAbsmax, float[] Dequantized);

    /// <summary>quantize_4bit then dequantize_4bit of a float32 flattened weight, blocks of 64.</summary>
    public static Result Run(float[] weight, bool nf4, bool doubleQuant)
    {
        int n = weight.Length, blocks = (n + 63) / 64;
        var packed = new byte[(n + 1) / 2];
        var absmax = new float[blocks];
        var codes = new int[n + 1];
        for (int b = 0; b < blocks; b++)
        {
            int from = b * 64, to = Math.Min(n, from + 64);
            float max = 0;
            for (int i = from; i < to; i++) max = Math.Max(max, Math.Abs(weight[i]));
            max = Ftz(max);
            absmax[b] = max;
            float inverse = Rcp(max); // the kernel multiplies by the reciprocal (1.0f / local_abs_max)
            for (int i = from; i < to; i++) codes[i] = CodeOf(Ftz(Ftz(weight[i]) * inverse), nf4);
            if (to == n && n % 2 == 1) codes[n] = CodeOf(0f * inverse, nf4); // the zero the kernel pads with
        }
        for (int j = 0; j < packed.Length; j++) packed[j] = (byte)((codes[2 * j] << 4) | codes[2 * j + 1]);

        var scales = absmax;
        if (doubleQuant)
        {
            // offset = absmax.mean() (torch, float32); then blockwise 256 with the dynamic map.
            float offset;
            using (var t = tensor(absmax)) offset = t.mean().item<float>();
            var map = DynamicMap();
            scales = new float[blocks];
            for (int start = 0; start < blocks; start += 256)
            {
                int end = Math.Min(blocks, start + 256);
                float max = 0;
                for (int b = start; b < end; b++) max = Math.Max(max, Math.Abs(absmax[b] - offset));
                max = Ftz(max);
                float inverse = Rcp(max);
                for (int b = start; b < end; b++)
                {
                    float centred = absmax[b] - offset;
                    float decoded = Ftz(map[DynamicCodeOf(map, Ftz(Ftz(centred) * inverse))] * max);
                    scales[b] = decoded + offset;
                }
            }
        }

        var dequantized = new float[n];
        for (int i = 0; i < n; i++)
        {
            int code = (i % 2 == 0 ? packed[i / 2] >> 4 : packed[i / 2]) & 15;
            dequantized[i] = Ftz((nf4 ? Nf4[code] : Fp4Value(code)) * scales[i / 64]);
        }
        return new Result(packed, absmax, scales, dequantized);
    }

    /// <summary>Flush to zero: the GPU's .ftz instructions read and write subnormals as zeros of the same sign.</summary>
    private static float Ftz(float x) => float.IsSubnormal(x) ? (x < 0 ? -0f : 0f) : x;

    private static float Rcp(float x) => Rinna.Net.Model.Quantization.CudaFastMath.Reciprocal(x);
}
