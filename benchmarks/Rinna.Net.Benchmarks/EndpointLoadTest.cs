using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rinna.Net.AspNetCore;
using Rinna.Net.Integration;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// The endpoint's load and fault test (not a BenchmarkDotNet benchmark: it measures a server under a crowd, over minutes).
/// Serves a model in this process, then N clients send mixed streaming and plain chats of random lengths, some of
/// them disconnecting mid-answer, for the given time. Reports throughput, latency percentiles, failures (any status
/// other than 200, a malformed event, a stream without <c>[DONE]</c>) and resident memory after warm-up and at the end.
/// </summary>
/// <remarks>
/// <c>dotnet run -c Release --project benchmarks/Rinna.Net.Benchmarks -- --load-test [demo|pythia-160m] [clients] [seconds]</c>;
/// pythia-160m's shape has random weights and the GPT-NeoX tokenizer of tests/fixtures.
/// </remarks>
internal static class EndpointLoadTest
{
    public static async Task<int> RunAsync(string shape, int clients, int seconds)
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        TorchSharp.torch.set_num_threads(2);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(options => options.Listen(IPAddress.Loopback, 0));
        builder.Services.AddRinna(o =>
        {
            o.ModelId = BenchmarkCheckpoints.Ensure(shape);
            if (shape != ModelShapes.Demo) o.TokenizerId = TokenizerBenchmarkData.TokenizerDirectory("gpt-neox-bpe");
            o.TorchDtype = TorchDtype.BFloat16;
            o.LoadOnStart = true;
        });
        await using var app = builder.Build();
        app.MapOpenAIChatCompletions();
        await app.StartAsync();
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        var questions = File.ReadAllText(Path.Combine(TokenizerBenchmarkData.FixtureRoot, "corpus", "chat", "dialogues.txt"))
            .Split('\n').Where(l => l.StartsWith("ユーザー: ", StringComparison.Ordinal)).Select(l => l["ユーザー: ".Length..]).ToArray();

        var requests = new ConcurrentBag<(double Seconds, double FirstToken, int Tokens, bool Stream)>();
        var failures = new ConcurrentQueue<string>();
        int cancelled = 0;
        var clock = Stopwatch.StartNew();
        var end = TimeSpan.FromSeconds(seconds);
        var warmUp = TimeSpan.FromSeconds(Math.Min(60, seconds / 4.0));
        long rssAfterWarmUp = 0, rssPeak = 0;
        using var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0, MaxConnectionsPerServer = clients + 4 })
        { BaseAddress = new Uri(address), Timeout = TimeSpan.FromMinutes(10) };

        var sampler = Task.Run(async () =>
        {
            while (clock.Elapsed < end)
            {
                await Task.Delay(1000);
                long rss = ResidentBytes();
                rssPeak = Math.Max(rssPeak, rss);
                if (rssAfterWarmUp == 0 && clock.Elapsed > warmUp) rssAfterWarmUp = rss;
            }
        });
        await Task.WhenAll(Enumerable.Range(0, clients).Select(client => Task.Run(async () =>
        {
            var random = new Random(client);
            while (clock.Elapsed < end)
            {
                var question = questions[random.Next(questions.Length)];
                int maxTokens = 8 + random.Next(57);
                bool stream = random.Next(2) == 0;
                bool disconnect = random.Next(10) == 0;
                var body = JsonSerializer.Serialize(new { model = shape, messages = new[] { new { role = "user", content = question } }, max_tokens = maxTokens, stream, temperature = 0.7, seed = random.Next() });
                var started = clock.Elapsed;
                try
                {
                    using var cancel = new CancellationTokenSource();
                    if (disconnect) cancel.CancelAfter(TimeSpan.FromMilliseconds(random.Next(50, 2000)));
                    using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
                    using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
                    if (response.StatusCode != HttpStatusCode.OK)
                    {
                        failures.Enqueue($"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
                        continue;
                    }
                    var (tokens, firstToken) = stream ? await ReadStreamAsync(response, clock, cancel.Token) : await ReadCompletionAsync(response, cancel.Token);
                    requests.Add(((clock.Elapsed - started).TotalSeconds, (firstToken ?? clock.Elapsed - started).TotalSeconds - (stream ? started.TotalSeconds : 0), tokens, stream));
                }
                catch (OperationCanceledException) when (disconnect)
                {
                    Interlocked.Increment(ref cancelled);
                }
                catch (Exception ex)
                {
                    failures.Enqueue($"{ex.GetType().Name}: {ex.Message}");
                }
            }
        })));
        await sampler;
        long rssEnd = ResidentBytes();

        var done = requests.ToList();
        double tokensPerSecond = done.Sum(r => r.Tokens) / clock.Elapsed.TotalSeconds;
        double P(IEnumerable<double> values, double q)
        {
            var sorted = values.Order().ToArray();
            return sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(q * sorted.Length))];
        }
        var perToken = done.Where(r => r.Tokens > 0).Select(r => r.Seconds / r.Tokens).ToList();
        var ttft = done.Where(r => r.Stream).Select(r => r.FirstToken).ToList();
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine($"| model | clients | seconds | answers | disconnects | failures | tokens/s | per-token latency p50 / p99 (ms) | time to first token p50 / p99 (s) | RSS after warm-up / peak / end (MB) |");
        Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        Console.WriteLine(string.Create(inv, $"| {shape} | {clients} | {clock.Elapsed.TotalSeconds:F0} | {done.Count} | {cancelled} | {failures.Count} | {tokensPerSecond:F1} | "
            + $"{P(perToken, 0.5) * 1e3:F0} / {P(perToken, 0.99) * 1e3:F0} | {P(ttft, 0.5):F2} / {P(ttft, 0.99):F2} | {rssAfterWarmUp / 1e6:F0} / {rssPeak / 1e6:F0} / {rssEnd / 1e6:F0} |"));
        foreach (var failure in failures.Take(10)) Console.WriteLine($"failure: {failure}");
        await app.StopAsync();
        return failures.IsEmpty ? 0 : 1;
    }

    private static async Task<(int Tokens, TimeSpan? FirstToken)> ReadCompletionAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync(cancellationToken));
        return (json.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), null);
    }

    /// <summary>Reads a whole event stream, checking every event; returns the chunks with text (about one per token) and when the first came.</summary>
    private static async Task<(int Tokens, TimeSpan? FirstToken)> ReadStreamAsync(HttpResponseMessage response, Stopwatch clock, CancellationToken cancellationToken)
    {
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancellationToken));
        int chunks = 0;
        TimeSpan? first = null;
        bool done = false;
        while (await reader.ReadLineAsync(cancellationToken) is { } line)
        {
            if (line.Length == 0) continue;
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) throw new InvalidDataException($"not an event: '{line}'");
            if (line == "data: [DONE]")
            {
                done = true;
                continue;
            }
            using var chunk = JsonDocument.Parse(line["data: ".Length..]);
            if (chunk.RootElement.TryGetProperty("error", out var error)) throw new InvalidDataException(error.ToString());
            foreach (var choice in chunk.RootElement.GetProperty("choices").EnumerateArray())
                if (choice.GetProperty("delta").TryGetProperty("content", out var content) && content.GetString() is { Length: > 0 })
                {
                    chunks++;
                    first ??= clock.Elapsed;
                }
        }
        return done ? (chunks, first) : throw new InvalidDataException("the stream ended without [DONE]");
    }

    private static long ResidentBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line["VmRSS:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        return 0;
    }
}
