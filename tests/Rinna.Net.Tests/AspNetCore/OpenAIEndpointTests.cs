using System.ClientModel;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenAI;
using OpenAI.Chat;
using Rinna.Net.AspNetCore;
using Rinna.Net.Integration;

namespace Rinna.Net.Tests.AspNetCore;

/// <summary>The OpenAI-compatible endpoint on the demo model, driven by OpenAI's own .NET client and by raw HTTP.</summary>
public sealed class OpenAIEndpointTests : IAsyncLifetime
{
    private const string Question = "日本の首都はどこですか?";
    private WebApplication app = null!;
    private HttpClient http = null!;
    private readonly ConcurrentQueue<string> logs = new();

    public async ValueTask InitializeAsync()
    {
        app = await StartAsync(Fixtures.DemoModel, logs);
        http = new HttpClient { BaseAddress = new Uri(Address(app)), Timeout = TimeSpan.FromMinutes(2) };
    }

    public async ValueTask DisposeAsync()
    {
        http.Dispose();
        await app.DisposeAsync();
    }

    internal static async Task<WebApplication> StartAsync(string modelId, ConcurrentQueue<string> logs)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders().AddProvider(new QueueLoggerProvider(logs));
        builder.WebHost.UseKestrel(options => options.Listen(IPAddress.Loopback, 0));
        builder.Services.AddRinna(o =>
        {
            o.ModelId = modelId;
            o.TorchDtype = TorchDtype.Float32;
            o.MaxNewTokens = 24;
            o.LoadRetryDelay = TimeSpan.Zero;
        });
        builder.Services.AddHealthChecks().AddRinnaModel();
        var app = builder.Build();
        app.MapOpenAIChatCompletions(configure: o => o.MaxRequestBodySize = 16 * 1024);
        app.MapHealthChecks("/health");
        await app.StartAsync(TestContext.Current.CancellationToken);
        return app;
    }

    internal static string Address(WebApplication app) =>
        app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();

    private ChatClient OpenAIChat() => new("rinna-demo", new ApiKeyCredential("not-needed"),
        new OpenAIClientOptions { Endpoint = new Uri(Address(app) + "/v1"), NetworkTimeout = TimeSpan.FromMinutes(2) });

    private async Task<string> DirectAnswerAsync(int maxTokens)
    {
        var client = app.Services.GetRequiredService<IChatClient>();
        var response = await client.GetResponseAsync([new Microsoft.Extensions.AI.ChatMessage(ChatRole.User, Question)],
            new ChatOptions { Temperature = 0, MaxOutputTokens = maxTokens }, TestContext.Current.CancellationToken);
        return response.Text;
    }

    [Fact]
    public async Task TheOpenAIClientStreamsTheModelsGreedyAnswer()
    {
        var text = new StringBuilder();
        OpenAI.Chat.ChatFinishReason? finish = null;
        int updates = 0;
        await foreach (var update in OpenAIChat().CompleteChatStreamingAsync([new UserChatMessage(Question)],
                           new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 20 }, TestContext.Current.CancellationToken))
        {
            updates++;
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            finish = update.FinishReason ?? finish;
        }
        var expected = await DirectAnswerAsync(20);
        Assert.False(string.IsNullOrWhiteSpace(expected));
        Assert.Equal(expected, text.ToString());
        Assert.True(updates > 3, $"the answer arrived in {updates} updates, not streamed");
        Assert.NotNull(finish);
    }

    [Fact]
    public async Task TheOpenAIClientGetsTheWholeAnswerWithUsage()
    {
        ChatCompletion completion = await OpenAIChat().CompleteChatAsync([new SystemChatMessage("短く答えてください。"), new UserChatMessage(Question)],
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 12 }, TestContext.Current.CancellationToken);
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.False(string.IsNullOrWhiteSpace(completion.Content[0].Text));
        Assert.InRange(completion.Usage.OutputTokenCount, 1, 12);
        Assert.True(completion.Usage.InputTokenCount > 5);
        Assert.Equal("rinna-demo", completion.Model);
    }

    [Fact]
    public async Task ModelsListsTheServedModel()
    {
        using var document = JsonDocument.Parse(await http.GetStringAsync("/v1/models", TestContext.Current.CancellationToken));
        Assert.Equal("rinna-demo", document.RootElement.GetProperty("data")[0].GetProperty("id").GetString());
    }

    public static TheoryData<string, int, string?> BadRequests => new()
    {
        { "{not json", 400, null },
        { "[1, 2]", 400, null },
        { """{"model":"m"}""", 400, "messages" },
        { """{"messages":[]}""", 400, "messages" },
        { """{"messages":[{"role":"user","content":"hi"}],"n":2}""", 400, "n" },
        { """{"messages":[{"role":"user","content":"hi"}],"temperature":5}""", 400, "temperature" },
        { """{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}""", 400, "max_tokens" },
        { """{"messages":[{"role":"user","content":"hi"}],"stop":[1]}""", 400, "stop" },
        { """{"messages":[{"role":"tool","content":"hi"}]}""", 400, "messages[0].role" },
        { """{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}""", 400, "messages[0].content[0]" },
        { """{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}]}""", 400, "tools" },
        // The model's own checks: the conversation must end with the user, and OpenAI's penalties are not rinna's.
        { """{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}""", 400, null },
        { """{"messages":[{"role":"user","content":"hi"}],"frequency_penalty":0.5}""", 400, null },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task BadRequestsGetOpenAIErrorsNamingTheField(string body, int status, string? param)
    {
        foreach (bool stream in new[] { false, true })
        {
            var json = stream && body.StartsWith("{\"messages\"", StringComparison.Ordinal) ? body.Insert(1, "\"stream\":true,") : body;
            using var response = await PostAsync(json);
            Assert.Equal(status, (int)response.StatusCode);
            using var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
            var detail = error.RootElement.GetProperty("error");
            Assert.Equal("invalid_request_error", detail.GetProperty("type").GetString());
            Assert.False(string.IsNullOrEmpty(detail.GetProperty("message").GetString()));
            if (param is not null) Assert.Equal(param, detail.GetProperty("param").GetString());
        }
    }

    [Fact]
    public async Task ABodyOverTheLimitIsRefusedWith413()
    {
        var huge = JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = new string('あ', 20_000) } } });
        using var response = await PostAsync(huge);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
    }

    [Fact]
    public async Task AClientThatDisconnectsCancelsItsGenerationAndTheServerGoesOn()
    {
        // A client that drops the connection at once instead of draining the rest of the answer to reuse it.
        using var dropping = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = http.BaseAddress };
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
               {
                   Content = new StringContent($$"""{"messages":[{"role":"user","content":"{{Question}}"}],"stream":true,"max_tokens":2000,"temperature":0}""",
                       Encoding.UTF8, "application/json"),
               })
        using (var response = await dropping.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken));
            var first = await reader.ReadLineAsync(TestContext.Current.CancellationToken);
            Assert.StartsWith("data: {", first);
        }
        // The connection is gone: the server must notice, stop generating, and serve the next request.
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!logs.Any(l => l.Contains("client disconnected", StringComparison.Ordinal)) && DateTime.UtcNow < deadline)
            await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.Contains(logs, l => l.Contains("client disconnected", StringComparison.Ordinal));
        using var next = await PostAsync($$"""{"messages":[{"role":"user","content":"{{Question}}"}],"max_tokens":4}""");
        Assert.Equal(HttpStatusCode.OK, next.StatusCode);
    }

    [Fact]
    public async Task TheHealthCheckReportsTheLoadedModel()
    {
        await DirectAnswerAsync(1);
        using var response = await http.GetAsync("/health", TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("Healthy", await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task AModelThatFailsToLoadIs503AndUnhealthy()
    {
        var missing = Path.Combine(Path.GetTempPath(), "rinna-missing-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(missing);
        try
        {
            var brokenLogs = new ConcurrentQueue<string>();
            await using var broken = await StartAsync(missing, brokenLogs);
            using var client = new HttpClient { BaseAddress = new Uri(Address(broken)) };
            using var response = await client.PostAsync("/v1/chat/completions",
                new StringContent("""{"messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
            using var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
            var detail = error.RootElement.GetProperty("error");
            Assert.Equal("model_unavailable", detail.GetProperty("code").GetString());
            // The reason names the server's directories: it is logged, never sent to the client.
            Assert.DoesNotContain("rinna-missing", detail.GetProperty("message").GetString());
            Assert.Contains(brokenLogs, l => l.Contains("rinna-missing", StringComparison.Ordinal));
            using var health = await client.GetAsync("/health", TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
            Assert.Equal("Unhealthy", await health.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        }
        finally
        {
            Directory.Delete(missing, recursive: true);
        }
    }

    private async Task<HttpResponseMessage> PostAsync(string json, string path = "/v1/chat/completions")
    {
        var content = new StringContent(json, Encoding.UTF8);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        return await http.PostAsync(path, content, TestContext.Current.CancellationToken);
    }

    private static readonly string[] CompletionPrompts = ["日本の首都は", "The capital of France is", "猫は"];

    /// <summary>
    /// <c>/v1/completions</c> continues each raw prompt greedily as the model does on its own (a model loaded apart from
    /// the server, one prompt at a time), though the server runs the prompts as one left-padded batch.
    /// </summary>
    [Fact]
    public async Task CompletionsContinueEachPromptAsTheModelDoesAlone()
    {
        var body = JsonSerializer.Serialize(new { model = "rinna-demo", prompt = CompletionPrompts, max_tokens = 10, temperature = 0, repetition_penalty = 1.0 });
        using var response = await PostAsync(body, "/v1/completions");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var document = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        var root = document.RootElement;
        Assert.Equal("text_completion", root.GetProperty("object").GetString());
        Assert.StartsWith("cmpl-", root.GetProperty("id").GetString());
        var choices = root.GetProperty("choices").EnumerateArray().ToArray();

        using var own = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.DemoModel);
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(Fixtures.DemoModel);
        int completionTokens = 0, promptTokens = 0;
        for (int i = 0; i < CompletionPrompts.Length; i++)
        {
            var alone = Rinna.Net.Generation.TextGeneration.GenerateText(own, tokenizer, CompletionPrompts[i], new Rinna.Net.Generation.GenerationConfig
            {
                MaxNewTokens = 10, EosTokenId = tokenizer.EosTokenId is int eos ? [eos] : null, PadTokenId = tokenizer.PadTokenId,
            });
            Assert.Equal(i, choices[i].GetProperty("index").GetInt32());
            Assert.Equal(alone.Text, choices[i].GetProperty("text").GetString());
            Assert.Equal(alone.FinishReason == Rinna.Net.Generation.FinishReason.Length ? "length" : "stop", choices[i].GetProperty("finish_reason").GetString());
            completionTokens += alone.TokenIds.Count;
            promptTokens += alone.PromptTokens;
        }
        Assert.Equal(promptTokens, root.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(completionTokens, root.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    /// <summary>
    /// Streamed, <c>n</c> seeded samples per prompt arrive as pieces per choice index that add up to the answers the same
    /// request gets unstreamed, each choice closed with its finish reason, then the usage and <c>[DONE]</c>; <c>echo</c>
    /// puts the prompt first.
    /// </summary>
    [Fact]
    public async Task StreamedCompletionsAddUpToTheSameSeededAnswers()
    {
        var request = new Dictionary<string, object>
        {
            ["prompt"] = CompletionPrompts[..2], ["n"] = 2, ["max_tokens"] = 12, ["temperature"] = 0.9, ["seed"] = 7, ["echo"] = true,
        };
        using var whole = await PostAsync(JsonSerializer.Serialize(request), "/v1/completions");
        using var wholeJson = JsonDocument.Parse(await whole.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        var expected = wholeJson.RootElement.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("text").GetString()!).ToArray();
        Assert.Equal(4, expected.Length);
        Assert.All(expected, (text, i) => Assert.StartsWith(CompletionPrompts[i / 2], text));
        Assert.NotEqual(expected[0], expected[1]);

        request["stream"] = true;
        request["stream_options"] = new { include_usage = true };
        using var streamed = await PostAsync(JsonSerializer.Serialize(request), "/v1/completions");
        Assert.Equal("text/event-stream", streamed.Content.Headers.ContentType?.MediaType);
        var texts = new StringBuilder[4].Select(_ => new StringBuilder()).ToArray();
        var finishes = new string?[4];
        JsonElement? usage = null;
        var events = (await streamed.Content.ReadAsStringAsync(TestContext.Current.CancellationToken))
            .Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e["data: ".Length..]).ToArray();
        Assert.Equal("[DONE]", events[^1]);
        foreach (var data in events[..^1])
        {
            using var chunk = JsonDocument.Parse(data);
            Assert.Equal("text_completion", chunk.RootElement.GetProperty("object").GetString());
            foreach (var choice in chunk.RootElement.GetProperty("choices").EnumerateArray())
            {
                int index = choice.GetProperty("index").GetInt32();
                texts[index].Append(choice.GetProperty("text").GetString());
                if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finishes[index] = choice.GetProperty("finish_reason").GetString();
            }
            if (chunk.RootElement.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object) usage = u.Clone();
        }
        Assert.Equal(expected, texts.Select(t => t.ToString()));
        Assert.All(finishes, f => Assert.Contains(f, new[] { "stop", "length" }));
        Assert.Equal(wholeJson.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), usage!.Value.GetProperty("completion_tokens").GetInt32());
    }

    public static TheoryData<string, string?> BadCompletionRequests => new()
    {
        { """{"model":"m"}""", "prompt" },
        { """{"prompt":[]}""", "prompt" },
        { """{"prompt":[1, 2, 3]}""", "prompt" },
        { """{"prompt":"hi","n":40}""", "n" },
        { """{"prompt":"hi","logprobs":2}""", "logprobs" },
        { """{"prompt":"hi","suffix":"end"}""", "suffix" },
        { """{"prompt":"hi","max_tokens":0}""", "max_tokens" },
        { """{"prompt":"hi","best_of":3}""", "best_of" },
        // The model's own checks: an empty prompt, and OpenAI's penalties are not rinna's.
        { """{"prompt":""}""", null },
        { """{"prompt":"hi","presence_penalty":1}""", null },
    };

    [Theory]
    [MemberData(nameof(BadCompletionRequests))]
    public async Task BadCompletionRequestsGetOpenAIErrorsNamingTheField(string body, string? param)
    {
        foreach (bool stream in new[] { false, true })
        {
            using var response = await PostAsync(stream ? body.Insert(1, "\"stream\":true,") : body, "/v1/completions");
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
            using var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
            var detail = error.RootElement.GetProperty("error");
            Assert.Equal("invalid_request_error", detail.GetProperty("type").GetString());
            if (param is not null) Assert.Equal(param, detail.GetProperty("param").GetString());
        }
    }

    /// <summary>Collects every log line, so a test can wait for what the server noticed.</summary>
    private sealed class QueueLoggerProvider(ConcurrentQueue<string> lines) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new QueueLogger(lines);

        public void Dispose()
        {
        }

        private sealed class QueueLogger(ConcurrentQueue<string> lines) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                lines.Enqueue(formatter(state, exception));
        }
    }
}
