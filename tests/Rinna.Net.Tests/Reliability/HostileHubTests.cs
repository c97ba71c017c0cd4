using System.Net;
using System.Net.Http.Headers;
using Rinna.Net.Hub;
using Rinna.Net.Native;
using Rinna.Net.Tests.Hub;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// The hub client against a hostile <see cref="FakeHub"/> (endless, slow, lying, redirecting) and a disk that is nearly full
/// or fills up: every case ends in a <see cref="HubException"/> (or works) without writing past its bound. Each resolution
/// runs under <see cref="Bound"/>, so a regression fails with a cancellation instead of hanging the run.
/// </summary>
public sealed class HostileHubTests : IAsyncLifetime
{
    private const string RepoId = "rinna/tiny-neox";
    private const string Weights = "model.safetensors";
    private readonly HubSandbox sandbox = new();
    private readonly CancellationTokenSource bound = new(TimeSpan.FromSeconds(60));
    private FakeHub hub = null!;

    public async ValueTask InitializeAsync() => hub = await FakeHub.StartAsync();

    // xunit v3 calls DisposeAsync alone on a class that has both, so the sandbox goes here (it leaked a directory a test).
    public async ValueTask DisposeAsync()
    {
        await hub.DisposeAsync();
        bound.Dispose();
        sandbox.Dispose();
    }

    /// <summary>Cancelled after a minute: far beyond what any case needs, short enough that a hang fails the test.</summary>
    private CancellationToken Bound => bound.Token;

    private FakeRepo AddTinyRinna() => hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-rinna"), Fixtures.Tokenizer("bilingual-lookalike"));

    private HubOptions Online(string? token = null) => new() { Endpoint = hub.Endpoint, Token = token };

    private static string N(long bytes) => bytes.ToString("N0", System.Globalization.CultureInfo.InvariantCulture);

    private string Incomplete(FakeRepo repo, string file) => sandbox.BlobPath(RepoId, repo.Files[file].Etag) + ".incomplete";

