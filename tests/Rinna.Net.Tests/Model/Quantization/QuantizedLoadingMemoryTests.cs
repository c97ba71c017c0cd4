using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

/// <summary>Loading an int8 or 4-bit model from a float16 checkpoint never holds a full-precision copy of more than a layer.</summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class QuantizedLoadingMemoryTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-quantized-mem-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    /// <param name="bits">8 (LLM.int8()) or 4 (NF4).</param>
    /// <param name="modelShareMin">The smallest share of the checkpoint the loaded model may take (bfloat16 embeddings included).</param>
    /// <param name="modelShareMax">The largest.</param>
    /// <param name="peakOverModel">
    /// The most the peak may exceed the model by. NF4's measured 190 MB against a 119 MB model is mostly fixed costs (code
    /// run for the first time, pooled conversion buffers, thread stacks), which weigh more against a smaller model;
    /// float weights kept alive by undisposed views until a GC had measured 281 MB.
    /// </param>
    [Theory]
    [InlineData(8, 0.55, 0.75, 1.25)]
    [InlineData(4, 0.3, 0.4, 1.75)]
    public async Task PeakWhileLoadingStaysNearTheFinalModel(int bits, double modelShareMin, double modelShareMax, double peakOverModel)
    {
        // 168 M parameters: a 336 MB float16 checkpoint; the int8 model holds ~220 MB, the NF4 one ~120 MB.
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
            QuantizationConfig = bits == 8
                ? new QuantizationConfig { LoadIn8Bit = true }
                : new QuantizationConfig { LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4 },
        });
        long peak = ProcessMemory.PeakResidentBytes - before;

        long modelBytes = model.GetMemoryFootprint();
        Assert.InRange(modelBytes, (long)(modelShareMin * checkpointBytes), (long)(modelShareMax * checkpointBytes));
        Assert.True(peak <= peakOverModel * modelBytes,
            $"peak {peak / 1e6:F0} MB while loading a {modelBytes / 1e6:F0} MB {bits}-bit model from a {checkpointBytes / 1e6:F0} MB checkpoint");
    }
}
