using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Rinna.Net.Checkpoint;
using Rinna.Net.Model.DeviceMap;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Native;
using TorchSharp.Modules;
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

        var requested = options.QuantizationConfig ?? new QuantizationConfig();
        var quantization = new QuantizationConfig
        {
            LoadIn8Bit = requested.LoadIn8Bit || options.LoadIn8Bit,
            Int8Threshold = requested.Int8Threshold,
            SkipModules = requested.SkipModules,
        };
        quantization.Validate();

        var stored = entries["gpt_neox.embed_in.weight"].DType;
        var spec = options.DeviceMap ?? DeviceMapSpec.Cpu;
        var probeDType = ResolveDType(options.TorchDtype, stored, onCpu: false, logger).Compute;
        var plan = DeviceMapPlanner.Plan(spec, Footprints(config, probeDType, quantization), ComputeDevice.DetectAvailable(), options.MaxMemory);
        var (dtype, matrixDType) = ResolveDType(options.TorchDtype, stored, onCpu: plan.Values.Contains("cpu"), logger);
        logger.LogInformation("Loading {Layers}-layer GPT-NeoX from {Files} ({Format}, stored {Stored}) as {DType}{Matrices}{Int8}, device map {Map}",
            config.NumHiddenLayers, string.Join(", ", checkpoint.Files), checkpoint.Format, stored, dtype,
            matrixDType != dtype ? $" with {matrixDType} matrices" : "", quantization.LoadIn8Bit ? " and int8 linear layers" : "", spec);

        int loaded = 0;
        var source = new ParameterSource(dtype, (name, shape) =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            // Weights about to be quantized are read as stored, so they are rounded once (to int8), not twice.
            var targetDType = IsQuantizedWeight(name, quantization) ? (ScalarType?)null : IsLinearWeight(name) ? matrixDType : dtype;
            var device = new Device(plan[ModuleOf(name)]);
            // Float16 decode streams these matrices; int8 models keep ordinary pages (NativeHeap.Prefault says why).
            bool hugePages = device.type == TorchSharp.DeviceType.CPU && !quantization.LoadIn8Bit && targetDType == ScalarType.Float16 && IsLinearWeight(name);
            var tensor = checkpoint.ReadTensor(name, targetDType, hugePages);
            if (entries[name].DType != tensor.dtype) NativeHeap.Trim();
            if (device.type != TorchSharp.DeviceType.CPU)
            {
                var moved = tensor.to(device);
                tensor.Dispose();
                tensor = moved;
            }
            options.LoadProgress?.Report(new LoadProgress(++loaded, expected.Count, name));
            return tensor;
        }, (name, weight, bias) => CreateLinear(name, weight, bias, dtype, quantization));
        var model = new GptNeoXForCausalLM(config, source) { SourceDirectory = Path.GetFullPath(directory) };
        model.eval();
        return model;
    }

    private static TorchSharp.torch.nn.Module<Tensor, Tensor> CreateLinear(string name, Parameter weight, Parameter? bias,
        ScalarType computeDType, QuantizationConfig quantization)
    {
        if (!quantization.LoadIn8Bit || !quantization.ShouldQuantize(name))
            return weight.dtype == ScalarType.Float16 && computeDType != ScalarType.Float16
                ? new Float16Linear(weight, bias)
                : new DenseLinear(weight, bias);
        var layer = new Int8Linear(weight, bias, quantization.Int8Threshold);
        weight.Dispose();
        bias?.Dispose();
        NativeHeap.Trim();
        return layer;
    }

    private static bool IsQuantizedWeight(string name, QuantizationConfig quantization) =>
        quantization.LoadIn8Bit && IsLinearWeight(name) && quantization.ShouldQuantize(name[..^".weight".Length]);

    private static bool IsLinearWeight(string name) =>
        name.EndsWith(".weight", StringComparison.Ordinal)
        && LinearModules.Any(m => name.EndsWith("." + m + ".weight", StringComparison.Ordinal) || name == m + ".weight");

    private static readonly string[] LinearModules = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "embed_out"];

    /// <summary>The device-map unit a parameter belongs to (<c>gpt_neox.layers.3.mlp.dense_h_to_4h.weight</c> → <c>gpt_neox.layers.3</c>).</summary>
    internal static string ModuleOf(string parameterName)
    {
        var parts = parameterName.Split('.');
        return parts[0] == "gpt_neox" ? parts[1] == "layers" ? $"gpt_neox.layers.{parts[2]}" : $"gpt_neox.{parts[1]}" : parts[0];
    }

    /// <summary>Bytes each device-map unit will hold after dtype conversion and quantization.</summary>
    internal static IReadOnlyList<ModuleFootprint> Footprints(GptNeoXConfig config, ScalarType dtype, QuantizationConfig quantization)
    {
        long element = dtype == ScalarType.Float32 ? 4 : 2, h = config.HiddenSize, i = config.IntermediateSize, v = config.VocabSize;
        long Linear(string module, long output, long input, bool hasBias) =>
            quantization.LoadIn8Bit && quantization.ShouldQuantize(module)
                ? Int8Linear.StorageBytes(output, input, hasBias)
                : (output * input + (hasBias ? output : 0)) * element;
        var modules = new List<ModuleFootprint> { new("gpt_neox.embed_in", v * h * element) };
        for (int layer = 0; layer < config.NumHiddenLayers; layer++)
        {
            var p = $"gpt_neox.layers.{layer}";
            modules.Add(new(p, 4 * h * element
                + Linear(p + ".attention.query_key_value", 3 * h, h, config.AttentionBias)
                + Linear(p + ".attention.dense", h, h, config.AttentionBias)
                + Linear(p + ".mlp.dense_h_to_4h", i, h, true)
                + Linear(p + ".mlp.dense_4h_to_h", h, i, true)));
        }
        modules.Add(new("gpt_neox.final_layer_norm", 2 * h * element));
        modules.Add(new("embed_out", config.TieWordEmbeddings ? 0 : Linear("embed_out", v, h, false)));
        return modules;
    }

    /// <summary>
    /// The dtype the model computes in, and the one its linear weights are stored in. They differ only for float16 on the
    /// CPU: the matrices stay float16 (<see cref="Float16Linear"/> streams them with libtorch's fast float16 GEMV while
    /// decoding and converts them block by block for prompts), while LayerNorms, embeddings and activations use bfloat16,
    /// whose CPU kernels libtorch vectorises (its float16 LayerNorm is 40× slower for one token).
    /// </summary>
    internal static (ScalarType Compute, ScalarType Matrices) ResolveDType(TorchDtype requested, ScalarType stored, bool onCpu, ILogger logger)
    {
        var dtype = requested switch
        {
            TorchDtype.Auto => stored is ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 ? stored : ScalarType.Float32,
            TorchDtype.Float32 => ScalarType.Float32,
            TorchDtype.Float16 => ScalarType.Float16,
            TorchDtype.BFloat16 => ScalarType.BFloat16,
            _ => throw new ArgumentOutOfRangeException(nameof(requested), requested, "unknown TorchDtype."),
        };
        if (dtype == ScalarType.Float16 && onCpu)
        {
            logger.LogInformation("float16 on CPU: linear weights stay float16 (float16 GEMV for decoding, bfloat16 GEMM for prompts); LayerNorms, embeddings and activations compute in bfloat16");
            return (ScalarType.BFloat16, ScalarType.Float16);
        }
        return (dtype, dtype);
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
