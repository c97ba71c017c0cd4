using System.Security.Cryptography;
using System.Text;
using Rinna.Net.Hub;

namespace Rinna.Net.Tests.Hub;

/// <summary>Resolution without a network: caches written by Python's huggingface_hub, offline switches, local directories.</summary>
public sealed class HubClientOfflineTests : IDisposable
{
    private const string RepoId = "rinna/japanese-gpt-neox-3.6b";
    private const string Commit = "1c9c3a4bd0e1f2a3b4c5d6e7f8091a2b3c4d5e6f";

    /// <summary>Nothing listens here, so any attempt to go online fails instead of reaching the internet.</summary>
    private const string DeadEndpoint = "http://127.0.0.1:9";

    private readonly HubSandbox sandbox = new();

    public void Dispose() => sandbox.Dispose();

    /// <summary>
    /// Writes a cache entry the way huggingface_hub 0.2x writes it: blobs named by git sha1 (small files) or sha256 (LFS),
    /// snapshot entries as relative symlinks <c>../../blobs/&lt;etag&gt;</c>, <c>refs/&lt;revision&gt;</c> holding the commit without
    /// a newline, and an empty <c>.no_exist</c> marker for a file the hub answered 404 for.
    /// </summary>
    private string WritePythonCache(string revisionRef = "main")
    {
        var repoDir = sandbox.RepoDir(RepoId);
        var snapshot = Path.Combine(repoDir, "snapshots", Commit);
        Directory.CreateDirectory(Path.Combine(repoDir, "blobs"));
        Directory.CreateDirectory(snapshot);
        var model = Fixtures.Model("tiny-neox-rinna");
        var tokenizer = Fixtures.Tokenizer("ja-3.6b-lookalike");
        foreach (var source in new[]
                 {
                     Path.Combine(model, "config.json"), Path.Combine(model, "model.safetensors"),
                     Path.Combine(tokenizer, "spiece.model"), Path.Combine(tokenizer, "tokenizer_config.json"),
                 })
        {
            var content = File.ReadAllBytes(source);
            var name = Path.GetFileName(source);
            var etag = FakeFile.Create(name, content).Etag;
            File.WriteAllBytes(Path.Combine(repoDir, "blobs", etag), content);
            File.CreateSymbolicLink(Path.Combine(snapshot, name), $"../../blobs/{etag}");
        }
        var refPath = Path.Combine(repoDir, "refs", revisionRef);
        Directory.CreateDirectory(Path.GetDirectoryName(refPath)!);
        File.WriteAllText(refPath, Commit);
        var noExist = Path.Combine(repoDir, ".no_exist", Commit);
        Directory.CreateDirectory(noExist);
        File.WriteAllBytes(Path.Combine(noExist, "generation_config.json"), []);
        return snapshot;
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task SnapshotWrittenByPythonIsFoundWithLocalFilesOnly()
    {
        var snapshot = WritePythonCache();
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer,
            new HubOptions { LocalFilesOnly = true, Endpoint = DeadEndpoint });

        Assert.Equal(snapshot, directory);
        Assert.Equal(File.ReadAllBytes(Fixtures.Path("models", "tiny-neox-rinna", "model.safetensors")),
            File.ReadAllBytes(Path.Combine(directory, "model.safetensors")));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task HfHubOfflineAndHfHomeFindThePythonCache()
    {
        sandbox.Environment.Remove("HF_HUB_CACHE");
        sandbox.Environment["HF_HOME"] = Path.Combine(sandbox.Root);
        sandbox.Environment["HF_HUB_OFFLINE"] = "1";
        sandbox.Environment["HF_ENDPOINT"] = DeadEndpoint;
        var snapshot = WritePythonCache();
        using var client = sandbox.CreateClient();

        Assert.Equal(snapshot, await client.ResolveAsync(RepoId, HubFileSet.Model));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task TagsPullRequestRefsAndCommitHashesResolveOffline()
    {
        var snapshot = WritePythonCache("refs/pr/1");
        using var client = sandbox.CreateClient();

        Assert.Equal(snapshot, await client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { LocalFilesOnly = true, Revision = "refs/pr/1" }));
        Assert.Equal(snapshot, await client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { LocalFilesOnly = true, Revision = Commit }));
        var error = await Assert.ThrowsAsync<HubException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { LocalFilesOnly = true, Revision = "main" }));
        Assert.Contains("'main'", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task LocalFilesOnlyWithoutACacheFailsClearlyWithoutNetwork()
    {
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { LocalFilesOnly = true, Endpoint = DeadEndpoint }));

        Assert.Null(error.StatusCode);
        Assert.Equal(RepoId, error.RepoId);
        Assert.Contains("LocalFilesOnly", error.Message);
        Assert.Contains("HF_HUB_OFFLINE", error.Message);
        Assert.Contains(sandbox.CacheDir, error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task OfflineWithAPartialCacheNamesTheMissingFile()
    {
        var snapshot = WritePythonCache();
        File.Delete(Path.Combine(snapshot, "model.safetensors"));
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { LocalFilesOnly = true }));

        Assert.Contains("no weights", error.Message);
        Assert.Contains("offline", error.Message);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task ExistingDirectoryIsUsedAsIs()
    {
        using var client = sandbox.CreateClient();
        var model = Fixtures.Model("tiny-neox-rinna");

        Assert.Equal(Path.GetFullPath(model), await client.ResolveAsync(model, HubFileSet.Model, new HubOptions { Endpoint = DeadEndpoint }));
    }

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData("./no/such/directory")]
    [InlineData("org/name/extra")]
    [InlineData("org--x/name")]
    [InlineData("org/../name")]
    [InlineData("C:\\models\\x")]
    public async Task NeitherDirectoryNorModelIdIsAnArgumentError(string modelIdOrPath)
    {
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<ArgumentException>(() => client.ResolveAsync(modelIdOrPath, HubFileSet.Model));

        Assert.Contains(modelIdOrPath, error.Message);
    }

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData("../../etc")]
    [InlineData("/main")]
    [InlineData("refs/../../x")]
    [InlineData("main\\x")]
    [InlineData("refs//pr")]
    public async Task RevisionsThatCouldLeaveTheCacheAreRejected(string revision)
    {
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<ArgumentException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { Revision = revision, LocalFilesOnly = true }));

        Assert.Contains(revision, error.Message);
    }

    [Fact]
    public void HandlerThatFollowsRedirectsIsRefused()
    {
        using var handler = new SocketsHttpHandler();
        Assert.Throws<ArgumentException>(() => new HubClient(handler));
    }
}

