using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Rinna.Net.Model.Adapters;

/// <summary>An adapter's <c>adapter_config.json</c> asks for something Rinna.Net does not implement, or is invalid.</summary>
public sealed class AdapterConfigException : ModelConfigException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="file">The adapter file at fault, or <c>null</c> for a configuration from code.</param>
    /// <param name="field">The <c>adapter_config.json</c> field at fault, or <c>null</c>.</param>
    /// <param name="message">What is wrong.</param>
    public AdapterConfigException(string? file, string? field, string message) : base(file, field, message)
    {
    }
}

/// <summary>
/// PEFT's <c>LoraConfig</c> as saved in <c>adapter_config.json</c>: which linear layers get a low-rank update
/// <c>W + s·B·A</c>, of which rank, and with which scale <c>s</c> (<c>lora_alpha / r</c>, or
/// <c>lora_alpha / √r</c> with <c>use_rslora</c>).
/// </summary>
/// <remarks>
/// Read: <c>peft_type</c> (only <c>LORA</c>), <c>r</c>, <c>lora_alpha</c>, <c>target_modules</c> (names matched as
/// PEFT does: the whole module name or its last components, a regular expression matched against the whole name,
/// or <c>all-linear</c>; <c>null</c> means PEFT's default for GPT-NeoX, <c>query_key_value</c>),
/// <c>exclude_modules</c>, <c>use_rslora</c>, <c>fan_in_fan_out</c> (ignored for linear layers, as PEFT does),
/// <c>bias</c> (only <c>none</c>), <c>layers_to_transform</c>, <c>layers_pattern</c>, <c>modules_to_save</c>,
/// <c>rank_pattern</c> and <c>alpha_pattern</c>. Training-only fields (<c>lora_dropout</c>, <c>init_lora_weights</c>,
/// ...) are ignored. DoRA (<c>use_dora</c>), other PEFT methods and other bias modes are rejected with an
/// <see cref="AdapterConfigException"/> naming the field.
/// </remarks>
public sealed record LoraConfig
{
    /// <summary><c>r</c>: the rank of the update.</summary>
    public int R { get; init; } = 8;

    /// <summary><c>lora_alpha</c>: the update's scale numerator.</summary>
    public double LoraAlpha { get; init; } = 8;

    /// <summary><c>target_modules</c> as a list of names (<c>null</c> when a regular expression or <c>all-linear</c> is used).</summary>
    public IReadOnlyList<string>? TargetModules { get; init; } = ["query_key_value"];

    /// <summary><c>target_modules</c> as a regular expression matched against the whole module name.</summary>
    public string? TargetModulesRegex { get; init; }

    /// <summary><c>target_modules: "all-linear"</c>: every linear layer but the output head.</summary>
    public bool AllLinear { get; init; }

    /// <summary><c>exclude_modules</c> as names (a regular expression goes to <see cref="ExcludeModulesRegex"/>).</summary>
    public IReadOnlyList<string>? ExcludeModules { get; init; }

    /// <summary><c>exclude_modules</c> as a regular expression.</summary>
    public string? ExcludeModulesRegex { get; init; }

    /// <summary><c>use_rslora</c>: scale by <c>lora_alpha / √r</c> instead of <c>lora_alpha / r</c>.</summary>
    public bool UseRslora { get; init; }

    /// <summary><c>layers_to_transform</c>: only these layer indices get updates (<c>null</c>: all).</summary>
    public IReadOnlyList<int>? LayersToTransform { get; init; }

    /// <summary><c>layers_pattern</c>: the name of the layer list in module names (<c>layers</c> for GPT-NeoX).</summary>
    public IReadOnlyList<string>? LayersPattern { get; init; }

    /// <summary><c>modules_to_save</c>: modules whose whole weights the adapter replaces.</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary><c>rank_pattern</c>: per-module ranks, keyed by a name suffix or pattern.</summary>
    public IReadOnlyDictionary<string, int> RankPattern { get; init; } = new Dictionary<string, int>();

