using System.Text.Json;
using Rinna.Net.Checkpoint;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model;

/// <summary>Saving in HF layout: what is written must load back and reproduce Hugging Face's reference logits.</summary>
public sealed class SavePretrainedTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-save-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    [Fact]
    public async Task SavedFixtureModelReloadsAndMatchesHuggingFaceLogits()
    {
        using (var original = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna")))
            original.SavePretrained(directory);

        using var reference = new ReferenceModel("tiny-neox-rinna");
        using var reloaded = await AutoModelForCausalLM.FromPretrainedAsync(directory);
        var prompt = reference.Prompts.Single(p => p.GetProperty("name").GetString() == "len17");
        using var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
        using var output = reloaded.Forward(ids);
        TensorAssert.Close(reference.Tensor("prompts.len17.logits"), output.Logits[0], 1e-3, 1e-4, "saved tiny-neox-rinna");

        var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "config.json"))).RootElement;
        Assert.Equal("float32", config.GetProperty("torch_dtype").GetString());
        Assert.False(config.GetProperty("use_parallel_residual").GetBoolean());
        var generation = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "generation_config.json"))).RootElement;
        Assert.Equal(reloaded.Config.EosTokenId, generation.GetProperty("eos_token_id").GetInt32());
        Assert.Equal(reloaded.Config.BosTokenId, generation.GetProperty("bos_token_id").GetInt32());
        var weights = File.ReadAllBytes(Path.Combine(directory, "model.safetensors"));
        Assert.Equal(0, (8 + BitConverter.ToInt64(weights, 0)) % 8);
        using (var file = SafetensorsFile.Open(Path.Combine(directory, "model.safetensors")))
            Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal(["config.json", "generation_config.json", "model.safetensors"],
            Directory.GetFiles(directory).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task HalfPrecisionSaveStoresFloat16AndRecordsTheDtype()
    {
        using (var original = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna")))
            original.SavePretrained(directory, ScalarType.Float16);

        using var file = SafetensorsFile.Open(Path.Combine(directory, "model.safetensors"));
        Assert.All(file.Entries, e => Assert.Equal(ScalarType.Float16, e.DType));
        using var fixture = SafetensorsFile.Open(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "model.safetensors"));
        var expectedNames = GptNeoXForCausalLM.ExpectedParameterShapes(GptNeoXConfig.FromFile(Path.Combine(directory, "config.json"))).Keys;
        Assert.Equal(expectedNames.Order(StringComparer.Ordinal), file.Entries.Select(e => e.Name).Order(StringComparer.Ordinal));
        using var stored = file.ReadTensor("gpt_neox.embed_in.weight", ScalarType.Float32);
        using var source = fixture.ReadTensor("gpt_neox.embed_in.weight", ScalarType.Float32);
        Assert.True(stored.allclose(source, rtol: 1e-3, atol: 1e-4), "float16 copy differs from the source beyond float16 rounding");
        Assert.Contains("\"torch_dtype\": \"float16\"", File.ReadAllText(Path.Combine(directory, "config.json")));
    }
}