/// <summary>The option → environment → default chain of huggingface_hub's constants.</summary>
public sealed class HubSettingsTests
{
    private static HubSettings Resolve(Dictionary<string, string> environment, HubOptions? options = null) =>
        HubSettings.Resolve(options, name => environment.GetValueOrDefault(name));

    [Fact]
    public void DefaultsMatchHuggingfaceHub()
    {
        var settings = Resolve(new() { ["HOME"] = "/home/u" });

        Assert.Equal("/home/u/.cache/huggingface/hub", settings.CacheDir);
        Assert.Equal("https://huggingface.co", settings.Endpoint);
        Assert.Equal("main", settings.Revision);
        Assert.Null(settings.Token);
        Assert.False(settings.Offline);
        Assert.Equal(TimeSpan.FromSeconds(10), settings.MetadataTimeout);
    }

    [Fact]
    public void CacheDirectoryPrecedence()
    {
        Assert.Equal("/x/huggingface/hub", Resolve(new() { ["HOME"] = "/h", ["XDG_CACHE_HOME"] = "/x" }).CacheDir);
        Assert.Equal("/hf/hub", Resolve(new() { ["HOME"] = "/h", ["XDG_CACHE_HOME"] = "/x", ["HF_HOME"] = "/hf" }).CacheDir);
        Assert.Equal("/legacy", Resolve(new() { ["HOME"] = "/h", ["HF_HOME"] = "/hf", ["HUGGINGFACE_HUB_CACHE"] = "/legacy" }).CacheDir);
        Assert.Equal("/cache", Resolve(new() { ["HOME"] = "/h", ["HUGGINGFACE_HUB_CACHE"] = "/legacy", ["HF_HUB_CACHE"] = "/cache" }).CacheDir);
        Assert.Equal("/h/mine", Resolve(new() { ["HOME"] = "/h", ["HF_HUB_CACHE"] = "/cache" }, new HubOptions { CacheDir = "~/mine" }).CacheDir);
    }