    /// <summary><c>alpha_pattern</c>: per-module alphas, keyed like <see cref="RankPattern"/>.</summary>
    public IReadOnlyDictionary<string, double> AlphaPattern { get; init; } = new Dictionary<string, double>();

    /// <summary>Reads <c>adapter_config.json</c>.</summary>
    /// <exception cref="AdapterConfigException">Not a LoRA adapter, an unsupported option, or an invalid value.</exception>
    public static LoraConfig FromFile(string path)
    {
        string text;
        try
        {
            text = BoundedFile.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new AdapterConfigException(path, null, $"cannot read the adapter configuration ({ex.Message}).");
        }
        return FromJson(text, path);
    }

    /// <summary>Parses the text of an <c>adapter_config.json</c>.</summary>
    /// <exception cref="AdapterConfigException">Not a LoRA adapter, an unsupported option, or an invalid value.</exception>
    public static LoraConfig FromJson(string json, string? sourceName = null)
    {
        JsonObject root;
        try
        {
            // Duplicate keys are refused, as in config.json: two readers must not disagree on which value counts.
            root = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { MaxDepth = 64, AllowDuplicateProperties = false }) as JsonObject
                ?? throw new AdapterConfigException(sourceName, null, "expected a JSON object.");
        }
        catch (JsonException ex)
        {
            throw new AdapterConfigException(sourceName, null, $"not valid JSON ({ex.Message}).");
        }
        if (JsonStrings.FindUnreadable(root) is { } unreadable)
            throw new AdapterConfigException(sourceName, null, $"{unreadable} is not valid Unicode text (an escaped lone surrogate).");
        AdapterConfigException Bad(string field, string why) => new(sourceName, field, why);

        var peftType = Str(root, "peft_type", sourceName);
        if (peftType is null || !peftType.Equals("LORA", StringComparison.OrdinalIgnoreCase))
            throw Bad("peft_type", $"'{peftType ?? "null"}' is not supported: only LoRA adapters (peft_type LORA) can be loaded.");
        var bias = Str(root, "bias", sourceName) ?? "none";
        if (bias != "none") throw Bad("bias", $"'{bias}' is not supported: only adapters trained with bias 'none' can be loaded.");
        if (Bool(root, "use_dora", sourceName) == true) throw Bad("use_dora", "DoRA adapters (use_dora true) are not supported.");
        foreach (var unsupported in new[] { "megatron_config", "layer_replication", "target_parameters", "trainable_token_indices" })
            if (root[unsupported] is { } node && node.GetValueKind() is not (JsonValueKind.Null or JsonValueKind.False)
                && !(node is JsonArray { Count: 0 }) && !(node is JsonObject { Count: 0 }))
                throw Bad(unsupported, $"'{unsupported}' is not supported.");

        int r = Int(root, "r", sourceName) ?? 8;
        if (r <= 0) throw Bad("r", $"the rank must be positive, got {r}.");
        double alpha = Number(root, "lora_alpha", sourceName) ?? 8;

        IReadOnlyList<string>? targets = ["query_key_value"];
        string? targetRegex = null;
        bool allLinear = false;
        switch (root["target_modules"])
        {
            case null:
                break;
            case JsonArray list:
                targets = StringList(list, "target_modules", sourceName);
                break;
            case var node when node.GetValueKind() == JsonValueKind.String:
                var value = node.GetValue<string>();
                if (value.Equals("all-linear", StringComparison.OrdinalIgnoreCase)) { allLinear = true; targets = null; }
                else { targetRegex = CheckRegex(value, "target_modules", sourceName); targets = null; }
                break;
            default:
                throw Bad("target_modules", "expected a list of module names or a regular expression.");
        }

