using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Model.Layers;

/// <summary>The activation functions of <c>hidden_act</c> (transformers' <c>ACT2FN</c>) that GPT-NeoX checkpoints use.</summary>
internal enum Activation
{
    /// <summary>No activation.</summary>
    Identity,

    /// <summary>The exact, erf-based GELU (<c>"gelu"</c>).</summary>
    Gelu,

    /// <summary>The tanh approximation of GELU (<c>"gelu_new"</c>, <c>"gelu_pytorch_tanh"</c>, <c>"gelu_fast"</c>).</summary>
    GeluTanh,

    /// <summary><c>"relu"</c>.</summary>
    Relu,

    /// <summary><c>"silu"</c> / <c>"swish"</c>.</summary>
    Silu,
}

/// <summary>Maps <c>hidden_act</c> names to <see cref="Activation"/> and applies them.</summary>
internal static class Activations
{
    /// <summary>The names <see cref="FromHiddenAct"/> accepts.</summary>
    public static readonly IReadOnlyList<string> SupportedNames = ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish"];

    /// <exception cref="ArgumentException">A name transformers' GPT-NeoX would not accept either.</exception>
    public static Activation FromHiddenAct(string name) => name switch
    {
        "gelu" => Activation.Gelu,
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => Activation.GeluTanh,
        "relu" => Activation.Relu,
        "silu" or "swish" => Activation.Silu,
        _ => throw new ArgumentException($"activation '{name}' is not supported; supported: {string.Join(", ", SupportedNames)}.", nameof(name)),
    };

    public static Tensor Apply(this Activation activation, Tensor x) => activation switch
    {
        Activation.Identity => x,
        Activation.Gelu => F.gelu(x),
        Activation.GeluTanh => F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        Activation.Relu => F.relu(x),
        Activation.Silu => F.silu(x),
        _ => throw new ArgumentOutOfRangeException(nameof(activation), activation, null),
    };
}