    [Fact]
    public void TokenPrecedenceEndsWithTheStoredTokenFile()
    {
        var home = Directory.CreateTempSubdirectory("rinna-hub-token-");
        try
        {
            File.WriteAllText(Path.Combine(home.FullName, "token"), "hf_stored\n");
            var environment = new Dictionary<string, string> { ["HOME"] = "/h", ["HF_HOME"] = home.FullName };
            Assert.Equal("hf_stored", Resolve(environment).Token);
            environment["HUGGING_FACE_HUB_TOKEN"] = "hf_legacy";
            Assert.Equal("hf_legacy", Resolve(environment).Token);
            environment["HF_TOKEN"] = "hf_env";
            Assert.Equal("hf_env", Resolve(environment).Token);
            Assert.Equal("hf_option", Resolve(environment, new HubOptions { Token = "hf_option" }).Token);
        }
        finally
        {
            home.Delete(recursive: true);
        }
    }

    [Theory]
    [InlineData("1", true)]
    [InlineData("true", true)]
    [InlineData("YES", true)]
    [InlineData("on", true)]
    [InlineData("0", false)]
    [InlineData("false", false)]
    public void OfflineSwitchAcceptsHuggingfaceHubSpellings(string value, bool offline)
    {
        Assert.Equal(offline, Resolve(new() { ["HOME"] = "/h", ["HF_HUB_OFFLINE"] = value }).Offline);
        Assert.Equal(offline, Resolve(new() { ["HOME"] = "/h", ["TRANSFORMERS_OFFLINE"] = value }).Offline);
    }

    [Fact]
    public void EndpointAndTimeoutsFromTheEnvironment()
    {
        var settings = Resolve(new() { ["HOME"] = "/h", ["HF_ENDPOINT"] = "https://mirror.example/", ["HF_HUB_ETAG_TIMEOUT"] = "2.5", ["HF_HUB_DOWNLOAD_TIMEOUT"] = "30" });

        Assert.Equal("https://mirror.example", settings.Endpoint);
        Assert.Equal(TimeSpan.FromSeconds(2.5), settings.MetadataTimeout);
        Assert.Equal(TimeSpan.FromSeconds(30), settings.ReadTimeout);
        Assert.Throws<ArgumentException>(() => Resolve(new() { ["HOME"] = "/h" }, new HubOptions { Endpoint = "ftp://x" }));
    }

