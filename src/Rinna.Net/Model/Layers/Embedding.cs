using Rinna.Net.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Layers;

/// <summary>Token embedding (HF: <c>nn.Embedding</c>).</summary>
internal sealed class Embedding : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;

    public Embedding(Parameter weight) : base("embedding")
    {
        this.weight = weight;
        register_parameter("weight", weight);
    }

    public Tensor Weight => weight;

    public override Tensor forward(Tensor ids) => weight.index_select(0, ids.reshape(-1)).view(TensorShapes.Append(ids, weight.size(1)));
}
