using Rinna.Net.Checkpoint;
using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Native;

/// <summary>
/// Weights read only to be quantized, and large weights stored in another dtype, pass through a staging buffer per load
/// (<see cref="WeightMemory.Staging"/>), and the quantized weights that stay are held to small pages, whatever memory
/// they reuse.
/// </summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class WeightStagingTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-staging-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    [Fact]
    public unsafe void TakeReusesOneBufferUntilALargerOrOtherTypedWeightComes()
    {
        using var staging = new WeightMemory.Staging(capacity: 1000);
        long first, second;
        using (var a = staging.Take([10, 20], ScalarType.Float16))
        {
            Assert.Equal([10L, 20L], a.shape);
            Assert.Equal(ScalarType.Float16, a.dtype);
            Assert.True(a.is_contiguous());
            a.fill_(3);
            fixed (byte* p = a.bytes) first = (long)p;
        }
        using (var b = staging.Take([25, 40], ScalarType.Float16))
        {
            Assert.Equal([25L, 40L], b.shape);
            fixed (byte* p = b.bytes) second = (long)p;
            // The same memory: the first weight's values are still there.
            Assert.Equal(3f, b[0, 0].to(ScalarType.Float32).item<float>());
        }
        Assert.Equal(first, second);
        // Past the capacity, and in another dtype, the buffer is replaced by one that fits.
        using (var c = staging.Take([30, 40], ScalarType.Float16))
        {
            Assert.Equal(1200, c.numel());
            c.fill_(5);
            Assert.Equal(6000f, c.sum().to(ScalarType.Float32).item<float>());
        }
        using (var d = staging.Take([30, 40], ScalarType.Float32))
        {
            Assert.Equal(ScalarType.Float32, d.dtype);
            Assert.Equal([30L, 40L], d.shape);
        }
        staging.Dispose();
        Assert.Throws<ObjectDisposedException>(() => staging.Take([1], ScalarType.Float16));
    }

    [Theory]
    [InlineData("int8")]
    [InlineData("nf4")]
    public async Task QuantizedWeightsThatStayGetNoHugePageAdvice(string quantization)
    {
        HugePageProbe.SkipUnlessAvailable();
        HugePageProbe.SaveFloat16Model(directory, layers: 2);
        // A float16 model first, as a host that switches models does: its matrices get huge pages, and when it is freed
        // glibc keeps that memory, advice and huge pages included, for the next allocations.
        using (await AutoModelForCausalLM.FromPretrainedAsync(directory, new ModelLoadOptions { TorchDtype = TorchDtype.Float16 }))
        {
        }
        var options = new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float16,
            QuantizationConfig = quantization == "int8"
                ? new QuantizationConfig { LoadIn8Bit = true }
                : new QuantizationConfig { LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4 },
        };

        using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory, options);

        var quantized = model.named_buffers().Where(b => b.name.EndsWith(".weight", StringComparison.Ordinal)
            && b.buffer.dtype is ScalarType.Int8 or ScalarType.Byte).ToList();
        Assert.Equal(2 * 4, quantized.Count);
        foreach (var (name, buffer) in quantized)
        {
            var (flags, _) = HugePageProbe.Around(buffer);
            // The 4-bit decode GEMV ran slower from huge pages, and so did ATen's int8 GEMM: the weights keep small pages.
            Assert.False(flags.Split(' ').Contains("hg"), $"{name} lies in a mapping advised for huge pages ({flags}).");
        }
    }

    [Theory]
    [InlineData(TorchDtype.BFloat16)]
    [InlineData(TorchDtype.Float32)]
    public async Task LargeWeightsStoredInAnotherDTypeConvertAsLibtorchDoes(TorchDtype dtype)
    {
        // The embedding and head (16,448 × 1024 float16, just over 32 MiB) take the buffer; the layer's matrices do not.
        var config = new GptNeoXConfig
        {
            VocabSize = 16448, HiddenSize = 1024, NumHiddenLayers = 1, NumAttentionHeads = 8, IntermediateSize = 4096,
            RotaryPct = 1.0, TorchDtype = "float16",
        };
        Assert.True(16448L * 1024 * 2 >= NativeHeap.OwnMappingBytes);
        using (var random = GptNeoXForCausalLM.CreateRandom(config, seed: 9, ScalarType.Float16))
            random.SavePretrained(directory);
        var target = dtype == TorchDtype.BFloat16 ? ScalarType.BFloat16 : ScalarType.Float32;

        using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory, new ModelLoadOptions { TorchDtype = dtype });

        using var checkpoint = ModelCheckpoint.Open(directory);
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var name in new[] { "gpt_neox.embed_in.weight", "embed_out.weight", "gpt_neox.layers.0.mlp.dense_h_to_4h.weight" })
        {
            using var expected = checkpoint.ReadTensor(name, target);
            Assert.Equal(target, parameters[name].dtype);
            Assert.True(parameters[name].eq(expected).all().item<bool>(), $"{name} differs from the checkpoint converted by libtorch.");
        }
    }
}
