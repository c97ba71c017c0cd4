using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

/// <summary>Loading a 4-bit model from a float16 checkpoint never holds a full-precision copy of more than a layer.</summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class Bnb4BitLoadingMemoryTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-4bit-mem-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    [Fact]
    public async Task PeakWhileLoadingStaysNearTheFinalModel()
    {
        // 168 M parameters: a 336 MB float16 checkpoint whose NF4 model holds ~120 MB (bfloat16 embeddings included).
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
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory, new ModelLoadOptions
        {
            TorchDtype = TorchDtype.BFloat16,
            QuantizationConfig = new QuantizationConfig { LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4 },
        });
        long peak = ProcessMemory.PeakResidentBytes - before;

        long modelBytes = model.parameters().Concat(model.buffers()).Sum(t => t.NumberOfElements * t.ElementSize);
        Assert.InRange(modelBytes, (long)(0.3 * checkpointBytes), (long)(0.4 * checkpointBytes));
        // Measured 190 MB: fixed costs (code run for the first time, pooled 4 MiB conversion buffers, thread stacks) weigh
        // more against a 119 MB model than against int8's 220 MB. Float weights kept alive by undisposed views until a GC
        // measured 281 MB.
        Assert.True(peak <= 1.75 * modelBytes,
            $"peak {peak / 1e6:F0} MB while loading a {modelBytes / 1e6:F0} MB 4-bit model from a {checkpointBytes / 1e6:F0} MB checkpoint");
    }
}