        IReadOnlyList<string>? excludes = null;
        string? excludeRegex = null;
        switch (root["exclude_modules"])
        {
            case null:
                break;
            case JsonArray list:
                excludes = StringList(list, "exclude_modules", sourceName);
                break;
            case var node when node.GetValueKind() == JsonValueKind.String:
                excludeRegex = CheckRegex(node.GetValue<string>(), "exclude_modules", sourceName);
                break;
            default:
                throw Bad("exclude_modules", "expected a list of module names or a regular expression.");
        }

        IReadOnlyList<int>? layers = root["layers_to_transform"] switch
        {
            null => null,
            JsonArray list => list.Select(n => LayerIndex(n, sourceName)).ToArray(),
            var node when node.GetValueKind() == JsonValueKind.Number => [LayerIndex(node, sourceName)],
            _ => throw Bad("layers_to_transform", "expected an integer or a list of integers."),
        };
        IReadOnlyList<string>? layersPattern = root["layers_pattern"] switch
        {
            null => null,
            JsonArray list => StringList(list, "layers_pattern", sourceName),
            var node when node.GetValueKind() == JsonValueKind.String => [node.GetValue<string>()],
            _ => throw Bad("layers_pattern", "expected a string or a list of strings."),
        };
        IReadOnlyList<string>? modulesToSave = root["modules_to_save"] switch
        {
            null => null,
            JsonArray list => StringList(list, "modules_to_save", sourceName),
            _ => throw Bad("modules_to_save", "expected a list of module names."),
        };

        var rankPattern = Dict(root, "rank_pattern", sourceName).ToDictionary(kv => kv.Key, kv => (int)kv.Value);
        if (rankPattern.Values.Any(v => v <= 0)) throw Bad("rank_pattern", "ranks must be positive.");
        var alphaPattern = Dict(root, "alpha_pattern", sourceName);

