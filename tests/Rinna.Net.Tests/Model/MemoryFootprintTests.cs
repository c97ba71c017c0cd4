using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model;

/// <summary><c>GetMemoryFootprint</c> counts the weights as held: per dtype, per quantization, a tied matrix once.</summary>
public sealed class MemoryFootprintTests : IDisposable
{
    private static readonly GptNeoXConfig Config = new()
    {
        VocabSize = 320, HiddenSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, IntermediateSize = 512, RotaryPct = 0.25,
    };

    private readonly string directory = Directory.CreateTempSubdirectory("rinna-footprint-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    private static long Elements(GptNeoXConfig config) =>
        GptNeoXForCausalLM.ExpectedParameterShapes(config).Values.Sum(shape => shape.Aggregate(1L, (a, b) => a * b));

    [Theory]
    [InlineData(ScalarType.Float32, 4)]
    [InlineData(ScalarType.BFloat16, 2)]
    public void EveryParameterCountsAtItsElementSize(ScalarType dtype, int bytes)
    {
        using var model = GptNeoXForCausalLM.CreateRandom(Config, seed: 1, dtype);
        Assert.Equal(bytes * Elements(Config), model.GetMemoryFootprint());
    }

    [Fact]
    public void ATiedEmbeddingCountsOnce()
    {
        var tied = Config with { TieWordEmbeddings = true };
        using var model = GptNeoXForCausalLM.CreateRandom(tied, seed: 1);
        long embedding = (long)tied.VocabSize * tied.HiddenSize;
        Assert.Equal(4 * (Elements(Config) - embedding), model.GetMemoryFootprint());
    }

    [Fact]
    public async Task FourBitLayersCountTheirCodesAndScales()
    {
        using (var random = GptNeoXForCausalLM.CreateRandom(Config, seed: 1))
            random.SavePretrained(directory);
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory, new ModelLoadOptions
        {
            QuantizationConfig = new QuantizationConfig { LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4 },
        });
        // Per layer: four weights of 2 * 128 * 512 + 128 * 384 + 128 * 128 elements in all, half a byte each plus a float32
        // absmax per 64; everything else (embeddings, head, norms, biases) stays float32.
        long quantized = Config.NumHiddenLayers * (2L * 128 * 512 + 128 * 384 + 128 * 128);
        long expected = 4 * (Elements(Config) - quantized) + quantized / 2 + quantized / 64 * 4;
        Assert.Equal(expected, model.GetMemoryFootprint());
    }
}
