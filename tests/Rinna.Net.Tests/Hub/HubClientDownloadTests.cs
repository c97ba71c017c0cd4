using Rinna.Net.Hub;

namespace Rinna.Net.Tests.Hub;

/// <summary>Online resolution against <see cref="FakeHub"/>: what lands in the cache, and how faults are survived or reported.</summary>
public sealed class HubClientDownloadTests : IAsyncLifetime
{
    private const string RepoId = "rinna/tiny-neox";
    private readonly HubSandbox sandbox = new();
    private FakeHub hub = null!;

    public async ValueTask InitializeAsync() => hub = await FakeHub.StartAsync();

    // xunit v3 calls DisposeAsync alone on a class that has both, so the sandbox goes here (it leaked a directory a test).
    public async ValueTask DisposeAsync()
    {
        await hub.DisposeAsync();
        sandbox.Dispose();
    }

    private HubOptions Online(string? token = null, string? revision = null) => new() { Endpoint = hub.Endpoint, Token = token, Revision = revision };

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "Timed out waiting for the download to reach the expected point.");
            await Task.Delay(10);
        }
    }

    private FakeRepo AddTinyRinna() => hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-rinna"), Fixtures.Tokenizer("bilingual-lookalike"));

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task FreshDownloadLaysOutTheCacheLikeHuggingfaceHub()
    {
        var repo = AddTinyRinna();
        using var client = sandbox.CreateClient();
        var progress = new RecordingProgress();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online(), progress);

        Assert.Equal(sandbox.SnapshotDir(RepoId), directory);
        Assert.Equal(FakeRepo.MainCommit, File.ReadAllText(Path.Combine(sandbox.RepoDir(RepoId), "refs", "main")));
        string[] expected = ["config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json", "special_tokens_map.json", "spiece.model"];
        Assert.Equal(expected.Order(), Directory.GetFileSystemEntries(directory).Select(Path.GetFileName).Order());
        foreach (var name in expected)
        {
            var pointer = new FileInfo(Path.Combine(directory, name));
            Assert.Equal($"../../blobs/{repo.Files[name].Etag}", pointer.LinkTarget);
            Assert.Equal(repo.Files[name].Content, File.ReadAllBytes(pointer.FullName));
        }
        Assert.Equal(expected.Select(n => repo.Files[n].Etag).Order(), Directory.GetFiles(Path.Combine(sandbox.RepoDir(RepoId), "blobs")).Select(Path.GetFileName).Order());
        Assert.True(File.Exists(Path.Combine(sandbox.RepoDir(RepoId), ".no_exist", FakeRepo.MainCommit, "tokenizer.json")));
        Assert.True(File.Exists(Path.Combine(sandbox.CacheDir, ".locks", "models--rinna--tiny-neox", repo.Files["model.safetensors"].Etag + ".lock")));

        var last = progress.Reports.Last(r => r.File == "model.safetensors");
        Assert.Equal(repo.Files["model.safetensors"].Content.Length, last.BytesDownloaded);
        Assert.Equal(last.BytesDownloaded, last.TotalBytes);
        Assert.Contains(sandbox.Logger.Lines, line => line.Contains("Downloaded model.safetensors"));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task SecondResolutionDownloadsNothingAndOfflineModesReuseTheCache()
    {
        AddTinyRinna();
        using var client = sandbox.CreateClient();
        var first = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online());
        var requestsAfterDownload = hub.Requests.Count;

        var again = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online());
        var newRequests = hub.Requests.Skip(requestsAfterDownload).ToList();
        Assert.Equal(first, again);
        Assert.All(newRequests, r => Assert.Equal("HEAD", r.Method));
        Assert.Single(newRequests); // the revision is pinned to the commit once; the rest is a commit-hash cache hit
        requestsAfterDownload = hub.Requests.Count;

        var localOnly = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, new HubOptions { Endpoint = hub.Endpoint, LocalFilesOnly = true });
        sandbox.Environment["HF_HUB_OFFLINE"] = "1";
        var offline = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online());
        Assert.Equal(first, localOnly);
        Assert.Equal(first, offline);
        Assert.Equal(requestsAfterDownload, hub.Requests.Count);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task ShardedCheckpointBringsEveryShardTheIndexNames()
    {
        var repo = hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-pythia"));
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());

        foreach (var name in new[] { "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" })
            Assert.Equal(repo.Files[name].Content, File.ReadAllBytes(Path.Combine(directory, name)));
        Assert.True(File.Exists(Path.Combine(sandbox.RepoDir(RepoId), ".no_exist", FakeRepo.MainCommit, "model.safetensors")));
        Assert.False(File.Exists(Path.Combine(directory, "pytorch_model.bin")));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task PytorchBinIsTheFallbackWhenTheRevisionHasNoSafetensors()
    {
        var repo = hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-rinna-bin"));
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());

        Assert.Equal(repo.Files["pytorch_model.bin"].Content, File.ReadAllBytes(Path.Combine(directory, "pytorch_model.bin")));
        var noExist = Path.Combine(sandbox.RepoDir(RepoId), ".no_exist", FakeRepo.MainCommit);
        Assert.True(File.Exists(Path.Combine(noExist, "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(noExist, "model.safetensors.index.json")));

        // Offline, the cached 404s steer the lookup to the .bin just as online.
        var offline = await client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { LocalFilesOnly = true });
        Assert.Equal(directory, offline);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task PullRequestRevisionIsEscapedInTheUrlAndCachedUnderRefsRefsPr()
    {
        const string prCommit = "aaaabbbbccccddddeeeeffff0000111122223333";
        var repo = AddTinyRinna();
        repo.Revisions["refs/pr/1"] = prCommit;
        repo.Revisions[prCommit] = prCommit;
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online(revision: "refs/pr/1"));

        Assert.Equal(sandbox.SnapshotDir(RepoId, prCommit), directory);
        Assert.Equal(prCommit, File.ReadAllText(Path.Combine(sandbox.RepoDir(RepoId), "refs", "refs", "pr", "1")));
        Assert.Contains(hub.Requests, r => r.Target == $"/{RepoId}/resolve/refs%2Fpr%2F1/config.json");
        Assert.Equal(directory, await client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { Revision = "refs/pr/1", LocalFilesOnly = true }));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task DroppedConnectionResumesWithRangeAndTheResultIsVerified()
    {
        var repo = AddTinyRinna();
        hub.DropFile = "model.safetensors";
        hub.DropAfterBytes = 300_000;
        var incomplete = sandbox.BlobPath(RepoId, repo.Files["model.safetensors"].Etag) + ".incomplete";
        hub.BeforeDrop = _ => WaitUntilAsync(() => File.Exists(incomplete) && new FileInfo(incomplete).Length == 300_000);
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());

        Assert.Equal(repo.Files["model.safetensors"].Content, File.ReadAllBytes(Path.Combine(directory, "model.safetensors")));
        var cdnGets = hub.Requests.Where(r => r is { Host: "localhost", Method: "GET" }).ToList();
        Assert.Equal(2, cdnGets.Count);
        Assert.Null(cdnGets[0].Range);
        Assert.Equal("bytes=300000-", cdnGets[1].Range);
        Assert.False(File.Exists(incomplete));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task StalledTransfersTimeOutAndResume()
    {
        var repo = AddTinyRinna();
        sandbox.Environment["HF_HUB_ETAG_TIMEOUT"] = "0.3";
        sandbox.Environment["HF_HUB_DOWNLOAD_TIMEOUT"] = "0.3";
        var firstHead = 0;
        hub.Intercept = async context =>
        {
            if (context.Request.Method != "HEAD" || Interlocked.Exchange(ref firstHead, 1) == 1) return false;
            await Task.Delay(Timeout.Infinite, context.RequestAborted).ContinueWith(_ => { });
            return true;
        };
        hub.DropFile = "model.safetensors";
        hub.DropAfterBytes = 200_000;
        hub.BeforeDrop = context => Task.Delay(Timeout.Infinite, context.RequestAborted).ContinueWith(_ => { });
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());

        Assert.Equal(repo.Files["model.safetensors"].Content, File.ReadAllBytes(Path.Combine(directory, "model.safetensors")));
        Assert.Contains(hub.Requests, r => r.Host == "localhost" && r.Range == "bytes=200000-");
        Assert.Contains(sandbox.Logger.Lines, line => line.Contains("did not answer within 0.3 s"));
        Assert.Contains(sandbox.Logger.Lines, line => line.Contains("no data for 0.3 s"));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task UnreachableHubWithoutACacheNamesTheHost()
    {
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { Endpoint = "http://127.0.0.1:9" }));

        Assert.Null(error.StatusCode);
        Assert.Contains("could not reach 127.0.0.1", error.Message);
        Assert.Contains($"after {HubSandbox.FastRetries.MaxAttempts} attempts", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task ServerWithoutRangeSupportRestartsTheFileFromScratch()
    {
        var repo = AddTinyRinna();
        var weights = repo.Files["model.safetensors"];
        var incomplete = sandbox.BlobPath(RepoId, weights.Etag) + ".incomplete";
        Directory.CreateDirectory(Path.GetDirectoryName(incomplete)!);
        File.WriteAllBytes(incomplete, new byte[1000]); // a stale prefix that must not survive
        hub.IgnoreRange = true;
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());

        Assert.Equal(weights.Content, File.ReadAllBytes(Path.Combine(directory, "model.safetensors")));
        Assert.Contains(hub.Requests, r => r.Host == "localhost" && r.Range == "bytes=1000-");
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task CorruptBodyIsRejectedAndNothingEntersTheSnapshot()
    {
        var repo = AddTinyRinna();
        hub.CorruptFile = "model.safetensors";
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Equal("model.safetensors", error.FileName);
        Assert.Contains("sha256", error.Message);
        Assert.Contains(RepoId, error.Message);
        var blob = sandbox.BlobPath(RepoId, repo.Files["model.safetensors"].Etag);
        Assert.False(File.Exists(blob));
        Assert.False(File.Exists(blob + ".incomplete"));
        Assert.False(File.Exists(Path.Combine(sandbox.SnapshotDir(RepoId), "model.safetensors")));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task TokenGoesToTheHubButNeverToTheRedirectHost()
    {
        const string token = "hf_ThisIsASecretToken1234567890";
        AddTinyRinna().RequiredToken = token;
        using var client = sandbox.CreateClient();

        await client.ResolveAsync(RepoId, HubFileSet.Model, Online(token: token));

        Assert.Contains(hub.Requests, r => r.Host == "localhost");
        Assert.All(hub.Requests.Where(r => r.Host == "127.0.0.1"), r => Assert.Equal($"Bearer {token}", r.Authorization));
        Assert.All(hub.Requests.Where(r => r.Host == "localhost"), r => Assert.Null(r.Authorization));
        Assert.DoesNotContain(sandbox.Logger.Lines, line => line.Contains(token));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task TokenAndEndpointComeFromTheEnvironmentWhenOptionsAreUnset()
    {
        const string token = "hf_FromTheEnvironment0987654321";
        AddTinyRinna().RequiredToken = token;
        sandbox.Environment["HF_TOKEN"] = token;
        sandbox.Environment["HF_ENDPOINT"] = hub.Endpoint;
        using var client = sandbox.CreateClient();

        Assert.Equal(sandbox.SnapshotDir(RepoId), await client.ResolveAsync(RepoId, HubFileSet.Model));
        Assert.All(hub.Requests.Where(r => r.Host == "localhost"), r => Assert.Null(r.Authorization));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task GatedRepositoryWithoutTokenAsksForOne()
    {
        AddTinyRinna().RequiredToken = "hf_right";
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Equal(401, error.StatusCode);
        Assert.Equal((RepoId, "main", "config.json"), (error.RepoId, error.Revision, error.FileName));
        Assert.Contains("gated", error.Message);
        Assert.Contains("HF_TOKEN", error.Message);
        Assert.Contains($"'{RepoId}' at revision 'main', file 'config.json'", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task RejectedTokenNeverAppearsInTheExceptionOrTheLogs()
    {
        const string wrongToken = "hf_WrongSecretValue5555555555";
        AddTinyRinna().RequiredToken = "hf_right";
        // A careless server that echoes the token back must not get it into our message either.
        hub.Intercept = async context =>
        {
            if (context.Request.Host.Host != "127.0.0.1") return false;
            context.Response.StatusCode = 401;
            context.Response.Headers["X-Error-Message"] = $"Invalid token {context.Request.Headers.Authorization}";
            await Task.CompletedTask;
            return true;
        };
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(token: wrongToken)));

        Assert.Equal(401, error.StatusCode);
        Assert.Contains("token", error.Message);
        Assert.DoesNotContain(wrongToken, error.ToString());
        Assert.DoesNotContain(sandbox.Logger.Lines, line => line.Contains(wrongToken));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task UnknownRepositoryIsReportedWithItsId()
    {
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync("rinna/does-not-exist", HubFileSet.Model, Online()));

        Assert.Equal(401, error.StatusCode);
        Assert.Contains("'rinna/does-not-exist'", error.Message);
        Assert.Contains("repository not found", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task UnknownRevisionIsReportedAsSuch()
    {
        AddTinyRinna();
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(revision: "v9.9")));

        Assert.Equal(404, error.StatusCode);
        Assert.Equal("v9.9", error.Revision);
        Assert.Contains("revision not found", error.Message);
        Assert.Contains("'v9.9'", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task MissingRequiredFileIsA404NamingTheFile()
    {
        var repo = AddTinyRinna();
        repo.Files.TryRemove("config.json", out _);
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Equal(404, error.StatusCode);
        Assert.Equal("config.json", error.FileName);
        Assert.Contains("does not exist", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task RepositoryWithoutWeightsOrTokenizerSaysSo()
    {
        var repo = hub.AddRepo(RepoId);
        repo.Put("config.json", "{}");
        repo.Put("tokenizer_config.json", "{}");
        using var client = sandbox.CreateClient();

        var weights = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));
        var tokenizer = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Tokenizer, Online()));

        Assert.Contains("pytorch_model.bin", weights.Message);
        Assert.Contains("spiece.model", tokenizer.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task RateLimitIsRetriedThenReported()
    {
        AddTinyRinna();
        hub.Intercept = context =>
        {
            context.Response.StatusCode = 429;
            return Task.FromResult(true);
        };
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Equal(429, error.StatusCode);
        Assert.Contains("rate limited", error.Message);
        Assert.Equal(HubSandbox.FastRetries.MaxAttempts, hub.Requests.Count);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task ServerErrorsAreRetriedWithBackoff()
    {
        var repo = AddTinyRinna();
        var failures = 0;
        hub.Intercept = context =>
        {
            if (Interlocked.Increment(ref failures) > 2) return Task.FromResult(false);
            context.Response.StatusCode = 503;
            return Task.FromResult(true);
        };
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());

        Assert.Equal(repo.Files["config.json"].Content, File.ReadAllBytes(Path.Combine(directory, "config.json")));
        Assert.Contains(sandbox.Logger.Lines, line => line.Contains("HTTP 503") && line.Contains("retry 1"));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task UnreachableHubFallsBackToTheCache()
    {
        AddTinyRinna();
        using var client = sandbox.CreateClient();
        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());
        hub.Intercept = context =>
        {
            context.Response.StatusCode = 502;
            return Task.FromResult(true);
        };
        var requestsBefore = hub.Requests.Count;

        Assert.Equal(directory, await client.ResolveAsync(RepoId, HubFileSet.Model, Online()));
        Assert.Equal(HubSandbox.FastRetries.MaxAttempts, hub.Requests.Count - requestsBefore); // one file's retries, then the cache only
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task CancellationMidFileLeavesAResumableIncompleteFile()
    {
        var repo = AddTinyRinna();
        var size = repo.Files["model.safetensors"].Content.Length;
        hub.StallFile = "model.safetensors";
        hub.StallAfterBytes = 400_000;
        using var client = sandbox.CreateClient();
        using var cancellation = new CancellationTokenSource();
        var incomplete = sandbox.BlobPath(RepoId, repo.Files["model.safetensors"].Etag) + ".incomplete";

        var resolving = client.ResolveAsync(RepoId, HubFileSet.Model, Online(), cancellationToken: cancellation.Token);
        await hub.Stalled.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await WaitUntilAsync(() => File.Exists(incomplete) && new FileInfo(incomplete).Length == 400_000);
        cancellation.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => resolving);
        Assert.Equal(400_000, new FileInfo(incomplete).Length);
        Assert.False(File.Exists(Path.Combine(sandbox.SnapshotDir(RepoId), "model.safetensors")));

        hub.StallFile = null;
        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());

        Assert.Equal(repo.Files["model.safetensors"].Content, File.ReadAllBytes(Path.Combine(directory, "model.safetensors")));
        Assert.Contains(hub.Requests, r => r.Host == "localhost" && r.Range == "bytes=400000-");
        Assert.True(size > 400_000);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task ConcurrentDownloadsOfOneFileProduceOneGoodBlob()
    {
        var repo = AddTinyRinna();
        using var first = sandbox.CreateClient();
        using var second = sandbox.CreateClient();

        var results = await Task.WhenAll(
            first.ResolveAsync(RepoId, HubFileSet.Model, Online()),
            second.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Equal(results[0], results[1]);
        Assert.Equal(1, hub.CdnGets("model.safetensors"));
        Assert.Equal(1, hub.Requests.Count(r => r.Method == "GET" && r.Target.EndsWith("/config.json", StringComparison.Ordinal)));
        Assert.Equal(repo.Files["model.safetensors"].Content, File.ReadAllBytes(Path.Combine(results[0], "model.safetensors")));
        Assert.Empty(Directory.GetFiles(Path.Combine(sandbox.RepoDir(RepoId), "blobs"), "*.incomplete"));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task DownloadWaitsForTheLockHolderAndUsesTheBlobItWrote()
    {
        var repo = AddTinyRinna();
        var weights = repo.Files["model.safetensors"];
        var lockPath = Path.Combine(sandbox.CacheDir, ".locks", "models--rinna--tiny-neox", weights.Etag + ".lock");
        Directory.CreateDirectory(Path.GetDirectoryName(lockPath)!);
        using var client = sandbox.CreateClient();

        Task<string> resolving;
        // Another process holds the lock (an exclusive flock, as Python's filelock takes) while it downloads the blob.
        using (new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None))
        {
            resolving = client.ResolveAsync(RepoId, HubFileSet.Model, Online());
            await WaitUntilAsync(() => sandbox.Logger.Lines.Any(l => l.Contains("Waiting for another download of model.safetensors")));
            Assert.False(resolving.IsCompleted);
            Directory.CreateDirectory(Path.GetDirectoryName(sandbox.BlobPath(RepoId, weights.Etag))!);
            File.WriteAllBytes(sandbox.BlobPath(RepoId, weights.Etag), weights.Content);
        }
        var directory = await resolving;

        Assert.Equal(0, hub.CdnGets("model.safetensors"));
        Assert.Equal(weights.Content, File.ReadAllBytes(Path.Combine(directory, "model.safetensors")));
    }

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData("../../../escaped.safetensors")]
    [InlineData("/tmp/absolute.safetensors")]
    [InlineData("shards/../../escaped.safetensors")]
    [InlineData("..\\escaped.safetensors")]
    [InlineData("C:/escaped.safetensors")]
    [InlineData("shard\u0000.safetensors")]
    [InlineData("")]
    public async Task PathTraversalInTheShardIndexIsRejected(string shardName)
    {
        var repo = hub.AddRepo(RepoId);
        repo.Put("config.json", "{}");
        repo.Put("model.safetensors.index.json",
            System.Text.Json.JsonSerializer.Serialize(new { metadata = new { }, weight_map = new Dictionary<string, string> { ["gpt_neox.embed_in.weight"] = shardName } }));
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Contains("unsafe file name", error.Message);
        Assert.Equal(shardName, error.FileName);
        Assert.DoesNotContain(hub.Requests, r => r.Target.Contains("escaped", StringComparison.Ordinal));
        Assert.Empty(Directory.GetFiles(sandbox.Root, "escaped*", SearchOption.AllDirectories));
        Assert.Empty(Directory.GetFiles("/tmp", "absolute.safetensors"));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task MalformedCommitFromTheServerNeverBecomesAPath()
    {
        AddTinyRinna().CommitHeader = "../../../outside";
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Contains("malformed commit", error.Message);
        Assert.False(Directory.Exists(Path.Combine(sandbox.Root, "outside")));
    }
}