    // ---- sizes: nothing is written past the announced size, or past MaxFileSize when none is announced

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task BodyPastTheAnnouncedSizeStopsAtTheFirstExtraByte()
    {
        var repo = AddTinyRinna();
        var size = repo.Files[Weights].Content.Length;
        hub.EndlessFile = Weights; // X-Linked-Size is true; the CDN sends no Content-Length and does not stop
        var storage = new FakeStorage();
        using var client = sandbox.CreateClient(storage: storage);

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound));

        Assert.Equal(Weights, error.FileName);
        Assert.Contains($"more than the announced {N(size)} bytes", error.Message);
        Assert.InRange(storage.LargestFile(Incomplete(repo, Weights)), 0, size);
        Assert.False(File.Exists(Path.Combine(sandbox.SnapshotDir(RepoId), Weights)));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task EndlessBodyWithoutAnySizeStopsAtMaxFileSize()
    {
        var repo = AddTinyRinna();
        hub.UnannouncedSizeFile = "config.json";
        hub.EndlessFile = "config.json";
        var storage = new FakeStorage();
        using var client = sandbox.CreateClient(storage: storage);
        var options = Online();
        options.MaxFileSize = 64 << 10;

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, options, cancellationToken: Bound));

        Assert.Equal("config.json", error.FileName);
        Assert.Contains("announced no size", error.Message);
        Assert.Contains("MaxFileSize (65,536 bytes", error.Message);
        Assert.InRange(storage.LargestFile(Incomplete(repo, "config.json")), repo.Files["config.json"].Content.Length, 64 << 10);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task FileWhoseSizeIsNotAnnouncedIsDownloadedAndVerified()
    {
        var repo = AddTinyRinna();
        hub.UnannouncedSizeFile = Weights; // the hub's redirect carries no X-Linked-Size; the CDN's Content-Length sizes it
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound);

        Assert.Equal(repo.Files[Weights].Content, File.ReadAllBytes(Path.Combine(directory, Weights)));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task FileAnnouncedLargerThanMaxFileSizeIsRefusedBeforeDownloading()
    {
        var repo = AddTinyRinna();
        using var client = sandbox.CreateClient();
        var options = Online();
        options.MaxFileSize = 100_000; // the configs fit, the 0.9 MB weights do not

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, options, cancellationToken: Bound));

        Assert.Equal(Weights, error.FileName);
        Assert.Contains($"{N(repo.Files[Weights].Content.Length)} bytes", error.Message);
        Assert.Contains("HubOptions.MaxFileSize", error.Message);
        Assert.Equal(0, hub.CdnGets(Weights));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task DownloadServerContradictingTheAnnouncedSizeIsRefusedBeforeWriting()
    {
        var repo = AddTinyRinna();
        hub.SizeLie = (Weights, -4096); // the hub announces 4 KB less than the CDN's Content-Length
        var storage = new FakeStorage();
        using var client = sandbox.CreateClient(storage: storage);

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound));

        Assert.Equal(Weights, error.FileName);
        Assert.Contains($"sends {N(repo.Files[Weights].Content.Length)} bytes", error.Message);
        Assert.Equal(0, storage.LargestFile(Incomplete(repo, Weights)));
    }

    // ---- disk space

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task DownloadThatCannotFitIsRefusedBeforeAnyByteIsRequested()
    {
        var repo = AddTinyRinna();
        var size = repo.Files[Weights].Content.Length;
        var storage = new FakeStorage { FreeBytes = size - 1 }; // the configs fit, the weights miss by one byte
        using var client = sandbox.CreateClient(storage: storage);

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound));

        Assert.Equal(Weights, error.FileName);
        Assert.Contains("not enough disk space", error.Message);
        Assert.Contains($"needs {N(size)} bytes", error.Message);
        Assert.Contains($"{N(size - 1)} bytes", error.Message);
        Assert.Equal(0, hub.CdnGets(Weights));
        Assert.Equal(0, storage.LargestFile(Incomplete(repo, Weights)));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task DiskFillingUpDuringTheWriteIsAHubExceptionAndTheDownloadResumesLater()
    {
        var repo = AddTinyRinna();
        var storage = new FakeStorage { DiskFullAt = 300_000 };
        using var client = sandbox.CreateClient(storage: storage);

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound));

        Assert.Equal(Weights, error.FileName);
        Assert.Contains("the disk is full", error.Message);
        Assert.Contains(".incomplete", error.Message);
        var io = Assert.IsType<IOException>(error.InnerException);
        Assert.Equal(28, io.HResult);
        Assert.Equal(300_000, new FileInfo(Incomplete(repo, Weights)).Length);

        storage.DiskFullAt = null; // space was freed
        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound);

        Assert.Equal(repo.Files[Weights].Content, File.ReadAllBytes(Path.Combine(directory, Weights)));
        Assert.Contains(hub.Requests, r => r.Range == "bytes=300000-");
    }

    [Fact]
    public void FreeSpaceComesFromTheFileSystemOfTheNearestExistingDirectory()
    {
        var free = DiskSpace.AvailableBytes(Path.Combine(sandbox.Root, "not", "created", "yet"));

        Assert.NotNull(free);
        Assert.True(free > 0);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task CacheThatCannotBeWrittenIsAHubExceptionNamingIt()
    {
        AddTinyRinna();
        Directory.CreateDirectory(sandbox.CacheDir);
        File.WriteAllText(sandbox.RepoDir(RepoId), "a file where the repository's folder must go");
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound));

        Assert.Equal("config.json", error.FileName);
        Assert.Contains(sandbox.CacheDir, error.Message);
        Assert.IsAssignableFrom<IOException>(error.InnerException);
    }

    // ---- deadlines

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task TricklingDownloadEndsAtItsDeadlineAndStaysResumable()
    {
        var repo = AddTinyRinna();
        hub.TrickleFile = Weights;
        hub.TrickleInterval = TimeSpan.FromMilliseconds(20); // never idle for the 5 s idle timeout, never done either
        using var client = sandbox.CreateClient();
        var options = Online();
        options.DownloadTimeout = TimeSpan.FromSeconds(5);
        options.DownloadDeadline = TimeSpan.FromSeconds(1);

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, options, cancellationToken: Bound));

        Assert.Equal(Weights, error.FileName);
        Assert.Contains("HubOptions.DownloadDeadline (1 s)", error.Message);
        Assert.Contains("a later call resumes it", error.Message);
        var kept = new FileInfo(Incomplete(repo, Weights)).Length;
        Assert.InRange(kept, 1, repo.Files[Weights].Content.Length - 1);

        hub.TrickleFile = null;
        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound);

        Assert.Equal(repo.Files[Weights].Content, File.ReadAllBytes(Path.Combine(directory, Weights)));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task MetadataRequestEndsAtItsDeadlineWhateverTheRetries()
    {
        AddTinyRinna();
        hub.Intercept = context =>
        {
            context.Response.StatusCode = 503;
            return Task.FromResult(true);
        };
        using var client = sandbox.CreateClient(new HubRetryPolicy(int.MaxValue, TimeSpan.FromMilliseconds(20), TimeSpan.FromMilliseconds(20)));
        var options = Online();
        options.MetadataDeadline = TimeSpan.FromMilliseconds(500);

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, options, cancellationToken: Bound));

        Assert.Equal("config.json", error.FileName);
        Assert.Contains("HubOptions.MetadataDeadline (0.5 s)", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task CallerCancellationDuringATrickleIsACancellationNotAHubError()
    {
        var repo = AddTinyRinna();
        hub.TrickleFile = Weights;
        using var client = sandbox.CreateClient();
        using var cancellation = CancellationTokenSource.CreateLinkedTokenSource(Bound);
        var progress = new RecordingProgress(report =>
        {
            if (report.File == Weights) cancellation.Cancel();
        });

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, Online(), progress, cancellation.Token));

        Assert.False(Bound.IsCancellationRequested);
        Assert.True(File.Exists(Incomplete(repo, Weights)));
    }

    // ---- redirects

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData("file:///etc/passwd", false)]
    [InlineData("ftp://localhost/model.safetensors", false)]
    [InlineData("file:///etc/passwd", true)]
    [InlineData("gopher://localhost/1", true)]
    public async Task RedirectToAnotherSchemeIsRefusedNamingIt(string location, bool fromCdn)
    {
        AddTinyRinna();
        if (fromCdn) hub.CdnRedirect = (Weights, location);
        else hub.ResolveRedirect = (Weights, location);
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound));

        Assert.Equal(Weights, error.FileName);
        Assert.Contains($"refused a redirect from {(fromCdn ? "localhost" : "127.0.0.1")} to '{location}'", error.Message);
        Assert.Contains("only http and https", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task RedirectFromHttpsDownToHttpIsRefused()
    {
        using var handler = new DowngradingHub();
        using var client = new HubClient(handler, disposeHandler: false, sandbox.Logger, name => sandbox.Environment.GetValueOrDefault(name), HubSandbox.FastRetries);

        var error = await Assert.ThrowsAsync<HubException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { Endpoint = "https://hub.test" }, cancellationToken: Bound));

        Assert.Equal("config.json", error.FileName);
        Assert.Contains("refused a redirect from hub.test to 'http://cdn.test/blob'", error.Message);
        Assert.DoesNotContain(handler.Requests, uri => uri.Scheme == "http");
    }

    /// <summary>An https hub whose every answer redirects to plain http, as only an attacker's or a broken mirror would.</summary>
    private sealed class DowngradingHub : HttpMessageHandler
    {
        public List<Uri> Requests { get; } = [];

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            lock (Requests) Requests.Add(request.RequestUri!);
            var response = new HttpResponseMessage(HttpStatusCode.Found) { RequestMessage = request };
            response.Headers.Location = new Uri("http://cdn.test/blob");
            response.Headers.Add("X-Repo-Commit", FakeRepo.MainCommit);
            response.Headers.ETag = new EntityTagHeaderValue($"\"{new string('a', 64)}\"");
            response.Headers.Add("X-Linked-Size", "10");
            return Task.FromResult(response);
        }
    }

    // ---- errors that must say what happened

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task HubDownWithOnlyTheConfigCachedReportsTheNetworkFailure()
    {
        var repo = AddTinyRinna();
        using var client = sandbox.CreateClient();
        var snapshot = await client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound);
        File.Delete(Path.Combine(snapshot, Weights));
        File.Delete(sandbox.BlobPath(RepoId, repo.Files[Weights].Etag));

        var error = await Assert.ThrowsAsync<HubException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { Endpoint = "http://127.0.0.1:9" }, cancellationToken: Bound));

        Assert.Null(error.StatusCode);
        Assert.Contains("could not be reached (could not reach 127.0.0.1", error.Message);
        Assert.Contains("the cache holds no weights", error.Message);
        Assert.DoesNotContain("has no weights", error.Message);
        Assert.IsType<HttpRequestException>(error.InnerException);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task RateLimitWithATokenDoesNotAskForAToken()
    {
        AddTinyRinna();
        hub.Intercept = context =>
        {
            context.Response.StatusCode = 429;
            return Task.FromResult(true);
        };
        using var client = sandbox.CreateClient();

        var withToken = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online("hf_valid"), cancellationToken: Bound));
        var withoutToken = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: Bound));

        Assert.Equal(429, withToken.StatusCode);
        Assert.DoesNotContain("pass a token", withToken.Message);
        Assert.Contains("with the token's limit", withToken.Message);
        Assert.Contains("pass a token", withoutToken.Message);
    }

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData("hf_abc\r\nX-Injected: 1")]
    [InlineData("hf_\u00e9t\u00e9")]
    public async Task TokenThatCannotBeAHeaderIsRefusedOnceBeforeAnyRequest(string token)
    {
        AddTinyRinna();
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<ArgumentException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(token), cancellationToken: Bound));

        Assert.DoesNotContain("hf_", error.Message);
        Assert.Empty(hub.Requests);
        Assert.DoesNotContain(sandbox.Logger.Lines, line => line.Contains("retry"));
    }
}
