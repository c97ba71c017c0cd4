using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Layers;

/// <summary>
/// A linear layer of a model (<c>y = x · Wᵀ + b</c>): the slot that dtype and quantization fill with their own
/// implementation (<see cref="DenseLinear"/>, <see cref="Float16Linear"/>, <see cref="Quantization.Int8Linear"/>), as
/// transformers swaps <c>nn.Linear</c> for bitsandbytes' layers.
/// </summary>
public abstract class LinearLayer : nn.Module<Tensor, Tensor>
{
    /// <summary>Creates the module under <paramref name="name"/>.</summary>
    /// <param name="name">The module's type name.</param>
    protected LinearLayer(string name) : base(name)
    {
    }

    /// <summary>
    /// <c>activation(x · Wᵀ + b) + residual</c>, the product with what a model does right after it. An implementation
    /// that can do the operations around the product in the product's own pass overrides this; the result equals the
    /// separate operations in the input's dtype.
    /// </summary>
    internal virtual Tensor Forward(Tensor x, Activation activation, Tensor? residual = null)
    {
        var output = activation.Apply(call(x));
        return residual is null ? output : output.add_(residual);
    }
}