        return new LoraConfig
        {
            R = r,
            LoraAlpha = alpha,
            TargetModules = targets,
            TargetModulesRegex = targetRegex,
            AllLinear = allLinear,
            ExcludeModules = excludes,
            ExcludeModulesRegex = excludeRegex,
            UseRslora = Bool(root, "use_rslora", sourceName) ?? false,
            LayersToTransform = layers is { Count: 0 } ? null : layers,
            LayersPattern = layersPattern,
            ModulesToSave = modulesToSave,
            RankPattern = rankPattern,
            AlphaPattern = alphaPattern,
        };
    }

    /// <summary>
    /// Whether the linear layer <paramref name="module"/> (e.g. <c>gpt_neox.layers.0.attention.dense</c>) gets an update,
    /// by PEFT's <c>check_target_module_exists</c>.
    /// </summary>
    /// <param name="module">The module's full name.</param>
    /// <param name="isOutputHead">Whether it is the output head (never targeted by <c>all-linear</c>).</param>
    public bool Targets(string module, bool isOutputHead = false)
    {
        ArgumentNullException.ThrowIfNull(module);
        if (ExcludeModulesRegex is not null && Regex.IsMatch(module, $@"\A(?:{ExcludeModulesRegex})\z")) return false;
        if (ExcludeModules is not null && ExcludeModules.Any(e => module == e || module.EndsWith("." + e, StringComparison.Ordinal))) return false;
        if (AllLinear) return !isOutputHead;
        if (TargetModulesRegex is not null) return Regex.IsMatch(module, $@"\A(?:{TargetModulesRegex})\z");
        var targets = TargetModules ?? [];
        if (targets.Contains(module)) return true;
        if (!targets.Any(t => module.EndsWith("." + t, StringComparison.Ordinal))) return false;
        if (LayersToTransform is null) return true;
        Match? index = null;
        if (LayersPattern is null || LayersPattern.Count == 0) index = Regex.Match(module, @"\A.*\.[^.]*\.(\d+)\.");
        else
            foreach (var pattern in LayersPattern)
            {
                index = Regex.Match(module, $@"\A.*\.{pattern}\.(\d+)\.");
                if (index.Success) break;
            }
        return index is { Success: true } && LayersToTransform.Contains(int.Parse(index.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>The rank and scale of <paramref name="module"/>'s update, after <c>rank_pattern</c> and <c>alpha_pattern</c>.</summary>
    public (int Rank, double Scaling) RankAndScaling(string module)
    {
        var key = RankPattern.Keys.Concat(AlphaPattern.Keys).FirstOrDefault(k => Regex.IsMatch(module, $@"\A.*\.{k}$")) ?? module;
        int r = RankPattern.TryGetValue(key, out var rank) ? rank : R;
        double alpha = AlphaPattern.TryGetValue(key, out var a) ? a : LoraAlpha;
        return (r, UseRslora ? alpha / Math.Sqrt(r) : alpha / r);
    }

    /// <summary>Whether <paramref name="module"/> is one of <c>modules_to_save</c> (matched by name suffix, as PEFT does).</summary>
    public bool Saves(string module) => ModulesToSave is { } saved && saved.Any(s => module == s || module.EndsWith("." + s, StringComparison.Ordinal));

    private static string CheckRegex(string pattern, string field, string? source)
    {
        try
        {
            _ = new Regex(pattern);
            return pattern;
        }
        catch (ArgumentException ex)
        {
            throw new AdapterConfigException(source, field, $"'{pattern}' is not a valid regular expression ({ex.Message}).");
        }
    }

    private static string? Str(JsonObject root, string field, string? source) => root[field] switch
    {
        null => null,
        var n when n.GetValueKind() == JsonValueKind.String => n.GetValue<string>(),
        var n => throw new AdapterConfigException(source, field, $"expected a string, got {n.ToJsonString()}."),
    };

    private static bool? Bool(JsonObject root, string field, string? source) => root[field] switch
    {
        null => null,
        var n when n.GetValueKind() is JsonValueKind.True or JsonValueKind.False => n.GetValue<bool>(),
        var n => throw new AdapterConfigException(source, field, $"expected true or false, got {n.ToJsonString()}."),
    };

    private static double? Number(JsonObject root, string field, string? source) => root[field] switch
    {
        null => null,
        var n when n.GetValueKind() == JsonValueKind.Number => n.GetValue<double>(),
        var n => throw new AdapterConfigException(source, field, $"expected a number, got {n.ToJsonString()}."),
    };

    private static int? Int(JsonObject root, string field, string? source)
    {
        var value = Number(root, field, source);
        if (value is null) return null;
        if (value != Math.Floor(value.Value) || value is < 1 or > int.MaxValue)
            throw new AdapterConfigException(source, field, $"expected a positive integer, got {value}.");
        return (int)value;
    }

    private static int LayerIndex(JsonNode? node, string? source) =>
        node is not null && node.GetValueKind() == JsonValueKind.Number && node.GetValue<double>() is var value
            && value == Math.Floor(value) && value is >= 0 and <= int.MaxValue
            ? (int)value
            : throw new AdapterConfigException(source, "layers_to_transform", "expected a layer index (an integer from 0) or a list of them.");

    private static string[] StringList(JsonArray list, string field, string? source) =>
        list.Select(n => n is not null && n.GetValueKind() == JsonValueKind.String ? n.GetValue<string>()
            : throw new AdapterConfigException(source, field, "expected a list of strings.")).ToArray();

    private static Dictionary<string, double> Dict(JsonObject root, string field, string? source)
    {
        var result = new Dictionary<string, double>(StringComparer.Ordinal);
        switch (root[field])
        {
            case null:
                return result;
            case JsonObject map:
                foreach (var (key, value) in map)
                    result[key] = value is not null && value.GetValueKind() == JsonValueKind.Number ? value.GetValue<double>()
                        : throw new AdapterConfigException(source, field, $"'{key}' must map to a number.");
                return result;
            default:
                throw new AdapterConfigException(source, field, "expected an object.");
        }
    }
}
