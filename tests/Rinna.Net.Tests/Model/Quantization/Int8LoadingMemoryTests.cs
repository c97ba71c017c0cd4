using Rinna.Net.Checkpoint;
using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

/// <summary>Loading an int8 model from a float16 checkpoint never holds a second full-precision copy.</summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class Int8LoadingMemoryTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-int8-mem-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    [Fact]
    public async Task PeakWhileLoadingStaysWithinAQuarterOfTheFinalModel()
    {
        // 168 M parameters: a 336 MB float16 checkpoint whose int8 model holds ~220 MB.
        var config = new GptNeoXConfig
        {
            VocabSize = 8192, HiddenSize = 1024, NumHiddenLayers = 12, NumAttentionHeads = 16, IntermediateSize = 4096,
            RotaryPct = 1.0, UseParallelResidual = false, TorchDtype = "float16",
        };
        using (var random = GptNeoXForCausalLM.CreateRandom(config, seed: 3, ScalarType.Float16))
            random.SavePretrained(directory);
        var checkpointBytes = new FileInfo(Path.Combine(directory, "model.safetensors")).Length;

        ProcessMemory.ResetPeak();
        long before = ProcessMemory.ResidentBytes;
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory,
            new ModelLoadOptions { LoadIn8Bit = true, TorchDtype = TorchDtype.BFloat16 });
        long peak = ProcessMemory.PeakResidentBytes - before;

        long modelBytes = model.parameters().Concat(model.buffers()).Sum(t => t.NumberOfElements * t.ElementSize);
        Assert.InRange(modelBytes, (long)(0.55 * checkpointBytes), (long)(0.75 * checkpointBytes)); // int8 body, bf16 embeddings
        Assert.True(peak <= 1.25 * modelBytes,
            $"peak {peak / 1e6:F0} MB while loading a {modelBytes / 1e6:F0} MB int8 model from a {checkpointBytes / 1e6:F0} MB checkpoint");
    }
}
