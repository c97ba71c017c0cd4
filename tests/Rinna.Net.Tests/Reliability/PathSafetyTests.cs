using Rinna.Net.Hub;
using Rinna.Net.Tests.Hub;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// Names that come from the caller or the server (revisions, shard names in an index, etags) can never make the library
/// read or write outside its cache: what the Hub tests already cover (plain <c>..</c>, absolute paths, backslashes, NUL,
/// malformed commits, offline revisions) is not repeated; these add the encoded, odd-character and online variants, and
/// check the whole file tree after each attempt.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class PathSafetyTests : IAsyncLifetime
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

    private HubOptions Online(string? revision = null) => new() { Endpoint = hub.Endpoint, Revision = revision };

    [Theory]
    [InlineData("../../../outside")]
    [InlineData("main/../../../outside")]
    [InlineData("%2e%2e/%2e%2e/outside")]
    [InlineData("..%2F..%2Foutside")]
    [InlineData("refs/pr/1/../../../../outside")]
    [InlineData("main\noutside")]
    [InlineData("~/outside")]
    [InlineData("main\n")]
    public async Task RevisionThatCouldLeaveTheCacheIsRefusedBeforeAnyRequest(string revision)
    {
        hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-rinna"));
        using var client = sandbox.CreateClient();

        await Assert.ThrowsAsync<ArgumentException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online(revision)));

        Assert.Empty(hub.Requests);
        AssertNothingWrittenOutsideTheCache();
    }

    [Theory]
    [InlineData("%2e%2e/escaped.safetensors")]
    [InlineData("shards%2F..%2F..%2Fescaped.safetensors")]
    [InlineData("shards/./escaped.safetensors")]
    [InlineData("escaped.safetensors\n")]
    [InlineData("~/escaped.safetensors")]
    [InlineData("shards//escaped.safetensors")]
    [InlineData("escaped.safetensors/")]
    public async Task ShardNameWithEncodedOrOddCharactersIsRefused(string shardName)
    {
        var repo = hub.AddRepo(RepoId);
        repo.Put("config.json", "{}");
        repo.Put("model.safetensors.index.json",
            System.Text.Json.JsonSerializer.Serialize(new { weight_map = new Dictionary<string, string> { ["gpt_neox.embed_in.weight"] = shardName } }));
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Contains("unsafe file name", error.Message);
        Assert.DoesNotContain(hub.Requests, r => r.Target.Contains("escaped", StringComparison.Ordinal));
        AssertNothingWrittenOutsideTheCache();
    }

    [Theory]
    [InlineData("../../../escaped")]
    [InlineData("..")]
    [InlineData("a/b")]
    [InlineData("%2e%2e")]
    public async Task EtagThatCouldNameAPathIsRefused(string etag)
    {
        hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-rinna"));
        hub.Intercept = context =>
        {
            if (context.Request.Host.Host != "127.0.0.1" || !context.Request.Path.Value!.EndsWith("/config.json", StringComparison.Ordinal))
                return Task.FromResult(false);
            context.Response.Headers["X-Repo-Commit"] = FakeRepo.MainCommit;
            context.Response.Headers.ETag = $"\"{etag}\"";
            context.Response.ContentLength = 2;
            return Task.FromResult(true);
        };
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Contains("etag", error.Message);
        AssertNothingWrittenOutsideTheCache();
        Assert.True(!Directory.Exists(sandbox.CacheDir) || Directory.GetFiles(sandbox.CacheDir, "escaped*", SearchOption.AllDirectories).Length == 0);
    }

    [Theory]
    [InlineData("rinna/tiny-neox\n")]
    [InlineData("rinna/tiny-neox/../../x")]
    [InlineData("rinna%2F..%2F..%2Fx")]
    public async Task ModelIdThatIsNotAPlainRepoIdIsRefusedBeforeAnyRequest(string modelId)
    {
        hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-rinna"));
        using var client = sandbox.CreateClient();

        await Assert.ThrowsAsync<ArgumentException>(() => client.ResolveAsync(modelId, HubFileSet.Model, Online()));

        Assert.Empty(hub.Requests);
        AssertNothingWrittenOutsideTheCache();
    }

    [Fact]
    public async Task AFullDownloadWritesOnlyInsideTheCache()
    {
        hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-pythia"), Fixtures.Tokenizer("bilingual-lookalike"));
        using var client = sandbox.CreateClient();

        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online());

        Assert.StartsWith(sandbox.CacheDir + Path.DirectorySeparatorChar, directory);
        AssertNothingWrittenOutsideTheCache();
        foreach (var entry in Directory.GetFileSystemEntries(sandbox.CacheDir, "*", SearchOption.AllDirectories))
            if (new FileInfo(entry).LinkTarget is { } target)
                Assert.StartsWith(sandbox.CacheDir + Path.DirectorySeparatorChar, Path.GetFullPath(target, Path.GetDirectoryName(entry)!));
    }

    /// <summary>The sandbox is the HOME of the client; anything in it besides the cache directory was written outside.</summary>
    private void AssertNothingWrittenOutsideTheCache() =>
        Assert.All(Directory.GetFileSystemEntries(sandbox.Root), entry => Assert.Equal(sandbox.CacheDir, entry));
}
