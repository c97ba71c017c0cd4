using Rinna.Net.Checkpoint;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Adapters;

/// <summary>One linear layer's low-rank update: <c>ΔW = Scaling · B · A</c>, float32 on the CPU.</summary>
/// <param name="A"><c>lora_A</c>, <c>[r, in_features]</c>.</param>
/// <param name="B"><c>lora_B</c>, <c>[out_features, r]</c>.</param>
/// <param name="Scaling">The scale <c>s</c>.</param>
internal sealed record LoraUpdate(Tensor A, Tensor B, double Scaling)
{
    /// <summary><c>s · B · A</c>, float32 <c>[out, in]</c>.</summary>
    public Tensor Delta() => B.matmul(A).mul_(Scaling);
}

/// <summary>
/// A PEFT LoRA adapter read from its directory (<c>adapter_config.json</c> and <c>adapter_model.safetensors</c>, else
/// <c>adapter_model.bin</c>) and checked against a model's layout: the updates of its target layers and the tensors of
/// its <c>modules_to_save</c>.
/// </summary>
internal sealed class LoraAdapter : IDisposable
{
    private const string Prefix = "base_model.model.";

    private LoraAdapter(string directory, LoraConfig config, Dictionary<string, LoraUpdate> updates, Dictionary<string, Tensor> saved)
    {
        Directory = directory;
        Config = config;
        Updates = updates;
        SavedTensors = saved;
    }

    public string Directory { get; }

    public LoraConfig Config { get; }

    /// <summary>Updates by linear module name (<c>gpt_neox.layers.0.attention.query_key_value</c>).</summary>
    public IReadOnlyDictionary<string, LoraUpdate> Updates { get; }

    /// <summary>Replacement tensors of <c>modules_to_save</c>, by parameter name.</summary>
    public IReadOnlyDictionary<string, Tensor> SavedTensors { get; }

    /// <summary>Reads and validates an adapter for a model with <paramref name="layout"/>.</summary>
    /// <exception cref="AdapterConfigException">The configuration is not a supported LoRA adapter.</exception>
    /// <exception cref="CheckpointException">The weights are missing, or do not fit the model or the configuration.</exception>
    public static LoraAdapter Load(string directory, IReadOnlyList<WeightSpec> layout)
    {
        var configPath = Path.Combine(directory, "adapter_config.json");
        if (!File.Exists(configPath)) throw new AdapterConfigException(configPath, null, "the adapter directory has no adapter_config.json.");
        var config = LoraConfig.FromFile(configPath);
        var weightsPath = Path.Combine(directory, "adapter_model.safetensors");
        if (!File.Exists(weightsPath)) weightsPath = Path.Combine(directory, "adapter_model.bin");
        if (!File.Exists(weightsPath))
            throw new CheckpointException(Path.Combine(directory, "adapter_model.safetensors"), "the adapter has no weights (adapter_model.safetensors or adapter_model.bin).");

        var shapes = layout.ToDictionary(w => w.Name, w => w.Shape, StringComparer.Ordinal);
        var head = layout.Where(w => w.IsLinearWeight).Select(w => w.LinearModule!).LastOrDefault(m => !m.Contains('.', StringComparison.Ordinal));
        using ITensorFile file = weightsPath.EndsWith(".bin", StringComparison.Ordinal) ? PyTorchPickleFile.Open(weightsPath) : SafetensorsTensorFile.Open(weightsPath);
        var halves = new Dictionary<string, (Tensor? A, Tensor? B)>(StringComparer.Ordinal);
        var saved = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var key in file.Names.Order(StringComparer.Ordinal))
            {
                // Saved adapters drop PEFT's adapter name; an unsaved state dict may still carry ".default".
                var name = (key.StartsWith(Prefix, StringComparison.Ordinal) ? key[Prefix.Length..] : key).Replace(".default.", ".", StringComparison.Ordinal);
                var entry = file[key];
                if (name.EndsWith(".lora_A.weight", StringComparison.Ordinal) || name.EndsWith(".lora_B.weight", StringComparison.Ordinal))
                {
                    var module = name[..^".lora_A.weight".Length];
                    if (!shapes.ContainsKey(module + ".weight") || !layout.Any(w => w.LinearModule == module))
                        throw new CheckpointException(weightsPath, $"'{key}' adapts '{module}', which is not a linear layer of the model.");
                    var tensor = Read(file, key, entry);
                    var pair = halves.GetValueOrDefault(module);
                    halves[module] = name.EndsWith(".lora_A.weight", StringComparison.Ordinal) ? (tensor, pair.B) : (pair.A, tensor);
                }
                else if (name.Contains(".lora_", StringComparison.Ordinal))
                {
                    throw new AdapterConfigException(weightsPath, null,
                        $"'{key}' is not a LoRA update of a linear layer (embedding, convolution and DoRA adapters are not supported).");
                }
                else if (shapes.TryGetValue(name, out var shape) && config.Saves(name[..name.LastIndexOf('.')]))
                {
                    if (!entry.Shape.SequenceEqual(shape))
                        throw new CheckpointException(weightsPath, $"'{key}' is [{string.Join(", ", entry.Shape)}], the model's '{name}' is [{string.Join(", ", shape)}].");
                    saved[name] = Read(file, key, entry);
                }
                else
                {
                    throw new CheckpointException(weightsPath, $"unexpected tensor '{key}': neither a LoRA update nor a module of modules_to_save.");
                }
            }

            var updates = new Dictionary<string, LoraUpdate>(StringComparer.Ordinal);
            foreach (var (module, (a, b)) in halves)
            {
                if (a is null || b is null)
                    throw new CheckpointException(weightsPath, $"'{module}' has lora_{(a is null ? "A" : "B")} missing.");
                // PEFT creates no LoRA layer where the configuration does not target, so such weights are left unused.
                if (!config.Targets(module, isOutputHead: module == head)) continue;
                var (rank, scaling) = config.RankAndScaling(module);
                var weight = shapes[module + ".weight"];
                if (!a.shape.SequenceEqual([rank, weight[1]]) || !b.shape.SequenceEqual([weight[0], rank]))
                    throw new CheckpointException(weightsPath,
                        $"'{module}': lora_A is [{string.Join(", ", a.shape)}] and lora_B [{string.Join(", ", b.shape)}], but rank {rank} on a "
                        + $"[{weight[0]}, {weight[1]}] weight needs [{rank}, {weight[1]}] and [{weight[0]}, {rank}].");
                updates[module] = new LoraUpdate(a, b, scaling);
            }
            if (updates.Count == 0 && saved.Count == 0)
                throw new CheckpointException(weightsPath, "the adapter updates none of the model's layers its configuration targets.");
            return new LoraAdapter(Path.GetFullPath(directory), config, updates, saved);
        }
        catch
        {
            foreach (var (a, b) in halves.Values) { a?.Dispose(); b?.Dispose(); }
            foreach (var t in saved.Values) t.Dispose();
            throw;
        }
    }

    private static Tensor Read(ITensorFile file, string key, TensorEntry entry)
    {
        if (!ModelCheckpoint.IsFloatingPoint(entry.DType))
            throw new CheckpointException(file.Path, $"'{key}' is {entry.DType}, not floating point.");
        var tensor = TensorAllocation.Empty(entry.Shape, ScalarType.Float32, file.Path, key);
        try
        {
            file.ReadInto(key, tensor);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (var update in Updates.Values) { update.A.Dispose(); update.B.Dispose(); }
        foreach (var t in SavedTensors.Values) t.Dispose();
    }
}
