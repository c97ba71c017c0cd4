using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Model.Layers;

/// <summary>A dense linear layer built from given weights (HF: <c>nn.Linear</c>); weight is <c>[out, in]</c>.</summary>
internal sealed class DenseLinear : LinearLayer
{
    private readonly Parameter weight;
    private readonly Parameter? bias;

    public DenseLinear(Parameter weight, Parameter? bias) : base("linear")
    {
        this.weight = weight;
        this.bias = bias;
        register_parameter("weight", weight);
        if (bias is not null) register_parameter("bias", bias);
    }

    public Tensor Weight => weight;

    public override Tensor forward(Tensor x) => LinearRows(x, weight, bias);

    /// <summary>
    /// <c>linear</c> over the input flattened to rows; a float32 product of a few rows on the CPU (a continuous-batching
    /// step, a short prompt) goes through <see cref="MultiRowGemv"/>, which reads the weight once instead of having MKL copy it first.
    /// libtorch's CPU <c>linear</c> takes a far slower path when a 3-D
    /// input carries a large stride on a size-1 dimension, which is exactly what narrowing the last position out of a
    /// prompt produces; flattening first gives it plain row-major rows.
    /// </summary>
    internal static Tensor LinearRows(Tensor x, Tensor weight, Tensor? bias)
    {
        // Float32 weights only (the kernel's float16 path needs the finiteness check Float16Linear makes), and never for
        // one row, so a decode step pays nothing for asking; the kernel decides the rest (CPU, float32 rows, at most MaxRows).
        if (weight.dtype == ScalarType.Float32 && x.numel() > x.size(-1) && x.is_contiguous() && MultiRowGemv.TryMultiply(x, weight, bias, out var rows))
            return rows;
        if (x.dim() == 2) return F.linear(x, weight, bias);
        return F.linear(x.reshape(-1, x.size(-1)), weight, bias).view(TensorShapes.WithLastDimension(x, weight.size(0)));
    }
}

/// <summary>The output head when <c>tie_word_embeddings</c> is set: reuses the input embedding matrix.</summary>
internal sealed class TiedLinear(Tensor weight) : LinearLayer("tied_linear")
{
    public override Tensor forward(Tensor x) => DenseLinear.LinearRows(x, weight, null);
}
