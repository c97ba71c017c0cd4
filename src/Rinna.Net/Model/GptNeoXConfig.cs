using System.Text.Json;
using System.Text.Json.Nodes;

namespace Rinna.Net.Model;

/// <summary>How rotary position embeddings are stretched beyond the trained context (<c>rope_scaling</c>).</summary>
/// <param name="Type"><c>linear</c> (positions divided by <paramref name="Factor"/>) or <c>dynamic</c> (NTK-aware base growth past <c>max_position_embeddings</c>).</param>
/// <param name="Factor">The scaling factor; must be greater than 1.</param>
public sealed record RopeScaling(string Type, double Factor);

/// <summary>
/// The architecture of a GPT-NeoX model, read from <c>config.json</c>: every field of Hugging Face's <c>GPTNeoXConfig</c>.
/// Missing fields take Hugging Face's defaults (which are not rinna's: rinna's files set <c>rotary_pct</c> and
/// <c>use_parallel_residual</c> explicitly).
/// </summary>
public sealed record GptNeoXConfig
{
    /// <summary>Activations accepted for <see cref="HiddenAct"/> (Hugging Face's names).</summary>
    public static IReadOnlyList<string> SupportedActivations { get; } = Layers.Activations.SupportedNames;

    /// <summary><c>model_type</c>; always <c>gpt_neox</c>.</summary>
    public string ModelType { get; init; } = "gpt_neox";
    /// <summary><c>vocab_size</c>: rows of the embedding and output matrices.</summary>
    public int VocabSize { get; init; } = 50432;
    /// <summary><c>hidden_size</c>.</summary>
    public int HiddenSize { get; init; } = 6144;
    /// <summary><c>num_hidden_layers</c>.</summary>
    public int NumHiddenLayers { get; init; } = 44;
    /// <summary><c>num_attention_heads</c>; must divide <see cref="HiddenSize"/>.</summary>
    public int NumAttentionHeads { get; init; } = 64;
    /// <summary><c>intermediate_size</c> of the MLP.</summary>
    public int IntermediateSize { get; init; } = 24576;
    /// <summary><c>hidden_act</c>; <c>gelu</c> is the exact erf GELU.</summary>
    public string HiddenAct { get; init; } = "gelu";
    /// <summary><c>rotary_pct</c>: fraction of each head's dimensions that get rotary embeddings.</summary>
    public double RotaryPct { get; init; } = 0.25;
    /// <summary><c>rotary_emb_base</c>.</summary>
    public double RotaryEmbBase { get; init; } = 10000;
    /// <summary><c>attention_dropout</c> (unused at inference).</summary>
    public double AttentionDropout { get; init; }
    /// <summary><c>hidden_dropout</c> (unused at inference).</summary>
    public double HiddenDropout { get; init; }
    /// <summary><c>classifier_dropout</c> (unused by the causal LM).</summary>
    public double ClassifierDropout { get; init; } = 0.1;
    /// <summary><c>max_position_embeddings</c>: the trained context length.</summary>
    public int MaxPositionEmbeddings { get; init; } = 2048;
    /// <summary><c>initializer_range</c>: standard deviation used when weights are created randomly.</summary>
    public double InitializerRange { get; init; } = 0.02;
    /// <summary><c>layer_norm_eps</c>.</summary>
    public double LayerNormEps { get; init; } = 1e-5;
    /// <summary><c>use_cache</c>.</summary>
    public bool UseCache { get; init; } = true;
    /// <summary><c>bos_token_id</c>.</summary>
    public int? BosTokenId { get; init; } = 0;
    /// <summary><c>eos_token_id</c>.</summary>
    public int? EosTokenId { get; init; } = 2;
    /// <summary><c>tie_word_embeddings</c>: whether <c>embed_out</c> shares <c>embed_in</c>'s matrix.</summary>
    public bool TieWordEmbeddings { get; init; }
    /// <summary><c>use_parallel_residual</c>: <c>x + attn(ln1(x)) + mlp(ln2(x))</c> instead of the sequential form.</summary>
    public bool UseParallelResidual { get; init; } = true;
    /// <summary><c>rope_scaling</c>, or <c>null</c> for none.</summary>
    public RopeScaling? RopeScaling { get; init; }
    /// <summary><c>attention_bias</c>: whether the attention projections have biases.</summary>
    public bool AttentionBias { get; init; } = true;
    /// <summary><c>torch_dtype</c> as written in the file (<c>float32</c>, <c>float16</c>, <c>bfloat16</c>), or <c>null</c>.</summary>
    public string? TorchDtype { get; init; }

    /// <summary>Dimensions per attention head.</summary>
    public int HeadSize => HiddenSize / NumAttentionHeads;

    /// <summary>Rotary dimensions per head: <c>int(head_size * rotary_pct)</c>, truncated like Python's <c>int()</c>.</summary>
    public int RotaryNdims => (int)(HeadSize * RotaryPct);

