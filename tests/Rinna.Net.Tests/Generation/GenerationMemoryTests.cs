using System.Text.Json.Nodes;
using Rinna.Net.Generation;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>The KV cache follows what is generated, not what a request asks for; a request past the context is clamped.</summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class GenerationMemoryTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-scaled-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    [Fact]
    public async Task AOneTokenAnswerAllocatesTheSameWhateverMaxNewTokensSays()
    {
        // Dynamic RoPE scaling lets the model run past max_position_embeddings, so nothing clamps the request: a cache
        // sized by it would be 1e6 positions × 2 layers × 64 × 8 bytes ≈ 1 GB.
        foreach (var file in Directory.GetFiles(Fixtures.Model("tiny-neox-rinna")))
            File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(directory, "config.json")))!.AsObject();
        config["rope_scaling"] = new JsonObject { ["type"] = "dynamic", ["factor"] = 2.0 };
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString());
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory);
        using var prompt = tensor(new long[] { 17, 301, 45, 99, 512 }).unsqueeze(0);
        int first;
        using (var probe = model.Generate(prompt, new GenerationConfig { MaxNewTokens = 1 }).Sequences) first = (int)probe[0, 5].item<long>();

        long Peak(int maxNewTokens)
        {
            ProcessMemory.ResetPeak();
            long before = ProcessMemory.ResidentBytes;
            // The first new token is the end-of-sequence id, so every answer is one token long.
            using var output = model.Generate(prompt, new GenerationConfig { MaxNewTokens = maxNewTokens, EosTokenId = [first] }).Sequences;
            Assert.Equal(6, output.shape[1]);
            return ProcessMemory.PeakResidentBytes - before;
        }
        long small = Peak(16), huge = Peak(1_000_000);
        Assert.True(huge < small + (32L << 20), $"a 1-token answer grew the peak by {huge >> 20} MiB with MaxNewTokens = 1e6, {small >> 20} MiB with 16");
    }

    [Fact]
    public async Task ARequestPastTheContextIsClampedToIt()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        using var prompt = tensor(new long[] { 17, 301, 45, 99, 512 }).unsqueeze(0);
        var output = model.Generate(prompt, new GenerationConfig { MaxNewTokens = 1_000_000 });
        using var sequences = output.Sequences;
        Assert.Equal(model.Config.MaxPositionEmbeddings, sequences.shape[1]);
        Assert.Equal(FinishReason.Length, output.Rows[0].FinishReason);
    }

    [Fact]
    public async Task MaxCacheBytesCutsTheAnswerWhereTheCacheWouldExceedIt()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var c = model.Config;
        long perToken = (long)c.NumHiddenLayers * c.HiddenSize * (sizeof(float) + (model.ComputeDType == ScalarType.Float32 ? 4 : 2));
        using var prompt = tensor(new long[] { 17, 301, 45, 99, 512 }).unsqueeze(0);
        var greedy = new GenerationConfig { MaxNewTokens = 40 };
        using var full = model.Generate(prompt, greedy).Sequences;
        Assert.True(full.shape[1] > 12, "the greedy answer must be longer than the budget allows for this test to cut it");
        // Room for the prompt and 7 new tokens: the answer is the greedy answer's first 7 tokens.
        var output = model.Generate(prompt, greedy with { MaxCacheBytes = (5 + 7) * perToken + perToken / 2 });
        Assert.Equal(5 + 7, output.Sequences.shape[1]);
        Assert.True(full.narrow(1, 0, 12).eq(output.Sequences).all().item<bool>());
        Assert.Equal(FinishReason.Length, output.Rows[0].FinishReason);
        output.Sequences.Dispose();

        var ex = Assert.Throws<ArgumentException>(() => model.Generate(prompt, greedy with { MaxCacheBytes = 5 * perToken }));
        Assert.Contains("MaxCacheBytes", ex.Message);
        Assert.Throws<ArgumentException>(() => model.Generate(prompt, greedy with { MaxCacheBytes = 0 }));
    }
}
