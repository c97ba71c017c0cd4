using Rinna.Net.Tests.Integration;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Tests.Generation;

public sealed class TextGenerationTests : IAsyncLifetime
{
    private readonly TinyChatModel tiny = new();
    private GptNeoXForCausalLM model = null!;
    private PreTrainedTokenizer tokenizer = null!;

    public async ValueTask InitializeAsync()
    {
        model = await AutoModelForCausalLM.FromPretrainedAsync(tiny.Directory);
        tokenizer = await AutoTokenizer.FromPretrainedAsync(tiny.Directory, new TokenizerOptions { UseFast = false });
    }

    public ValueTask DisposeAsync()
    {
        model.Dispose();
        tiny.Dispose();
        return ValueTask.CompletedTask;
    }

    [Theory]
    [InlineData("吾輩は猫である。名前はまだ無い。")]
    [InlineData("ユーザー: 日本の首都は?\nシステム: ")]
    [InlineData("Hello world, こんにちは 🐈")]
    public async Task StreamedPiecesConcatenateToTheWholeText(string prompt)
    {
        var config = new GenerationConfig { MaxNewTokens = 40 };
        var whole = model.GenerateText(tokenizer, prompt, config);
        var pieces = new List<string>();
        await foreach (var piece in model.GenerateTextStreamingAsync(tokenizer, prompt, config)) pieces.Add(piece);
        Assert.Equal(whole.Text, string.Concat(pieces));
        Assert.Equal(tokenizer.Decode(whole.TokenIds, skipSpecialTokens: true), whole.Text);
    }

    [Fact]
    public void SeededSamplingIsReproducible()
    {
        var config = new GenerationConfig { MaxNewTokens = 20, DoSample = true, Temperature = 0.9, Seed = 1234 };
        var a = model.GenerateText(tokenizer, "猫", config);
        var b = model.GenerateText(tokenizer, "猫", config);
        var c = model.GenerateText(tokenizer, "猫", config with { Seed = 99 });
        Assert.Equal(a.TokenIds, b.TokenIds);
        Assert.NotEqual(a.TokenIds, c.TokenIds);
    }

    [Fact]
    public void BadPromptsAreClearErrors()
    {
        Assert.Throws<ArgumentException>(() => model.GenerateText(tokenizer, ""));
        Assert.True(tokenizer.Encode(string.Concat(Enumerable.Repeat("猫 ", model.Config.MaxPositionEmbeddings)), false).Length >= model.Config.MaxPositionEmbeddings);
        var tooLong = string.Concat(Enumerable.Repeat("猫 ", model.Config.MaxPositionEmbeddings));
        var ex = Assert.Throws<ArgumentException>(() => model.GenerateText(tokenizer, tooLong));
        Assert.Contains("max_position_embeddings", ex.Message);
        Assert.Throws<ArgumentException>(() => model.GenerateText(tokenizer, "猫", new GenerationConfig { DoSample = true, Temperature = 0 }));
        Assert.Throws<ArgumentException>(() => model.GenerateText(tokenizer, "猫", new GenerationConfig { DoSample = true, TopP = -0.1 }));
    }

    [Fact]
    public void CancellationStopsWithinOneStep()
    {
        using var cts = new CancellationTokenSource();
        int steps = 0;
        using var ids = TorchSharp.torch.tensor(tokenizer.Encode("猫", false).Select(i => (long)i).ToArray()).unsqueeze(0);
        var output = model.Generate(ids, new GenerationConfig { MaxNewTokens = 100 }, onStep: _ =>
        {
            if (++steps == 5) cts.Cancel();
        }, cancellationToken: cts.Token);
        output.Sequences.Dispose();
        Assert.Equal(5, output.Rows[0].TokenIds.Count);
        Assert.Equal(Rinna.Net.Generation.FinishReason.Cancelled, output.Rows[0].FinishReason);
    }
}
