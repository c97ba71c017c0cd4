using Rinna.Net.Model.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rinna.Net.Model;

/// <summary>
/// Hands the GPT-NeoX modules their weights by HF state-dict name while they are being constructed, so the model is
/// built directly from the checkpoint tensor by tensor (no randomly initialised copy first), and lets the loader swap
/// in a different implementation for each linear layer (int8) and a device per module.
/// </summary>
internal sealed class ParameterSource
{
    private readonly string prefix;
    private readonly Func<string, long[], Tensor> read;
    private readonly Func<string, Parameter, Parameter?, LinearLayer> linearFactory;
    private readonly bool trainable;

    public ParameterSource(ScalarType computeDType, Func<string, long[], Tensor> read,
        Func<string, Parameter, Parameter?, LinearLayer>? linearFactory = null, bool trainable = false, string prefix = "")
    {
        ComputeDType = computeDType;
        this.read = read;
        this.linearFactory = linearFactory ?? ((_, weight, bias) => new DenseLinear(weight, bias));
        this.trainable = trainable;
        this.prefix = prefix;
    }

    public ScalarType ComputeDType { get; }

    public ParameterSource Scope(string name) => new(ComputeDType, read, linearFactory, trainable, prefix + name + ".");

    public Parameter Parameter(string name, params long[] shape)
    {
        var tensor = read(prefix + name, shape);
        return new Parameter(tensor, requires_grad: trainable);
    }

    public LinearLayer CreateLinear(string name, Parameter weight, Parameter? bias) => linearFactory(prefix + name, weight, bias);

    /// <summary>Weights drawn as HF's <c>_init_weights</c> does: normal(0, initializer_range) for matrices, LayerNorm 1/0, biases 0.</summary>
    public static ParameterSource Random(GptNeoXConfig config, Generator generator, ScalarType dtype) =>
        new(dtype, (name, shape) =>
        {
            using var scope = NewDisposeScope();
            Tensor t = name.EndsWith(".bias", StringComparison.Ordinal) ? zeros(shape)
                : name.Contains("layernorm", StringComparison.Ordinal) || name.Contains("layer_norm", StringComparison.Ordinal) ? ones(shape)
                : normal(0, config.InitializerRange, shape, generator: generator);
            return t.to(dtype).MoveToOuterDisposeScope();
        }, trainable: true);
}
