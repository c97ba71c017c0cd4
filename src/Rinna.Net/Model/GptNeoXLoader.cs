using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Rinna.Net.Checkpoint;
using static TorchSharp.torch;

namespace Rinna.Net.Model;

/// <summary>Builds a <see cref="GptNeoXForCausalLM"/> from a model directory: config, checkpoint validation, dtype, tensor-by-tensor load.</summary>
internal static class GptNeoXLoader
{
    public static GptNeoXForCausalLM Load(string directory, ModelLoadOptions options, CancellationToken cancellationToken)
    {
        var logger = options.LoggerFactory?.CreateLogger("Rinna.Net.Model") ?? NullLogger.Instance;
        var config = GptNeoXConfig.FromFile(Path.Combine(directory, "config.json"));
        using var checkpoint = ModelCheckpoint.Open(directory);
        var entries = checkpoint.Entries;
        var expected = GptNeoXForCausalLM.ExpectedParameterShapes(config);
        Validate(checkpoint, entries, expected, config);

        var stored = entries["gpt_neox.embed_in.weight"].DType;
        var dtype = ResolveDType(options.TorchDtype, stored, logger);
        logger.LogInformation("Loading {Layers}-layer GPT-NeoX from {Files} ({Format}, stored {Stored}) as {DType}",
            config.NumHiddenLayers, string.Join(", ", checkpoint.Files), checkpoint.Format, stored, dtype);

        int loaded = 0;
        var source = new ParameterSource(dtype, (name, shape) =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            var tensor = checkpoint.ReadTensor(name, dtype);
            options.LoadProgress?.Report(new LoadProgress(++loaded, expected.Count, name));
            return tensor;
        });
        var model = new GptNeoXForCausalLM(config, source) { SourceDirectory = Path.GetFullPath(directory) };
        model.eval();
        return model;
    }

    internal static ScalarType ResolveDType(TorchDtype requested, ScalarType stored, ILogger logger)
    {
        var dtype = requested switch
        {
            TorchDtype.Auto => stored is ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 ? stored : ScalarType.Float32,
            TorchDtype.Float32 => ScalarType.Float32,
            TorchDtype.Float16 => ScalarType.Float16,
            TorchDtype.BFloat16 => ScalarType.BFloat16,
            _ => throw new ArgumentOutOfRangeException(nameof(requested), requested, "unknown TorchDtype."),
        };
        if (dtype == ScalarType.Float16)
        {
            logger.LogWarning("float16 was requested; libtorch's CPU float16 matrix products are about 8x slower than bfloat16 for prompts, so the model computes in bfloat16");
            dtype = ScalarType.BFloat16;
        }
        return dtype;
    }

    private static void Validate(ModelCheckpoint checkpoint, IReadOnlyDictionary<string, TensorEntry> entries,
        IReadOnlyDictionary<string, long[]> expected, GptNeoXConfig config)
    {
        var file = string.Join(", ", checkpoint.Files);
        var missing = expected.Keys.Where(name => !entries.ContainsKey(name)).Order(StringComparer.Ordinal).ToList();
        var unexpected = entries.Keys.Where(name => !expected.ContainsKey(name) && !GptNeoXForCausalLM.IsIgnoredCheckpointKey(name)
            && !(config.TieWordEmbeddings && name == "embed_out.weight")).Order(StringComparer.Ordinal).ToList();
        var mismatched = expected.Where(kv => entries.TryGetValue(kv.Key, out var e) && !e.Shape.SequenceEqual(kv.Value))
            .Select(kv => $"{kv.Key} is [{string.Join(", ", entries[kv.Key].Shape)}], config.json implies [{string.Join(", ", kv.Value)}]")
            .ToList();
        var wrongType = expected.Keys.Where(name => entries.TryGetValue(name, out var e)
            && e.DType is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64))
            .Select(name => $"{name} is {entries[name].DType}").ToList();
        var problems = new List<string>();
        if (missing.Count > 0) problems.Add($"missing tensors: {string.Join(", ", missing)}");
        if (unexpected.Count > 0) problems.Add($"unexpected tensors: {string.Join(", ", unexpected)}");
        if (mismatched.Count > 0) problems.Add($"shape mismatches: {string.Join("; ", mismatched)}");
        if (wrongType.Count > 0) problems.Add($"weights that are not floating point: {string.Join("; ", wrongType)}");
        if (problems.Count > 0)
            throw new CheckpointException(file, "the checkpoint does not match config.json: " + string.Join(". ", problems) + ".");
    }
}
