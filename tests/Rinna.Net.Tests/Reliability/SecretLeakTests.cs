using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Rinna.Net.Hub;
using Rinna.Net.Tests.Hub;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// The hub token goes in the Authorization header to the hub and nowhere else: not into any log line (at every level),
/// exception message, inner exception or stack text, nor any file the library writes (every file under the sandbox is
/// scanned) — through successful downloads, retried server errors, rejections that echo the token, corrupt bodies,
/// offline misses and model loading.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class SecretLeakTests : IAsyncLifetime
{
    private const string RepoId = "rinna/tiny-neox";
    private const string Token = "hf_LeakProbe7f3c9a1d2e4b6c8dQx";
    private readonly HubSandbox sandbox = new();
    private FakeHub hub = null!;

    public async ValueTask InitializeAsync() => hub = await FakeHub.StartAsync();

    // xunit v3 calls DisposeAsync alone on a class that has both, so the sandbox goes here (it leaked a directory a test).
    public async ValueTask DisposeAsync()
    {
        await hub.DisposeAsync();
        sandbox.Dispose();
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task TokenNeverAppearsInLogsExceptionsOrFiles()
    {
        var repo = hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-rinna"), Fixtures.Tokenizer("bilingual-lookalike"));
        repo.RequiredToken = Token;
        var errors = new List<Exception>();
        async Task Attempt(Func<Task> action)
        {
            try { await action(); }
            catch (Exception error) { errors.Add(error); }
        }
        using var client = sandbox.CreateClient();
        var loggerFactory = LoggerFactory.Create(builder => builder.SetMinimumLevel(LogLevel.Trace).AddProvider(new SingleLoggerProvider(sandbox.Logger)));
        HubOptions Online(string? revision = null) => new() { Endpoint = hub.Endpoint, Token = Token, Revision = revision };

        // Servers that fail, then echo the Authorization header back in their error text.
        int failures = 0;
        hub.Intercept = async context =>
        {
            if (context.Request.Host.Host != "127.0.0.1" || Interlocked.Increment(ref failures) > 3) return false;
            context.Response.StatusCode = failures == 3 ? 401 : 500;
            context.Response.Headers["X-Error-Message"] = $"bad credentials {context.Request.Headers.Authorization}";
            await context.Response.WriteAsync($"echo: {context.Request.Headers.Authorization}");
            return true;
        };
        await Attempt(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));
        hub.Intercept = null;
        hub.CorruptFile = "model.safetensors";
        await Attempt(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));
        hub.CorruptFile = null;
        await Attempt(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(revision: "no-such-branch")));
        await Attempt(() => client.ResolveAsync("rinna/unknown-model", HubFileSet.Model, Online()));
        await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online());
        await Attempt(() => client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { Token = Token, LocalFilesOnly = true, Revision = "v9" }));
        using (await AutoModelForCausalLM.FromPretrainedAsync(RepoId,
                   new ModelLoadOptions { Endpoint = hub.Endpoint, Token = Token, HubClient = client, LoggerFactory = loggerFactory }))
        {
        }
        await AutoTokenizer.FromPretrainedAsync(RepoId,
            new Rinna.Net.Tokenization.TokenizerOptions { Endpoint = hub.Endpoint, Token = Token, HubClient = client, LoggerFactory = loggerFactory });

        Assert.True(errors.Count >= 4, $"expected the failure scenarios to fail, got {errors.Count} errors");
        Assert.Contains(hub.Requests, r => r.Authorization == $"Bearer {Token}");
        Assert.NotEmpty(sandbox.Logger.Lines);
        Assert.All(sandbox.Logger.Lines, line => Assert.DoesNotContain(Token, line));
        Assert.All(errors, error => Assert.DoesNotContain(Token, Describe(error)));
        var probe = Encoding.UTF8.GetBytes(Token);
        var files = Directory.GetFiles(sandbox.Root, "*", SearchOption.AllDirectories);
        Assert.NotEmpty(files);
        Assert.All(files, file => Assert.False(File.ReadAllBytes(file).AsSpan().IndexOf(probe) >= 0, $"{file} holds the token"));
    }

    /// <summary>Everything an exception shows: messages, types, stack text and data of it and every inner exception.</summary>
    private static string Describe(Exception error)
    {
        var text = new StringBuilder(error.ToString());
        for (var e = error; e is not null; e = e.InnerException)
            foreach (System.Collections.DictionaryEntry entry in e.Data) text.Append($" {entry.Key}={entry.Value}");
        if (error is HubException hubError) text.Append($" {hubError.RepoId} {hubError.Revision} {hubError.FileName}");
        return text.ToString();
    }

    private sealed class SingleLoggerProvider(ILogger logger) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => logger;

        public void Dispose()
        {
        }
    }
}
