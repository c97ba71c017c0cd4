using Rinna.Net.Checkpoint;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

/// <summary>
/// load_in_4bit on the reference fixtures: the 4-bit model must compute what a float32 model computes with the
/// dequantized weights in place of its linear weights (bitsandbytes' Linear4bit is exactly that product).
/// </summary>
public class Bnb4BitModelTests
{
    public static TheoryData<string, string, bool> Cases
    {
        get
        {
            var data = new TheoryData<string, string, bool>();
            // tiny-neox-pythia has hidden size 96: blocks of 64 straddle rows there.
            foreach (var fixture in new[] { "tiny-neox-pythia", "tiny-neox-rinna", "tiny-neox-rinna-fp16" })
                foreach (var (type, dq) in new[] { (Bnb4BitQuantization.Nf4, false), (Bnb4BitQuantization.Nf4, true), (Bnb4BitQuantization.Fp4, false) })
                    data.Add(fixture, type, dq);
            data.Add("tiny-neox-pythia", Bnb4BitQuantization.Fp4, true);
            return data;
        }
    }

    private static Task<GptNeoXForCausalLM> Load(string fixture, string quantType, bool doubleQuant) =>
        AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture), new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float32,
            QuantizationConfig = new QuantizationConfig { LoadIn4Bit = true, Bnb4BitQuantType = quantType, Bnb4BitUseDoubleQuant = doubleQuant },
        });

    /// <summary>The fixture in float32 with every 4-bit layer's dequantized weight copied over the float weight.</summary>
    private static async Task<GptNeoXForCausalLM> DequantizedTwin(string fixture, GptNeoXForCausalLM quantized)
    {
        var twin = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture), new ModelLoadOptions { TorchDtype = TorchDtype.Float32 });
        var parameters = twin.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        int replaced = 0;
        using (no_grad())
        {
            foreach (var (name, module) in quantized.named_modules())
            {
                if (module is not Bnb4BitLinear layer) continue;
                using var dense = layer.DequantizeWeight();
                parameters[name + ".weight"].copy_(dense);
                replaced++;
            }
        }
        Assert.Equal(4 * quantized.Config.NumHiddenLayers, replaced);
        return twin;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task LogitsEqualAFloat32ModelWithTheDequantizedWeights(string fixture, string quantType, bool doubleQuant)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await Load(fixture, quantType, doubleQuant);
        using var twin = await DequantizedTwin(fixture, model);
        foreach (var prompt in reference.Prompts)
        {
            using var scope = NewDisposeScope();
            var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
            // The prompt (several rows: dequantize + matmul) ...
            using var expected = twin.Forward(ids, useCache: true);
            using var actual = model.Forward(ids, useCache: true);
            TensorAssert.WithinFloat32Rounding(expected.Logits, actual.Logits, $"{fixture} {quantType} dq={doubleQuant} prompt {prompt.GetProperty("name")}");
            // ... then one decode step on the cache (one row: the 4-bit GEMV).
            var next = expected.Logits[0, -1].argmax().reshape(1, 1);
            using var expectedStep = twin.Forward(next, pastKeyValues: expected.PastKeyValues);
            using var actualStep = model.Forward(next, pastKeyValues: actual.PastKeyValues);
            TensorAssert.WithinFloat32Rounding(expectedStep.Logits, actualStep.Logits, $"{fixture} {quantType} dq={doubleQuant} decode after {prompt.GetProperty("name")}");
        }
    }

    [Fact]
    public async Task Nf4LogitsStayNearTheFloat32Reference()
    {
        // 4-bit rounding moves these tiny models' logits by a few percent (int8: 1-3 %); a wrong layout, code book or
        // scale gives errors of order 100 %.
        using var reference = new ReferenceModel("tiny-neox-rinna");
        using var model = await Load("tiny-neox-rinna", Bnb4BitQuantization.Nf4, doubleQuant: false);
        foreach (var prompt in reference.Prompts)
        {
            using var scope = NewDisposeScope();
            var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
            using var output = model.Forward(ids, lastPositionOnly: true);
            var error = TensorAssert.RelativeL2(reference.Tensor(prompt.GetProperty("last_logits_tensor").GetString()!), output.Logits[0, 0]);
            Assert.True(error <= 0.25, $"NF4 relative L2 {error:P1}");
        }
    }

    [Fact]
    public async Task GreedyGenerationRunsAndQuantizedLayersTakeUnderSixTenthsOfAByteEach()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-pythia"),
            new ModelLoadOptions { LoadIn4Bit = true, QuantizationConfig = new QuantizationConfig { Bnb4BitQuantType = Bnb4BitQuantization.Nf4 } });
        var layers = model.modules().OfType<Bnb4BitLinear>().ToList();
        Assert.Equal(4 * model.Config.NumHiddenLayers, layers.Count); // not embed_out
        Assert.All(layers, l => Assert.Equal(Bnb4BitQuantization.Nf4, l.QuantType));
        long parameters = layers.Sum(l => l.InFeatures * l.OutFeatures);
        long bytes = layers.Sum(l => l.Weight.NumberOfElements * l.Weight.ElementSize + l.Absmax.NumberOfElements * l.Absmax.ElementSize);
        Assert.True(bytes <= 0.6 * parameters, $"{bytes} bytes for {parameters} quantized parameters");
        Assert.Equal(ScalarType.Float32, model.named_parameters().Single(p => p.name == "embed_out.weight").parameter.dtype);

        using var ids = tensor(new long[] { 2, 17, 40, 5 }, ScalarType.Int64).unsqueeze(0);
        var output = model.Generate(ids, new GenerationConfig { MaxNewTokens = 8 });
        output.Sequences.Dispose();
        Assert.Equal(8, output.Rows[0].TokenIds.Count);
    }

    [Fact]
    public async Task ComputeDtypeBFloat16StillMatchesTheDequantizedWeightsClosely()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), new ModelLoadOptions
        {
            QuantizationConfig = new QuantizationConfig { LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4, Bnb4BitComputeDtype = TorchDtype.BFloat16 },
        });
        Assert.All(model.modules().OfType<Bnb4BitLinear>(), l => Assert.Equal(ScalarType.BFloat16, l.ComputeDType));
        using var twin = await DequantizedTwin("tiny-neox-rinna", model);
        using var ids = tensor(new long[] { 2, 17, 40, 5, 99, 3 }, ScalarType.Int64).unsqueeze(0);
        using var expected = twin.Forward(ids);
        using var actual = model.Forward(ids);
        Assert.True(TensorAssert.RelativeL2(expected.Logits, actual.Logits) <= 0.02);
    }

    [Fact]
    public async Task EightAndFourBitTogetherAreRefusedNamingBoth()
    {
        var error = await Assert.ThrowsAsync<ArgumentException>(() => AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"),
            new ModelLoadOptions { LoadIn8Bit = true, LoadIn4Bit = true }));
        Assert.Contains("LoadIn8Bit", error.Message);
        Assert.Contains("LoadIn4Bit", error.Message);
    }

    [Fact]
    public async Task PreQuantizedCheckpointsAreRefusedWithACheckpointException()
    {
        var directory = Directory.CreateTempSubdirectory("rinna-4bit-").FullName;
        try
        {
            var source = Fixtures.Model("tiny-neox-rinna");
            foreach (var file in Directory.GetFiles(source).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal)))
                File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
            using (var checkpoint = ModelCheckpoint.Open(source))
            {
                var tensors = checkpoint.Entries.Keys.ToDictionary(name => name, name =>
                {
                    var t = empty(checkpoint.Entries[name].Shape, checkpoint.Entries[name].DType);
                    checkpoint.ReadInto(name, t);
                    return t;
                });
                tensors["gpt_neox.layers.0.mlp.dense_h_to_4h.weight.quant_state.bitsandbytes__nf4"] = zeros(8, dtype: ScalarType.Byte);
                SafetensorsWriter.Save(Path.Combine(directory, "model.safetensors"), tensors);
                foreach (var t in tensors.Values) t.Dispose();
            }
            var error = await Assert.ThrowsAsync<CheckpointException>(() => AutoModelForCausalLM.FromPretrainedAsync(directory, new ModelLoadOptions()));
            Assert.Contains("quant_state.bitsandbytes__nf4", error.Message);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
