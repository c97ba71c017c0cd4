using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;

namespace Rinna.Net.Tests.AspNetCore;

/// <summary>
/// The short CI version of the endpoint's load and fault test: concurrent clients mixing streaming and plain requests,
/// some cancelling mid-answer, on the demo model. Every answer that completes must be the model's greedy answer for its
/// question, byte for byte, and the process's memory must not grow with the number of requests served.
/// </summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class EndpointLoadTests
{
    private static readonly string[] Questions =
    [
        "日本の首都はどこですか?", "What is your favourite book?", "おすすめの観光地を教えてください。", "How do I start programming?",
        "猫について教えて。", "What is the largest ocean?",
    ];

    private const int Clients = 6;
    private const int RequestsPerClient = 8;
    private const int MaxTokens = 16;

    [Fact]
    public async Task ConcurrentMixedClientsWithCancellationsGetExactAnswersAndMemoryStaysFlat()
    {
        var logs = new ConcurrentQueue<string>();
        await using var app = await OpenAIEndpointTests.StartAsync(Fixtures.DemoModel, logs);
        using var http = new HttpClient { BaseAddress = new Uri(OpenAIEndpointTests.Address(app)), Timeout = TimeSpan.FromMinutes(3) };
        // A client that drops its connection at once when it cancels, instead of draining the answer to reuse it.
        using var dropping = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = http.BaseAddress, Timeout = http.Timeout };

        var expected = new Dictionary<string, string>();
        foreach (var question in Questions) expected[question] = await CompleteAsync(http, question);
        Assert.All(expected.Values, answer => Assert.False(string.IsNullOrWhiteSpace(answer)));
        ProcessMemory.ResetPeak();
        long before = ProcessMemory.ResidentBytes;

        int completed = 0, cancelled = 0;
        var failures = new ConcurrentQueue<string>();
        await Task.WhenAll(Enumerable.Range(0, Clients).Select(client => Task.Run(async () =>
        {
            var random = new Random(client);
            for (int i = 0; i < RequestsPerClient; i++)
            {
                var question = Questions[random.Next(Questions.Length)];
                try
                {
                    switch (random.Next(4))
                    {
                        case 0:
                            await StreamAndCancelAsync(dropping, question);
                            Interlocked.Increment(ref cancelled);
                            break;
                        case 1:
                        case 2:
                            Check(question, await StreamAsync(http, question));
                            Interlocked.Increment(ref completed);
                            break;
                        default:
                            Check(question, await CompleteAsync(http, question));
                            Interlocked.Increment(ref completed);
                            break;
                    }
                }
                catch (Exception ex)
                {
                    failures.Enqueue($"client {client} request {i}: {ex.GetType().Name}: {ex.Message}");
                }
            }
        }, TestContext.Current.CancellationToken)));

        void Check(string question, string answer)
        {
            if (answer != expected[question]) failures.Enqueue($"'{question}': got '{answer}', expected '{expected[question]}'");
        }

        Assert.Empty(failures);
        Assert.True(completed > 0 && cancelled > 0, $"{completed} completed, {cancelled} cancelled");
        // The server is still healthy and exact after the storm.
        Assert.Equal(expected[Questions[0]], await CompleteAsync(http, Questions[0]));
        GC.Collect();
        long growth = ProcessMemory.ResidentBytes - before;
        TestContext.Current.TestOutputHelper?.WriteLine($"{completed} answers, {cancelled} cancelled streams, RSS growth {growth / 1e6:F1} MB");
        Assert.True(growth < 64L << 20, $"RSS grew by {growth / 1e6:F1} MB over {Clients * RequestsPerClient} requests");
    }

    private static StringContent Body(string question, bool stream) => new(
        JsonSerializer.Serialize(new { model = "rinna-demo", messages = new[] { new { role = "user", content = question } }, max_tokens = MaxTokens, temperature = 0, stream }),
        Encoding.UTF8, "application/json");

    private static async Task<string> CompleteAsync(HttpClient http, string question)
    {
        using var response = await http.PostAsync("/v1/chat/completions", Body(question, false));
        var body = await response.Content.ReadAsStringAsync();
        if (response.StatusCode != HttpStatusCode.OK) throw new InvalidOperationException($"{(int)response.StatusCode}: {body}");
        using var json = JsonDocument.Parse(body);
        return json.RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
    }

    /// <summary>Reads a whole event stream and joins its deltas; fails on a malformed event or a missing <c>[DONE]</c>.</summary>
    private static async Task<string> StreamAsync(HttpClient http, string question)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = Body(question, true) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        if (response.StatusCode != HttpStatusCode.OK) throw new InvalidOperationException($"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var text = new StringBuilder();
        bool done = false;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.Length == 0) continue;
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) throw new InvalidOperationException($"not an event: '{line}'");
            if (line == "data: [DONE]")
            {
                done = true;
                continue;
            }
            using var chunk = JsonDocument.Parse(line["data: ".Length..]);
            if (chunk.RootElement.TryGetProperty("error", out var error)) throw new InvalidOperationException(error.ToString());
            foreach (var choice in chunk.RootElement.GetProperty("choices").EnumerateArray())
                if (choice.GetProperty("delta").TryGetProperty("content", out var content)) text.Append(content.GetString());
        }
        return done ? text.ToString() : throw new InvalidOperationException("the stream ended without [DONE]");
    }

    /// <summary>Starts a stream, reads its first event, and drops the connection.</summary>
    private static async Task StreamAndCancelAsync(HttpClient http, string question)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = Body(question, true) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        if (response.StatusCode != HttpStatusCode.OK) throw new InvalidOperationException($"{(int)response.StatusCode}");
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        if (await reader.ReadLineAsync() is not { } first || !first.StartsWith("data: {", StringComparison.Ordinal))
            throw new InvalidOperationException("no first event");
    }
}
