using System.Text.Json;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Tests.Integration;

/// <summary>
/// The pythia-style model fixture with GPT-NeoX's <c>tokenizer.json</c> in one directory, as a pythia checkpoint ships:
/// text in, text out through the fast tokenizer. The fixture model has 1,024 ids, so the prompt is the reference
/// run's one-token prompt (id 553, "ime"), whose greedy continuation transformers recorded.
/// </summary>
public sealed class FastTokenizerGenerationTests : IAsyncLifetime
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-pythia-fast-").FullName;
    private GptNeoXForCausalLM model = null!;
    private PreTrainedTokenizer tokenizer = null!;

    public async ValueTask InitializeAsync()
    {
        foreach (var file in Directory.GetFiles(Fixtures.Model("tiny-neox-pythia")).Where(f => !Path.GetFileName(f).StartsWith("expected", StringComparison.Ordinal)))
            File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
        foreach (var file in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(Fixtures.Tokenizer("gpt-neox-bpe"), file), Path.Combine(directory, file));
        model = await AutoModelForCausalLM.FromPretrainedAsync(directory);
        tokenizer = await AutoTokenizer.FromPretrainedAsync(directory);
    }

    public ValueTask DisposeAsync()
    {
        model.Dispose();
        Directory.Delete(directory, recursive: true);
        return ValueTask.CompletedTask;
    }

    [Fact]
    public async Task GreedyTextGenerationMatchesTransformers()
    {
        using var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(Fixtures.Model("tiny-neox-pythia"), "expected.json")));
        var prompt = expected.RootElement.GetProperty("prompts").EnumerateArray().First(p => p.GetProperty("name").GetString() == "len1");
        var greedy = expected.RootElement.GetProperty("greedy").EnumerateArray().First(g => g.GetProperty("prompt").GetString() == "len1");
        var promptIds = prompt.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var newTokens = greedy.GetProperty("new_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();

        Assert.IsType<PreTrainedTokenizerFast>(tokenizer);
        var text = tokenizer.Decode(promptIds);
        Assert.Equal("ime", text);
        Assert.Equal(promptIds, tokenizer.Encode(text, addSpecialTokens: false));

        var config = new GenerationConfig { MaxNewTokens = newTokens.Length, DoSample = false };
        var result = model.GenerateText(tokenizer, text, config);
        Assert.Equal(newTokens, result.TokenIds);
        Assert.Equal(1, result.PromptTokens);
        Assert.Equal(tokenizer.Decode(newTokens, skipSpecialTokens: true), result.Text);

        var pieces = new List<string>();
        await foreach (var piece in model.GenerateTextStreamingAsync(tokenizer, text, config)) pieces.Add(piece);
        Assert.Equal(result.Text, string.Concat(pieces));
    }
}
