using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Rinna.Net.Checkpoint;
using Rinna.Net.Kernels;
using Rinna.Net.Model.Adapters;
using Rinna.Net.Model.DeviceMap;
using Rinna.Net.Model.Layers;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Native;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rinna.Net.Model;

/// <summary>Builds a <see cref="GptNeoXForCausalLM"/> from a model directory: config, checkpoint validation, dtype, tensor-by-tensor load.</summary>
internal static class GptNeoXLoader
{
    public static GptNeoXForCausalLM Load(string directory, ModelLoadOptions options, CancellationToken cancellationToken, string? adapterDirectory = null)
    {
        var logger = options.LoggerFactory?.CreateLogger("Rinna.Net.Model") ?? NullLogger.Instance;
        var config = GptNeoXConfig.FromFile(Path.Combine(directory, "config.json"));
        using var checkpoint = ModelCheckpoint.Open(directory);
        var entries = checkpoint.Entries;
        // Checked before the layout is built from the config: a config claiming billions of layers must not build them.
        int layers = entries.Keys.Select(GptNeoXWeightLayout.LayerIndexOf).DefaultIfEmpty(-1).Max() + 1;
        if (layers != config.NumHiddenLayers)
            throw new CheckpointException(string.Join(", ", checkpoint.Files),
                $"config.json has num_hidden_layers = {config.NumHiddenLayers}, but the checkpoint holds {layers} layers.");
        var layoutList = GptNeoXWeightLayout.For(config);
        var layout = layoutList.ToDictionary(w => w.Name, StringComparer.Ordinal);
        Validate(checkpoint, entries, layout, config);
        // The adapter is read and checked before any weight, so a bad adapter fails fast.
        var adapter = adapterDirectory ?? options.Adapter;
        using var merged = adapter is not null && options.MergeAdapter ? LoadAdapter(adapter, layoutList) : null;
        var unmerged = adapter is not null && !options.MergeAdapter ? LoadAdapter(adapter, layoutList) : null;
        var adapters = options.EnableAdapters || unmerged is not null ? new AdapterState() : null;

        var requested = options.QuantizationConfig ?? new QuantizationConfig();
        var quantization = new QuantizationConfig
        {
            LoadIn8Bit = requested.LoadIn8Bit || options.LoadIn8Bit,
            LoadIn4Bit = requested.LoadIn4Bit || options.LoadIn4Bit,
            Bnb4BitQuantType = requested.Bnb4BitQuantType,
            Bnb4BitUseDoubleQuant = requested.Bnb4BitUseDoubleQuant,
            Bnb4BitComputeDtype = requested.Bnb4BitComputeDtype,
            Int8Threshold = requested.Int8Threshold,
            SkipModules = requested.SkipModules,
        };
        quantization.Validate();

        var stored = entries["gpt_neox.embed_in.weight"].DType;
        var spec = options.DeviceMap ?? DeviceMapSpec.Cpu;
        var probeDType = ResolveDType(options.TorchDtype, stored, onCpu: false, logger).Compute;
        var footprints = Footprints(layout.Values, probeDType, quantization);
        var plan = DeviceMapPlanner.Plan(spec, footprints, ComputeDevice.DetectAvailable(), options.MaxMemory);
        var (dtype, matrixDType) = ResolveDType(options.TorchDtype, stored, onCpu: plan.Values.Contains("cpu"), logger);
        CheckMemory(checkpoint, footprints, plan, config);
        logger.LogInformation("Loading {Layers}-layer GPT-NeoX from {Files} ({Format}, stored {Stored}) as {DType}{Matrices}{Int8}, device map {Map}",
            config.NumHiddenLayers, string.Join(", ", checkpoint.Files), checkpoint.Format, stored, dtype,
            matrixDType != dtype ? $" with {matrixDType} matrices" : "",
            quantization.LoadIn8Bit ? " and int8 linear layers" : quantization.LoadIn4Bit ? $" and 4-bit {quantization.Bnb4BitQuantType} linear layers" : "", spec);
        if (quantization.LoadIn8Bit && plan.Values.Contains("cpu") && !AtenInt8Kernels.IntMmIsExactOnCpu)
            logger.LogInformation("int8 on CPU: ATen's _int_mm does not return exact sums on this CPU (oneDNN's int8 GEMM saturates without VNNI), so int8 prompts run in the managed int8 GEMV");

        int loaded = 0;
        // Weights about to be quantized are read as stored, so they are rounded once (to int8), not twice.
        ScalarType TargetOf(WeightSpec weight) => IsQuantized(weight, quantization) ? entries[weight.Name].DType : weight.IsLinearWeight ? matrixDType : dtype;
        // Large weights stored in another dtype are read into one buffer and converted from there (below).
        bool ConvertsLarge(WeightSpec weight) => entries.TryGetValue(weight.Name, out var entry) && entry.DType != TargetOf(weight)
            && TensorAllocation.Bytes(weight.Shape, entry.DType) >= NativeHeap.OwnMappingBytes;
        // Weights read only to be quantized share one buffer, sized for the largest of them.
        using var staging = new WeightMemory.Staging(layout.Values.Where(w => IsQuantized(w, quantization)).Select(w => w.Elements).DefaultIfEmpty(0).Max());
        using var conversion = new WeightMemory.Staging(layout.Values.Where(ConvertsLarge).Select(w => w.Elements).DefaultIfEmpty(0).Max());
        int conversionsLeft = layout.Values.Count(ConvertsLarge);
        var source = new ParameterSource(dtype, (name, shape) =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            var weight = layout[name];
            var stored = entries[name].DType;
            var target = TargetOf(weight);
            var device = new Device(plan[weight.DeviceMapUnit]);
            // Checkpoint readers fill CPU memory; the weight moves to its device afterwards. Only float16 models stream
            // their matrices through the float16 GEMV on huge pages; a quantized model's float16 head keeps ordinary pages.
            var tensor = TensorAllocation.Guard(weight.Shape, target, string.Join(", ", checkpoint.Files), name, () => IsQuantized(weight, quantization)
                ? staging.Take(weight.Shape, target)
                : WeightMemory.Allocate(weight.Shape, target, CPU,
                    weight.IsLinearWeight && target == ScalarType.Float16 && !quantization.LoadIn8Bit && !quantization.LoadIn4Bit
                        && device.type == TorchSharp.DeviceType.CPU ? WeightPages.Huge : WeightPages.Default));
            try
            {
                if (ConvertsLarge(weight))
                {
                    // A fresh stored-dtype copy per weight, read page by page, cost more than the conversion; the
                    // buffer is freed after the last such weight so that it does not stay beside the finished model.
                    using (var read = TensorAllocation.Guard(weight.Shape, stored, string.Join(", ", checkpoint.Files), name, () => conversion.Take(weight.Shape, stored)))
                    {
                        checkpoint.ReadInto(name, read);
                        tensor.copy_(read);
                    }
                    if (--conversionsLeft == 0) conversion.Release();
                }
                else
                {
                    checkpoint.ReadInto(name, tensor);
                }
            }
            catch
            {
                tensor.Dispose();
                throw;
            }
            if (merged is not null) MergeAdapter(merged, name, tensor);
            if (stored != target) WeightMemory.ReleaseFreed();
            if (device.type != TorchSharp.DeviceType.CPU)
            {
                Tensor moved;
                try
                {
                    moved = tensor.to(device);
                }
                catch (System.Runtime.InteropServices.ExternalException ex)
                {
                    throw new CheckpointException(string.Join(", ", checkpoint.Files),
                        $"tensor '{name}' ({TensorAllocation.Bytes(weight.Shape, target)} bytes) does not fit on {device}: {ex.Message.Split('\n')[0]}", ex);
                }
                finally
                {
                    tensor.Dispose();
                }
                tensor = moved;
            }
            options.LoadProgress?.Report(new LoadProgress(++loaded, layout.Count, name));
            return tensor;
        }, (name, weight, bias) =>
        {
            var layer = CreateLinear(name, weight, bias, dtype, quantization);
            return adapters is null ? layer : AdapterExtensions.Wrap(adapters, name, layer);
        });
        var model = new GptNeoXForCausalLM(config, source) { SourceDirectory = Path.GetFullPath(directory), Logger = logger };
        model.eval();
        if (adapters is not null)
        {
            AdapterExtensions.Register(model, adapters);
            if (unmerged is not null)
            {
                // PEFT names the adapter of PeftModel.from_pretrained "default" and makes it active.
                AdapterExtensions.Attach(adapters, "default", unmerged);
                model.SetAdapter("default");
            }
        }
        if (merged is not null)
            logger.LogInformation("Merged LoRA adapter {Adapter} into {Layers} linear layers", merged.Directory, merged.Updates.Count);
        return model;
    }

    /// <summary>
    /// Refuses a model whose weights for the cpu exceed the memory available, before any is allocated: a config and
    /// checkpoint that agree on enormous sizes (a sparse file can claim terabytes) must fail as a checkpoint error, not
    /// in the allocator or the OOM killer.
    /// </summary>
    private static void CheckMemory(ModelCheckpoint checkpoint, IReadOnlyList<ModuleFootprint> footprints,
        IReadOnlyDictionary<string, string> plan, GptNeoXConfig config)
    {
        long onCpu = 0;
        foreach (var module in footprints)
        {
            if (plan.TryGetValue(module.Name, out var device) && device == DeviceNames.Cpu)
                onCpu = onCpu > long.MaxValue - module.Bytes ? long.MaxValue : onCpu + module.Bytes;
        }
        long available = MemoryInfo.AvailableBytes;
        if (onCpu > available)
            throw new CheckpointException(string.Join(", ", checkpoint.Files),
                $"the weights config.json describes (hidden_size {config.HiddenSize}, {config.NumHiddenLayers} layers, vocab_size {config.VocabSize}) "
                + $"take {onCpu} bytes in memory, more than the {available} bytes of memory available.");
    }

    private static LoraAdapter LoadAdapter(string adapter, IReadOnlyList<WeightSpec> layout)
    {
        if (!Directory.Exists(adapter))
            throw new ArgumentException($"adapter '{adapter}' is not a directory.", nameof(adapter));
        return LoraAdapter.Load(adapter, layout);
    }

    /// <summary>
    /// Applies a merged adapter to one freshly read tensor: <c>W + s·B·A</c> computed in float32 and stored back in the
    /// tensor's dtype (rounded once), or the adapter's own copy of a <c>modules_to_save</c> tensor.
    /// </summary>
    private static void MergeAdapter(LoraAdapter adapter, string name, Tensor tensor)
    {
        if (adapter.SavedTensors.TryGetValue(name, out var saved))
        {
            tensor.copy_(saved);
            return;
        }
        if (!name.EndsWith(".weight", StringComparison.Ordinal) || !adapter.Updates.TryGetValue(name[..^".weight".Length], out var update)) return;
        using var scope = NewDisposeScope();
        tensor.copy_(tensor.to(ScalarType.Float32).add_(update.Delta()));
    }

    private static LinearLayer CreateLinear(string name, Parameter weight, Parameter? bias, ScalarType computeDType, QuantizationConfig quantization)
    {
        if (quantization.LoadIn4Bit && quantization.ShouldQuantize(name))
        {
            var fourBit = new Bnb4BitLinear(weight, bias, quantization.Bnb4BitQuantType, quantization.Bnb4BitUseDoubleQuant,
                quantization.Bnb4BitComputeDtype switch
                {
                    TorchDtype.Auto => null,
                    TorchDtype.Float16 => ScalarType.Float16,
                    TorchDtype.BFloat16 => ScalarType.BFloat16,
                    _ => ScalarType.Float32,
                },
                allocate: (shape, dtype, device) => WeightMemory.Allocate(shape, dtype, device, WeightPages.Small));
            weight.Dispose();
            bias?.Dispose();
            WeightMemory.ReleaseFreed();
            return fourBit;
        }
        if (!quantization.LoadIn8Bit || !quantization.ShouldQuantize(name))
            return weight.dtype == ScalarType.Float16 && computeDType != ScalarType.Float16
                ? new Float16Linear(weight, bias)
                : new DenseLinear(weight, bias);
        var layer = new Int8Linear(weight, bias, quantization.Int8Threshold, device: null,
            allocate: (shape, dtype, device) => WeightMemory.Allocate(shape, dtype, device, WeightPages.Small));
        weight.Dispose();
        bias?.Dispose();
        WeightMemory.ReleaseFreed();
        return layer;
    }

    private static bool IsQuantized(WeightSpec weight, QuantizationConfig quantization) =>
        (quantization.LoadIn8Bit || quantization.LoadIn4Bit) && weight.IsLinearWeight && quantization.ShouldQuantize(weight.LinearModule!);

    /// <summary>Bytes each device-map unit will hold after dtype conversion and quantization, in the model's order.</summary>
    internal static IReadOnlyList<ModuleFootprint> Footprints(IEnumerable<WeightSpec> layout, ScalarType dtype, QuantizationConfig quantization)
    {
        long element = dtype == ScalarType.Float32 ? 4 : 2;
        var bytes = new Dictionary<string, long>(StringComparer.Ordinal);
        var order = new List<string>();
        var weights = layout.ToList();
        foreach (var weight in weights)
        {
            var unit = weight.DeviceMapUnit;
            if (!bytes.ContainsKey(unit)) { bytes[unit] = 0; order.Add(unit); }
            bool quantized = weight.LinearModule is { } module && quantization.ShouldQuantize(module);
            if (!quantized) bytes[unit] += weight.Elements * element;
            else if (weight.IsLinearWeight)
            {
                bool hasBias = weights.Any(w => w.Name == weight.LinearModule + ".bias");
                bytes[unit] += quantization.LoadIn4Bit
                    ? Bnb4BitLinear.StorageBytes(weight.Shape[0], weight.Shape[1], hasBias, quantization.Bnb4BitUseDoubleQuant)
                    : Int8Linear.StorageBytes(weight.Shape[0], weight.Shape[1], hasBias);
            }
        }
        // A tied head holds no weights of its own but is still a unit of the map.
        if (!bytes.ContainsKey("embed_out")) { bytes["embed_out"] = 0; order.Add("embed_out"); }
        return order.Select(unit => new ModuleFootprint(unit, bytes[unit])).ToList();
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
            logger.LogInformation("float16 on CPU: linear weights stay float16 (float16 GEMV for decoding, a bfloat16 or float32 GEMM for prompts, whichever this CPU runs faster); LayerNorms, embeddings and activations compute in bfloat16");
            return (ScalarType.BFloat16, ScalarType.Float16);
        }
        return (dtype, dtype);
    }

    private static void Validate(ModelCheckpoint checkpoint, IReadOnlyDictionary<string, TensorEntry> entries,
        IReadOnlyDictionary<string, WeightSpec> layout, GptNeoXConfig config)
    {
        var expected = layout.ToDictionary(kv => kv.Key, kv => kv.Value.Shape, StringComparer.Ordinal);
        var file = string.Join(", ", checkpoint.Files);
        // Checkpoints saved by bitsandbytes after load_in_4bit/8bit carry their quantization state next to packed weights.
        var quantState = entries.Keys.FirstOrDefault(name => name.Contains(".quant_state.bitsandbytes__", StringComparison.Ordinal)
            || name.EndsWith(".weight.absmax", StringComparison.Ordinal) || name.EndsWith(".SCB", StringComparison.Ordinal));
        if (quantState is not null)
            throw new CheckpointException(file, $"the checkpoint is already quantized by bitsandbytes ({quantState}); pre-quantized checkpoints are not supported. "
                + "Load the original floating-point checkpoint with LoadIn4Bit or LoadIn8Bit instead.");
        var missing = expected.Keys.Where(name => !entries.ContainsKey(name)).Order(StringComparer.Ordinal).ToList();
        var unexpected = entries.Keys.Where(name => !expected.ContainsKey(name) && !GptNeoXWeightLayout.IsIgnoredCheckpointKey(name)
            && !(config.TieWordEmbeddings && name == "embed_out.weight")).Order(StringComparer.Ordinal).ToList();
        var mismatched = expected.Where(kv => entries.TryGetValue(kv.Key, out var e) && !e.Shape.SequenceEqual(kv.Value))
            .Select(kv => $"{kv.Key} is [{string.Join(", ", entries[kv.Key].Shape)}], config.json implies [{string.Join(", ", kv.Value)}]")
            .ToList();
        var wrongType = expected.Keys.Where(name => entries.TryGetValue(name, out var e)
            && e.DType is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64))
            .Select(name => $"{name} is {entries[name].DType}").ToList();
        // At most a few names of each kind, so a hostile checkpoint cannot make the message huge.
        static string Some(IReadOnlyList<string> items, string separator) =>
            string.Join(separator, items.Take(8)) + (items.Count > 8 ? $"{separator}and {items.Count - 8} more" : "");
        var problems = new List<string>();
        if (missing.Count > 0) problems.Add($"missing tensors: {Some(missing, ", ")}");
        if (unexpected.Count > 0) problems.Add($"unexpected tensors: {Some(unexpected, ", ")}");
        if (mismatched.Count > 0) problems.Add($"shape mismatches: {Some(mismatched, "; ")}");
        if (wrongType.Count > 0) problems.Add($"weights that are not floating point: {Some(wrongType, "; ")}");
        if (problems.Count > 0)
            throw new CheckpointException(file, "the checkpoint does not match config.json: " + string.Join(". ", problems) + ".");
    }
}
