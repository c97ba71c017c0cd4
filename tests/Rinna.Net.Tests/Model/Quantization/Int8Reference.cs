using Rinna.Net.Kernels;
using Rinna.Net.Model.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

/// <summary>LLM.int8() written out in float64 from its definition, to check the kernels against.</summary>
internal static class Int8Reference
{
    /// <summary>Per-row absmax codes round(v / (max|row| / 127)), quantized in float32 as the definition states; returned as float64.</summary>
    public static (Tensor Codes, Tensor Scale) QuantizeRows(Tensor matrix)
    {
        var f = matrix.to(ScalarType.Float32);
        var scale = f.abs().amax([1], keepdim: true).clamp_min(1e-30).div(127.0);
        return (f.div(scale).round().to(ScalarType.Float64), scale.to(ScalarType.Float64));
    }

    /// <summary>
    /// Weight codes as bitsandbytes' <c>Int8Params</c> makes them on a GPU (bitsandbytes @ 95f9af3,
    /// <c>kInt8VectorQuant</c>), one element at a time: the row rounded to float16 (unless float16 cannot hold it),
    /// <c>rint(w · __fdividef(127, absmax))</c> with the GPU's reciprocal; scale absmax / 127. Returned as float64.
    /// </summary>
    public static (Tensor Codes, Tensor Scale) QuantizeWeightRows(Tensor weight)
    {
        var rows = weight.to(ScalarType.Float32).cpu();
        long n = rows.size(0), k = rows.size(1);
        var values = rows.data<float>().ToArray();
        var codes = new double[values.Length];
        var scales = new double[n];
        for (long r = 0; r < n; r++)
        {
            var row = values.AsSpan((int)(r * k), (int)k);
            float absmax = 0;
            foreach (var v in row) absmax = Math.Max(absmax, Math.Abs(v));
            if (absmax < 65520f)
            {
                for (int i = 0; i < row.Length; i++) row[i] = (float)(Half)row[i];
                absmax = 0;
                foreach (var v in row) absmax = Math.Max(absmax, Math.Abs(v));
            }
            scales[r] = absmax / 127.0f;
            float multiplier = absmax == 0 ? 0 : 127f * Rinna.Net.Model.Quantization.CudaFastMath.Reciprocal(absmax);
            for (int i = 0; i < row.Length; i++) codes[r * k + i] = MathF.Round(row[i] * multiplier, MidpointRounding.ToEven);
        }
        return (tensor(codes).reshape(n, k), tensor(scales).reshape(n, 1));
    }

    /// <summary>
    /// The layer's result in float64: columns whose max |x| over all rows exceeds <paramref name="threshold"/> are
    /// multiplied in float against the dequantized weight columns, the remaining columns are quantized per row and
    /// multiplied as exact integers.
    /// </summary>
    public static Tensor Linear(Tensor x, Tensor weightCodes, Tensor weightScale, Tensor? bias, double threshold)
    {
        var x32 = x.to(ScalarType.Float32);
        var dequantizedWeight = weightCodes.to(ScalarType.Float64) * weightScale.to(ScalarType.Float64).unsqueeze(1);
        var outlier = threshold > 0
            ? x32.abs().amax([0]).gt(threshold)
            : zeros(x.shape[1], dtype: ScalarType.Bool);
        var regular = x32.masked_fill(outlier.unsqueeze(0), 0.0);
        var (codes, scale) = QuantizeRows(regular);
        var result = (codes.matmul(weightCodes.to(ScalarType.Float64).t()) * scale) * weightScale.to(ScalarType.Float64);
        var outlierInput = x32.to(ScalarType.Float64).masked_fill(outlier.logical_not().unsqueeze(0), 0.0);
        result += outlierInput.matmul(dequantizedWeight.t());
        if (bias is not null) result += bias.to(ScalarType.Float64);
        return result;
    }

    /// <summary>
    /// What the TorchScript layer returns when its integer product is exact: the script itself where
    /// <see cref="AtenInt8Kernels.IntMmIsExactOnCpu"/>, else the script's steps around libtorch's int64 product (exact, no
    /// oneDNN), which <c>ScriptStepsAroundExactSumsGiveTheScriptsBits</c> checks against the script where it is exact.
    /// </summary>
    public static Tensor ScriptWithExactSums(Tensor x, Int8Linear layer, double threshold)
        => AtenInt8Kernels.IntMmIsExactOnCpu
            ? AtenInt8Kernels.ScriptLinear(x, layer.Weight, layer.WeightScale, layer.Bias, threshold)
            : AtenInt8Kernels.LinearAround(x, layer.Weight, layer.WeightScale, layer.Bias, threshold, ExactSums);

    /// <summary>Σ x·w as int64 (libtorch's own loop, no oneDNN), returned as the int32 sums <c>_int_mm</c> gives where it is exact.</summary>
    public static Tensor ExactIntSums(Tensor xq, Tensor weight)
        => xq.to(ScalarType.Int64).matmul(weight.to(ScalarType.Int64).t()).to(ScalarType.Int32);

    /// <summary><see cref="ExactIntSums"/> as float32, as the script's rescale converts its int32 sums.</summary>
    public static Tensor ExactSums(Tensor xq, Tensor weight) => ExactIntSums(xq, weight).to(ScalarType.Float32);

    public static double RelativeL2(Tensor actual, Tensor expected)
    {
        var e = expected.to(ScalarType.Float64);
        return (actual.to(ScalarType.Float64) - e).norm().item<double>() / e.norm().item<double>();
    }

    public static double MaxAbs(Tensor t) => t.abs().max().to(ScalarType.Float64).item<double>();
}
