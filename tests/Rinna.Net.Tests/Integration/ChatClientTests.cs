using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Rinna.Net.Generation;
using Rinna.Net.Integration;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Tests.Integration;

public sealed class ChatClientTests : IDisposable
{
    private readonly TinyChatModel tiny = new();

    public void Dispose() => tiny.Dispose();

    private ServiceProvider Services(Action<RinnaOptions>? configure = null)
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddRinna(o =>
        {
            o.ModelId = tiny.Directory;
            o.ChatFormat = RinnaChatFormat.Bilingual;
            o.DoSample = false;
            o.MaxNewTokens = 12;
            o.RepetitionPenalty = 1.0;
            configure?.Invoke(o);
        });
        return services.BuildServiceProvider();
    }

    [Fact]
    public async Task ChatClientAnswersWithTheGreedyContinuationOfTheRinnaPrompt()
    {
        await using var provider = Services();
        var chat = provider.GetRequiredService<IChatClient>();
        var response = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "こんにちは")]);

        // The same continuation computed by hand: the card's prompt, encoded without special tokens, greedy, on a model
        // of its own (the host's model would run Generate in the host's scheduler too).
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(tiny.Directory);
        var tokenizer = provider.GetRequiredService<PreTrainedTokenizer>();
        var expected = model.GenerateText(tokenizer, "ユーザー: こんにちは\nシステム: ",
            new GenerationConfig { MaxNewTokens = 12, EosTokenId = [3], PadTokenId = 0, StopStrings = ["ユーザー:", "システム:"] });
        Assert.Equal(expected.FinishReason == Rinna.Net.Generation.FinishReason.StopString ? expected.Text.TrimEnd() : expected.Text, response.Text);
        Assert.Equal(ChatRole.Assistant, response.Messages.Single().Role);
        Assert.Equal(expected.PromptTokens, response.Usage!.InputTokenCount);
        Assert.Equal(expected.TokenIds.Count, response.Usage.OutputTokenCount);
        Assert.Equal(expected.FinishReason == Rinna.Net.Generation.FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop, response.FinishReason);
    }

    [Fact]
    public async Task StreamingUpdatesConcatenateToTheFullAnswer()
    {
        await using var provider = Services(o => o.MaxNewTokens = 24);
        var chat = provider.GetRequiredService<IChatClient>();
        ChatMessage[] conversation = [new(ChatRole.User, "Hello"), new(ChatRole.Assistant, "やあ"), new(ChatRole.User, "猫について教えて")];
        var whole = await chat.GetResponseAsync(conversation);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in chat.GetStreamingResponseAsync(conversation)) updates.Add(update);
        Assert.Equal(whole.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.True(updates.Count > 1);
        Assert.NotNull(updates[^1].FinishReason);
    }

    [Fact]
    public async Task OptionsMapToGenerationSettings()
    {
        await using var provider = Services();
        var client = (RinnaChatClient)provider.GetRequiredService<IChatClient>();
        var config = client.ToGenerationConfig(new ChatOptions
        {
            Temperature = 0.5f, TopP = 0.9f, TopK = 7, MaxOutputTokens = 33, StopSequences = ["。"], Seed = 42,
            AdditionalProperties = new() { ["repetition_penalty"] = 1.2 },
        }, eosTokenId: 3, padTokenId: 0);
        Assert.True(config.DoSample);
        Assert.Equal(0.5, config.Temperature, 6);
        Assert.Equal(0.9, config.TopP, 6);
        Assert.Equal(7, config.TopK);
        Assert.Equal(33, config.MaxNewTokens);
        Assert.Equal(["。"], config.StopStrings!);
        Assert.Equal(42, config.Seed);
        Assert.Equal(1.2, config.RepetitionPenalty, 6);
        Assert.Equal([3], config.EosTokenId!);

        Assert.False(client.ToGenerationConfig(new ChatOptions { Temperature = 0 }, 3, 0).DoSample);
        Assert.Throws<NotSupportedException>(() => client.ToGenerationConfig(new ChatOptions { FrequencyPenalty = 0.5f }, 3, 0));
        Assert.Throws<NotSupportedException>(() => client.ToGenerationConfig(new ChatOptions { PresencePenalty = 0.5f }, 3, 0));
        Assert.Throws<NotSupportedException>(() => client.ToGenerationConfig(new ChatOptions { ResponseFormat = ChatResponseFormat.Json }, 3, 0));
        Assert.Throws<ArgumentException>(() => client.ToGenerationConfig(new ChatOptions { Temperature = 0.5f, TopP = 1.5f }, 3, 0));
    }

    [Fact]
    public async Task SystemMessagesGoBeforeTheFirstUserUtterance()
    {
        await using var provider = Services();
        var client = (RinnaChatClient)provider.GetRequiredService<IChatClient>();
        var (prompt, _) = await client.PrepareAsync([new(ChatRole.System, "丁寧に答えて"), new(ChatRole.User, "質問")], null, default);
        Assert.Equal("ユーザー: 丁寧に答えて\n質問\nシステム: ", prompt);
        await Assert.ThrowsAsync<NotSupportedException>(() => client.PrepareAsync([new(ChatRole.Tool, "x")], null, default));
        await Assert.ThrowsAsync<ArgumentException>(() => client.PrepareAsync([new(ChatRole.Assistant, "x")], null, default));
    }

    [Fact]
    public async Task StopSequencesEndTheAnswerBeforeTheStopText()
    {
        await using var provider = Services(o => o.MaxNewTokens = 40);
        var chat = provider.GetRequiredService<IChatClient>();
        var free = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "hello")]);
        Assert.True(free.Text.Length > 4, "the free answer is too short to pick a stop string from");
        var stop = free.Text.Substring(free.Text.Length / 2, 2);
        var stopped = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "hello")], new ChatOptions { StopSequences = [stop] });
        Assert.Equal(free.Text[..free.Text.IndexOf(stop, StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
    }

    [Fact]
    public async Task CancellationThrowsAndLeavesTheClientUsable()
    {
        await using var provider = Services(o => o.MaxNewTokens = 200);
        var chat = provider.GetRequiredService<IChatClient>();
        var shortAnswer = new ChatOptions { MaxOutputTokens = 3 };
        var before = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "hi")], shortAnswer);
        using var cts = new CancellationTokenSource();
        int pieces = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in chat.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, "長い話をして")], cancellationToken: cts.Token))
                if (++pieces == 2) cts.Cancel();
        });
        // Greedy decoding: the cancelled request must leave nothing behind that changes the next answer.
        var after = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "hi")], shortAnswer);
        Assert.Equal(before.Text, after.Text);
        Assert.Equal(before.Usage!.OutputTokenCount, after.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task ConcurrentRequestsShareTheBatchAndGetTheSequentialAnswers()
    {
        await using var provider = Services(o => o.MaxNewTokens = 24);
        var chat = provider.GetRequiredService<IChatClient>();
        string[] questions = ["一", "two", "三つ目", "four", "五番目の質問です"];
        var sequential = new List<string>();
        foreach (var q in questions) sequential.Add((await chat.GetResponseAsync([new ChatMessage(ChatRole.User, q)])).Text);
        var parallel = await Task.WhenAll(questions.Select(q => chat.GetResponseAsync([new ChatMessage(ChatRole.User, q)])));
        var streamed = await Task.WhenAll(questions.Select(async q =>
        {
            var text = "";
            await foreach (var update in chat.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, q)])) text += update.Text;
            return text;
        }));
        Assert.Equal(sequential, parallel.Select(r => r.Text));
        Assert.Equal(sequential, streamed);
        var scheduler = await provider.GetRequiredService<RinnaModelHost>().GetSchedulerAsync();
        Assert.Equal(ContinuousBatchingScheduler.DefaultMaxBatchSize, scheduler.MaxBatchSize);
    }

    /// <summary>
    /// <c>Generate</c> on the host's model, with a batch, runs in the host's scheduler beside its chats (one loop for the
    /// model) and returns what the same batch gives on a model of its own.
    /// </summary>
    [Fact]
    public async Task GenerateOnTheHostsModelRunsInTheHostsScheduler()
    {
        await using var provider = Services(o => o.MaxNewTokens = 24);
        var model = provider.GetRequiredService<GptNeoXForCausalLM>();
        var chat = provider.GetRequiredService<IChatClient>();
        using var ids = TorchSharp.torch.tensor(new long[] { 0, 0, 5, 6, 7, 8, 9, 10 }, [2, 4], TorchSharp.torch.ScalarType.Int64);
        using var mask = TorchSharp.torch.tensor(new long[] { 0, 0, 1, 1, 1, 1, 1, 1 }, [2, 4], TorchSharp.torch.ScalarType.Int64);
        var config = new GenerationConfig { MaxNewTokens = 20, EosTokenId = null, DoSample = true, Seed = 3, PadTokenId = 0 };
        using var own = await AutoModelForCausalLM.FromPretrainedAsync(tiny.Directory);
        var expected = own.Generate(ids, config, mask);
        expected.Sequences.Dispose();

        var answers = Task.WhenAll(Enumerable.Range(0, 3).Select(i => chat.GetResponseAsync([new ChatMessage(ChatRole.User, $"質問 {i}")])));
        var output = await Task.Run(() => model.Generate(ids, config, mask));
        output.Sequences.Dispose();
        await answers;

        Assert.Equal(expected.Rows.Select(r => r.TokenIds), output.Rows.Select(r => r.TokenIds));
        Assert.Equal(1, (await provider.GetRequiredService<RinnaModelHost>().GetSchedulerAsync()).BatchRequests);
    }

    [Fact]
    public async Task DisposingTheHostStopsTheBatchWithoutWaitingForItsRequests()
    {
        var provider = Services(o => o.MaxNewTokens = 200);
        var chat = provider.GetRequiredService<IChatClient>();
        var host = provider.GetRequiredService<RinnaModelHost>();
        var firstPiece = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var streaming = Task.Run(async () =>
        {
            await foreach (var update in chat.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, "長い話をして")]))
                if (update.Text.Length > 0) firstPiece.TrySetResult();
        });
        await firstPiece.Task;
        await provider.DisposeAsync();

        // The stream either ended before the loop stopped or fails with the documented exception; it never hangs.
        var error = await Record.ExceptionAsync(() => streaming);
        Assert.True(error is null or ObjectDisposedException, $"unexpected {error}");
        await Assert.ThrowsAsync<ObjectDisposedException>(() => host.GetSchedulerAsync());
        Assert.Throws<ArgumentException>(() => new RinnaModelHost(Microsoft.Extensions.Options.Options.Create(
            new RinnaOptions { ModelId = tiny.Directory, MaxBatchSize = 0 })));
    }

    [Fact]
    public async Task HostBindsOptionsFromConfigurationAndDisposesTheModel()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Rinna:ModelId"] = tiny.Directory,
            ["Rinna:ChatFormat"] = "Bilingual",
            ["Rinna:LoadOnStart"] = "true",
            ["Rinna:MaxNewTokens"] = "5",
            ["Rinna:DoSample"] = "false",
        });
        builder.Services.AddRinna(builder.Configuration.GetSection("Rinna"));
        GptNeoXForCausalLM model;
        using (var host = builder.Build())
        {
            await host.StartAsync();
            var rinna = host.Services.GetRequiredService<RinnaModelHost>();
            Assert.Equal(5, rinna.Options.MaxNewTokens);
            model = (await rinna.GetAsync()).Model;
            var response = await host.Services.GetRequiredService<IChatClient>().GetResponseAsync([new ChatMessage(ChatRole.User, "hi")]);
            Assert.True(response.Usage!.OutputTokenCount <= 5);
            await host.StopAsync();
        }
        Assert.ThrowsAny<InvalidOperationException>(() => model.Forward(TorchSharp.torch.tensor(new long[] { 5 }).unsqueeze(0)));
    }

    [Fact]
    public void MissingModelIdIsAClearError()
    {
        var services = new ServiceCollection().AddRinna(_ => { }).BuildServiceProvider();
        var ex = Assert.Throws<ArgumentException>(() => services.GetRequiredService<RinnaModelHost>());
        Assert.Contains("ModelId", ex.Message);
    }

    [Theory]
    [InlineData("abc")]
    [InlineData("[1.1]")]
    [InlineData("NaN")]
    public async Task ARepetitionPenaltyThatIsNotANumberIsRefusedNamingIt(string json)
    {
        await using var provider = Services();
        var client = (RinnaChatClient)provider.GetRequiredService<IChatClient>();
        var value = json == "abc" ? (object)"abc" : System.Text.Json.JsonDocument.Parse(json == "NaN" ? "\"NaN\"" : json).RootElement.Clone();
        var options = new ChatOptions { AdditionalProperties = new() { ["repetition_penalty"] = value } };
        var error = Assert.Throws<ArgumentException>(() => client.ToGenerationConfig(options, 3, 0));
        Assert.Contains("repetition_penalty", error.Message);
    }

    [Fact]
    public async Task AdditionalPropertiesAcceptJsonAndTextValues()
    {
        await using var provider = Services();
        var client = (RinnaChatClient)provider.GetRequiredService<IChatClient>();
        var options = new ChatOptions
        {
            AdditionalProperties = new()
            {
                ["repetition_penalty"] = System.Text.Json.JsonDocument.Parse("1.25").RootElement.Clone(),
                ["do_sample"] = "true",
            },
        };
        var config = client.ToGenerationConfig(options, 3, 0);
        Assert.Equal(1.25, config.RepetitionPenalty);
        Assert.True(config.DoSample);
    }

    [Fact]
    public async Task ANearZeroTemperatureSamplesTheGreedyAnswer()
    {
        await using var provider = Services(o => o.DoSample = true);
        var chat = provider.GetRequiredService<IChatClient>();
        ChatMessage[] question = [new(ChatRole.User, "こんにちは")];
        var sampled = await chat.GetResponseAsync(question, new ChatOptions { Temperature = 1e-38f });
        var greedy = await chat.GetResponseAsync(question, new ChatOptions { Temperature = 0 });
        Assert.Equal(greedy.Text, sampled.Text);
    }
}