    /// <summary>Reads and validates a <c>config.json</c> file.</summary>
    /// <exception cref="ModelConfigException">The file is missing, is not JSON, or holds an invalid value.</exception>
    public static GptNeoXConfig FromFile(string path) => FromJson(ConfigJson.ReadText(path), path);

    /// <summary>Parses and validates the text of a <c>config.json</c>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <param name="sourceName">Named in error messages (usually the file path).</param>
    /// <exception cref="ModelConfigException">The text is not a JSON object or holds an invalid value.</exception>
    public static GptNeoXConfig FromJson(string json, string? sourceName = null)
    {
        var root = ConfigJson.ParseObject(json, sourceName);

        var reader = new JsonFieldReader(root, sourceName);
        var defaults = new GptNeoXConfig();
        var config = new GptNeoXConfig
        {
            ModelType = reader.String("model_type") ?? defaults.ModelType,
            VocabSize = reader.Int("vocab_size") ?? defaults.VocabSize,
            HiddenSize = reader.Int("hidden_size") ?? defaults.HiddenSize,
            NumHiddenLayers = reader.Int("num_hidden_layers") ?? defaults.NumHiddenLayers,
            NumAttentionHeads = reader.Int("num_attention_heads") ?? defaults.NumAttentionHeads,
            IntermediateSize = reader.Int("intermediate_size") ?? defaults.IntermediateSize,
            HiddenAct = reader.String("hidden_act") ?? defaults.HiddenAct,
            RotaryPct = reader.Double("rotary_pct") ?? defaults.RotaryPct,
            RotaryEmbBase = reader.Double("rotary_emb_base") ?? defaults.RotaryEmbBase,
            AttentionDropout = reader.Double("attention_dropout") ?? defaults.AttentionDropout,
            HiddenDropout = reader.Double("hidden_dropout") ?? defaults.HiddenDropout,
            ClassifierDropout = reader.Double("classifier_dropout") ?? defaults.ClassifierDropout,
            MaxPositionEmbeddings = reader.Int("max_position_embeddings") ?? defaults.MaxPositionEmbeddings,
            InitializerRange = reader.Double("initializer_range") ?? defaults.InitializerRange,
            LayerNormEps = reader.Double("layer_norm_eps") ?? defaults.LayerNormEps,
            UseCache = reader.Bool("use_cache") ?? defaults.UseCache,
            BosTokenId = reader.Has("bos_token_id") ? reader.Int("bos_token_id") : defaults.BosTokenId,
            EosTokenId = reader.Has("eos_token_id") ? reader.Int("eos_token_id") : defaults.EosTokenId,
            TieWordEmbeddings = reader.Bool("tie_word_embeddings") ?? defaults.TieWordEmbeddings,
            UseParallelResidual = reader.Bool("use_parallel_residual") ?? defaults.UseParallelResidual,
            RopeScaling = reader.RopeScaling("rope_scaling"),
            AttentionBias = reader.Bool("attention_bias") ?? defaults.AttentionBias,
            TorchDtype = reader.String("torch_dtype"),
        };
        config.Validate(sourceName);
        return config;
    }