    [Fact]
    public void DownloadBoundsDefaultToTheHubsLimitsAndOptionsOverrideTheEnvironment()
    {
        var defaults = Resolve(new() { ["HOME"] = "/h" });
        Assert.Equal(50L << 30, defaults.MaxFileSize);
        Assert.Equal(TimeSpan.FromMinutes(2), defaults.MetadataDeadline);
        Assert.Null(defaults.DownloadDeadline);
        // One minute, plus the file at 64 KiB/s: a 3.69 MB tokenizer model gets about two minutes.
        Assert.Equal(TimeSpan.FromSeconds(60 + 3_690_000 / 65536.0), defaults.DownloadDeadlineFor(3_690_000));
        Assert.Equal(TimeSpan.FromSeconds(60 + (50L << 30) / 65536.0), defaults.DownloadDeadlineFor(null));

        var set = Resolve(
            new() { ["HOME"] = "/h", ["HF_HUB_ETAG_TIMEOUT"] = "7", ["HF_HUB_DOWNLOAD_TIMEOUT"] = "8" },
            new HubOptions
            {
                MetadataTimeout = TimeSpan.FromSeconds(1),
                DownloadTimeout = TimeSpan.FromSeconds(2),
                MetadataDeadline = TimeSpan.FromSeconds(3),
                DownloadDeadline = TimeSpan.FromSeconds(4),
                MaxFileSize = 5,
            });
        Assert.Equal(TimeSpan.FromSeconds(1), set.MetadataTimeout);
        Assert.Equal(TimeSpan.FromSeconds(2), set.ReadTimeout);
        Assert.Equal(TimeSpan.FromSeconds(3), set.MetadataDeadline);
        Assert.Equal(TimeSpan.FromSeconds(4), set.DownloadDeadlineFor(7_000_000_000));
        Assert.Equal(5, set.MaxFileSize);
        Assert.Equal(Timeout.InfiniteTimeSpan, Resolve(new() { ["HOME"] = "/h" }, new HubOptions { DownloadDeadline = Timeout.InfiniteTimeSpan }).DownloadDeadlineFor(1));
    }

    [Theory]
    [InlineData(nameof(HubOptions.MetadataTimeout))]
    [InlineData(nameof(HubOptions.DownloadTimeout))]
    [InlineData(nameof(HubOptions.MetadataDeadline))]
    [InlineData(nameof(HubOptions.DownloadDeadline))]
    [InlineData(nameof(HubOptions.MaxFileSize))]
    public void ZeroOrNegativeBoundsAreRefusedNamingTheOption(string option)
    {
        var options = new HubOptions();
        if (option == nameof(HubOptions.MaxFileSize)) options.MaxFileSize = 0;
        else typeof(HubOptions).GetProperty(option)!.SetValue(options, TimeSpan.FromSeconds(-1));

        var error = Assert.Throws<ArgumentOutOfRangeException>(() => Resolve(new() { ["HOME"] = "/h" }, options));
        Assert.Contains($"HubOptions.{option}", error.Message);
    }

    [Theory]
    [InlineData("hf_abc\r\nX-Injected: 1")]
    [InlineData("hf_abc def")]
    [InlineData("hf_\u00e9")]
    public void ATokenThatCannotBeAHeaderValueIsRefusedWithoutShowingIt(string token)
    {
        var error = Assert.Throws<ArgumentException>(() => Resolve(new() { ["HOME"] = "/home/u", ["HF_TOKEN"] = token }));
        Assert.DoesNotContain("hf_", error.Message);
        Assert.Contains("token", error.Message);
    }

    [Fact]
    public void AStoredTokenFileThatIsADeviceIsNotReadWhole()
    {
        var error = Assert.Throws<ArgumentException>(() => Resolve(new() { ["HOME"] = "/home/u", ["HF_TOKEN_PATH"] = "/dev/zero" }));
        Assert.Contains("/dev/zero", error.Message);
    }

    [Fact]
    public async Task AStoredTokenFileThatIsANamedPipeIsRefusedWithoutWaiting()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("named pipes are made with mkfifo on Linux.");
        var fifo = Path.Combine(Path.GetTempPath(), $"rinna-token-fifo-{Guid.NewGuid():N}");
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", fifo)) await mkfifo.WaitForExitAsync(TestContext.Current.CancellationToken);
        try
        {
            // Opening a FIFO for reading blocks until a writer comes; the check must fail at once instead.
            var resolve = Task.Run(() => Resolve(new() { ["HOME"] = "/home/u", ["HF_TOKEN_PATH"] = fifo }));
            var error = await Assert.ThrowsAsync<ArgumentException>(() => resolve.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken));
            Assert.Contains(fifo, error.Message);
        }
        finally
        {
            File.Delete(fifo);
        }
    }
}
