using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Model.Layers;

/// <summary>LayerNorm with affine weight and bias (HF: <c>nn.LayerNorm</c>).</summary>
internal sealed class LayerNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly Parameter bias;
    private readonly long[] shape;
    private readonly double eps;

    public LayerNorm(ParameterSource source, long size, double eps) : base("layer_norm")
    {
        weight = source.Parameter("weight", size);
        bias = source.Parameter("bias", size);
        shape = [size];
        this.eps = eps;
        register_parameter("weight", weight);
        register_parameter("bias", bias);
    }

    public Tensor Weight => weight;

    public Tensor Bias => bias;

    public override Tensor forward(Tensor x) => F.layer_norm(x, shape, weight, bias, eps);
}
