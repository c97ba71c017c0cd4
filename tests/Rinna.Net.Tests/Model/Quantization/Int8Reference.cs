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

    public static double RelativeL2(Tensor actual, Tensor expected)
    {
        var e = expected.to(ScalarType.Float64);
        return (actual.to(ScalarType.Float64) - e).norm().item<double>() / e.norm().item<double>();
    }

    public static double MaxAbs(Tensor t) => t.abs().max().to(ScalarType.Float64).item<double>();
}
