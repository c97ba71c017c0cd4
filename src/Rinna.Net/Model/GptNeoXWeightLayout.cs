using Rinna.Net.Model.Layers;
using static TorchSharp.torch;

namespace Rinna.Net.Model;

/// <summary>One tensor of a checkpoint: its HF state-dict name and shape, and the linear module it belongs to, if any.</summary>
/// <param name="Name">The state-dict name, e.g. <c>gpt_neox.layers.0.mlp.dense_h_to_4h.weight</c>.</param>
/// <param name="Shape">The shape the model expects.</param>
/// <param name="LinearModule">The linear layer's module name (<c>gpt_neox.layers.0.mlp.dense_h_to_4h</c>) for its weight and bias; <c>null</c> otherwise.</param>
internal sealed record WeightSpec(string Name, long[] Shape, string? LinearModule)
{
    /// <summary>Whether this is the weight matrix of a linear layer (what quantization and float16 storage apply to).</summary>
    public bool IsLinearWeight => LinearModule is not null && Name.EndsWith(".weight", StringComparison.Ordinal);

    /// <summary>Elements of the tensor.</summary>
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>The device-map unit the tensor lives in (<c>gpt_neox.layers.3.mlp.dense_h_to_4h.weight</c> → <c>gpt_neox.layers.3</c>).</summary>
    public string DeviceMapUnit => GptNeoXWeightLayout.DeviceMapUnitOf(Name);
}

/// <summary>
/// The tensors a GPT-NeoX checkpoint holds for a config. They are read off the model itself, built once on the
/// <c>meta</c> device (shapes without storage), as transformers reads a model's <c>state_dict</c>: the model file is the
/// one declaration, and loading, shape checks, device-map footprints and quantization targets all read this list.
/// </summary>
internal static class GptNeoXWeightLayout
{
    private static readonly Device Meta = new("meta");

    /// <summary>Every tensor a checkpoint for <paramref name="config"/> must hold, in the order the model asks for them.</summary>
    public static IReadOnlyList<WeightSpec> For(GptNeoXConfig config)
    {
        var shapes = new List<(string Name, long[] Shape)>();
        var linearModules = new HashSet<string>(StringComparer.Ordinal);
        var source = new ParameterSource(ScalarType.Float32,
            (name, shape) =>
            {
                shapes.Add((name, shape));
                return empty(shape, ScalarType.Float32, Meta);
            },
            (name, weight, bias) =>
            {
                linearModules.Add(name);
                return new DenseLinear(weight, bias);
            });
        using (new GptNeoXForCausalLM(config, source)) { }
        return shapes.Select(s =>
        {
            var module = s.Name[..s.Name.LastIndexOf('.')];
            return new WeightSpec(s.Name, s.Shape, linearModules.Contains(module) ? module : null);
        }).ToList();
    }

    /// <summary>The device-map unit of a tensor: the embedding, one decoder layer, the final LayerNorm or the head.</summary>
    public static string DeviceMapUnitOf(string name)
    {
        var parts = name.Split('.');
        return parts[0] == "gpt_neox" && parts.Length > 2 ? parts[1] == "layers" ? $"gpt_neox.layers.{parts[2]}" : $"gpt_neox.{parts[1]}" : parts[0];
    }

    /// <summary>The decoder layer a tensor belongs to (<c>gpt_neox.layers.3....</c> → 3), or -1.</summary>
    public static int LayerIndexOf(string name)
    {
        const string Prefix = "gpt_neox.layers.";
        if (!name.StartsWith(Prefix, StringComparison.Ordinal)) return -1;
        int end = name.IndexOf('.', Prefix.Length);
        return end > Prefix.Length && int.TryParse(name.AsSpan(Prefix.Length, end - Prefix.Length), System.Globalization.NumberStyles.None,
            System.Globalization.CultureInfo.InvariantCulture, out var index) ? index : -1;
    }

    /// <summary>
    /// Checkpoint entries that are buffers in Hugging Face's code, not parameters (causal-mask caches and rotary
    /// frequencies saved by older transformers versions); they are recomputed, never loaded.
    /// </summary>
    public static bool IsIgnoredCheckpointKey(string name) =>
        name.StartsWith("gpt_neox.layers.", StringComparison.Ordinal)
        && (name.EndsWith(".attention.bias", StringComparison.Ordinal)
            || name.EndsWith(".attention.masked_bias", StringComparison.Ordinal)
            || name.EndsWith(".attention.rotary_emb.inv_freq", StringComparison.Ordinal));
}