    /// <summary>Writes the configuration as Hugging Face's <c>config.json</c> (every field, snake_case keys).</summary>
    public string ToJson()
    {
        var root = new JsonObject
        {
            ["architectures"] = new JsonArray("GPTNeoXForCausalLM"),
            ["model_type"] = ModelType,
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_attention_heads"] = NumAttentionHeads,
            ["intermediate_size"] = IntermediateSize,
            ["hidden_act"] = HiddenAct,
            ["rotary_pct"] = RotaryPct,
            ["rotary_emb_base"] = RotaryEmbBase,
            ["attention_dropout"] = AttentionDropout,
            ["hidden_dropout"] = HiddenDropout,
            ["classifier_dropout"] = ClassifierDropout,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["initializer_range"] = InitializerRange,
            ["layer_norm_eps"] = LayerNormEps,
            ["use_cache"] = UseCache,
            ["bos_token_id"] = BosTokenId,
            ["eos_token_id"] = EosTokenId,
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["use_parallel_residual"] = UseParallelResidual,
            ["rope_scaling"] = RopeScaling is null ? null : new JsonObject { ["type"] = RopeScaling.Type, ["factor"] = RopeScaling.Factor },
            ["attention_bias"] = AttentionBias,
            ["torch_dtype"] = TorchDtype,
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Checks every value the model depends on.</summary>
    /// <param name="sourceName">Named in error messages.</param>
    /// <exception cref="ModelConfigException">A field holds an invalid value; the message names the field and the value.</exception>
    public void Validate(string? sourceName = null)
    {
        void Fail(string field, object? value, string why) =>
            throw new ModelConfigException(sourceName, field, $"invalid value {FormatValue(value)}: {why}");

        if (ModelType != "gpt_neox") Fail("model_type", ModelType, "only 'gpt_neox' models are supported.");
        if (VocabSize <= 0) Fail("vocab_size", VocabSize, "must be positive.");
        if (HiddenSize <= 0) Fail("hidden_size", HiddenSize, "must be positive.");
        if (NumHiddenLayers <= 0) Fail("num_hidden_layers", NumHiddenLayers, "must be positive.");
        if (NumAttentionHeads <= 0) Fail("num_attention_heads", NumAttentionHeads, "must be positive.");
        if (HiddenSize % NumAttentionHeads != 0)
            Fail("num_attention_heads", NumAttentionHeads, $"hidden_size {HiddenSize} is not divisible by it.");
        if (IntermediateSize <= 0) Fail("intermediate_size", IntermediateSize, "must be positive.");
        if (!SupportedActivations.Contains(HiddenAct))
            Fail("hidden_act", HiddenAct, $"unknown activation; supported: {string.Join(", ", SupportedActivations)}.");
        if (!(RotaryPct >= 0 && RotaryPct <= 1)) Fail("rotary_pct", RotaryPct, "must be between 0 and 1.");
        if (RotaryNdims % 2 != 0) Fail("rotary_pct", RotaryPct, $"gives an odd number of rotary dimensions ({RotaryNdims}).");
        if (!(RotaryEmbBase > 0) || double.IsInfinity(RotaryEmbBase)) Fail("rotary_emb_base", RotaryEmbBase, "must be positive.");
        if (MaxPositionEmbeddings <= 0) Fail("max_position_embeddings", MaxPositionEmbeddings, "must be positive.");
        if (!(LayerNormEps > 0)) Fail("layer_norm_eps", LayerNormEps, "must be positive.");
        if (!(InitializerRange >= 0)) Fail("initializer_range", InitializerRange, "must not be negative.");
        if (BosTokenId is < 0) Fail("bos_token_id", BosTokenId, "must not be negative.");
        if (EosTokenId is < 0) Fail("eos_token_id", EosTokenId, "must not be negative.");
        if (RopeScaling is { } scaling)
        {
            if (scaling.Type is not ("linear" or "dynamic"))
                Fail("rope_scaling", scaling.Type, "type must be 'linear' or 'dynamic'.");
            if (!(scaling.Factor > 1) || double.IsInfinity(scaling.Factor))
                Fail("rope_scaling", scaling.Factor, "factor must be a number greater than 1.");
        }
        if (TorchDtype is not (null or "float32" or "float16" or "bfloat16" or "float" or "half"))
            Fail("torch_dtype", TorchDtype, "expected float32, float16 or bfloat16.");
    }

    private static string FormatValue(object? value) => value switch
    {
        null => "null",
        string s => $"'{s}'",
        double d => d.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        _ => Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture) ?? "?",
    };

    private sealed class JsonFieldReader(JsonObject root, string? source)
    {
        public bool Has(string field) => root.ContainsKey(field);

        public string? String(string field)
        {
            var node = Node(field);
            if (node is null) return null;
            return node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : throw Wrong(field, node, "a string");
        }

        public bool? Bool(string field)
        {
            var node = Node(field);
            if (node is null) return null;
            return node.GetValueKind() switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Wrong(field, node, "a boolean"),
            };
        }

        public int? Int(string field)
        {
            var node = Node(field);
            if (node is null) return null;
            if (node.GetValueKind() == JsonValueKind.Number && node is JsonValue value)
            {
                if (value.TryGetValue<int>(out var i)) return i;
                if (value.TryGetValue<double>(out var d) && d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue) return (int)d;
            }
            throw Wrong(field, node, "an integer (32-bit)");
        }

        public double? Double(string field)
        {
            var node = Node(field);
            if (node is null) return null;
            return node.GetValueKind() == JsonValueKind.Number ? node.GetValue<double>() : throw Wrong(field, node, "a number");
        }

        public RopeScaling? RopeScaling(string field)
        {
            var node = Node(field);
            if (node is null) return null;
            if (node is not JsonObject obj) throw Wrong(field, node, "an object {\"type\": ..., \"factor\": ...} or null");
            var inner = new JsonFieldReader(obj, source);
            var type = (obj.ContainsKey("type") ? inner.String("type") : inner.String("rope_type"))
                ?? throw new ModelConfigException(source, field, "missing 'type'.");
            var factor = inner.Double("factor") ?? throw new ModelConfigException(source, field, "missing 'factor'.");
            return new RopeScaling(type, factor);
        }

        private JsonNode? Node(string field) => root.TryGetPropertyValue(field, out var node) ? node : null;

        private ModelConfigException Wrong(string field, JsonNode node, string expected) =>
            new(source, field, $"invalid value {node.ToJsonString()}: expected {expected}.");
    }
}
