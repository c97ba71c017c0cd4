using System.Text;
using Rinna.Net.Hub;
using Rinna.Net.Tests.Hub;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// Downloads interrupted at seeded random points, with the on-disk damage a killed process or a power cut leaves, then
/// restarted: the cache may hold a resumable <c>.incomplete</c> file, but never a blob whose content does not match its
/// etag, nor a snapshot entry pointing at a missing blob. A server lying about size or etag is caught the same way.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class DownloadCrashTests : IAsyncLifetime
{
    private const string RepoId = "rinna/tiny-neox";
    private FakeHub hub = null!;
    private FakeRepo repo = null!;

    public async ValueTask InitializeAsync()
    {
        hub = await FakeHub.StartAsync();
        repo = hub.AddRepo(RepoId, Fixtures.Model("tiny-neox-rinna"), Fixtures.Tokenizer("bilingual-lookalike"));
    }

    public async ValueTask DisposeAsync() => await hub.DisposeAsync();

    private HubOptions Online() => new() { Endpoint = hub.Endpoint };

    /// <summary>What a crash leaves in the <c>.incomplete</c> file besides the bytes written so far.</summary>
    public enum Damage
    {
        None,
        /// <summary>Delayed allocation after a power cut: the file has its length but the last block reads as zeros.</summary>
        ZeroedTail,
        /// <summary>Writes lost after the last flush: the file is shorter than what was reported.</summary>
        LostTail,
    }

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData(1, "model.safetensors", Damage.None)]
    [InlineData(2, "model.safetensors", Damage.ZeroedTail)]
    [InlineData(3, "model.safetensors", Damage.LostTail)]
    [InlineData(4, "spiece.model", Damage.ZeroedTail)]
    [InlineData(5, "config.json", Damage.ZeroedTail)]
    [InlineData(6, "tokenizer_config.json", Damage.ZeroedTail)]
    [InlineData(7, "generation_config.json", Damage.LostTail)]
    public async Task KilledAtARandomPointThenRestartedLeavesOnlyVerifiedBlobs(int seed, string file, Damage damage)
    {
        using var sandbox = new HubSandbox();
        var random = new Random(seed);
        var real = repo.Files[file];
        int cut = 1 + random.Next(real.Content.Length - 1);
        var incomplete = sandbox.BlobPath(RepoId, real.Etag) + ".incomplete";
        var stalled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bool killed = false;
        // The server sends the first `cut` bytes of the file, then nothing: the process is "killed" at exactly that byte.
        // Afterwards it serves the file with Range support, as the real hub does for plain git files too.
        hub.Intercept = async context =>
        {
            var path = context.Request.Path.Value!;
            if (context.Request.Method != "GET" || (real.IsLfs ? path != $"/cdn/{real.Sha256}" : !(path.Contains("/resolve/") && path.EndsWith($"/{file}", StringComparison.Ordinal))))
                return false;
            context.Response.Headers["X-Repo-Commit"] = FakeRepo.MainCommit;
            context.Response.Headers.ETag = $"\"{real.GitSha1}\"";
            if (killed)
            {
                int start = context.Request.Headers.Range.ToString() is { Length: > 0 } range ? int.Parse(range["bytes=".Length..].TrimEnd('-')) : 0;
                if (start > 0)
                {
                    context.Response.StatusCode = 206;
                    context.Response.Headers.ContentRange = $"bytes {start}-{real.Content.Length - 1}/{real.Content.Length}";
                }
                context.Response.ContentLength = real.Content.Length - start;
                await context.Response.Body.WriteAsync(real.Content.AsMemory(start));
                return true;
            }
            context.Response.ContentLength = real.Content.Length;
            await context.Response.Body.WriteAsync(real.Content.AsMemory(0, cut));
            await context.Response.Body.FlushAsync();
            stalled.TrySetResult();
            try
            {
                await Task.Delay(Timeout.Infinite, context.RequestAborted);
            }
            catch (OperationCanceledException)
            {
            }
            return true;
        };
        using (var kill = new CancellationTokenSource())
        using (var client = sandbox.CreateClient())
        {
            var resolving = client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online(), cancellationToken: kill.Token);
            await stalled.Task.WaitAsync(TimeSpan.FromSeconds(30));
            await WaitUntilAsync(() => File.Exists(incomplete) && new FileInfo(incomplete).Length == cut);
            kill.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => resolving);
        }
        killed = true;
        Inflict(incomplete, damage, random);
        AssertCacheConsistent(sandbox);

        // Restart: a fresh client, as a new process would be. A damaged partial file may cost one failed attempt (its
        // checksum does not match), never a corrupt blob; the attempt after that must succeed.
        string directory;
        using (var client = sandbox.CreateClient())
        {
            try
            {
                directory = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online());
            }
            catch (HubException error) when (damage != Damage.None)
            {
                Assert.Contains("corrupt", error.Message);
                AssertCacheConsistent(sandbox);
                directory = await client.ResolveAsync(RepoId, HubFileSet.Model | HubFileSet.Tokenizer, Online());
            }
        }
        AssertCacheConsistent(sandbox);
        foreach (var name in new[] { "config.json", "model.safetensors", "spiece.model", "tokenizer_config.json" })
            Assert.Equal(repo.Files[name].Content, File.ReadAllBytes(Path.Combine(directory, name)));
    }

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData("model.safetensors", false)]
    [InlineData("model.safetensors", true)]
    [InlineData("config.json", false)]
    [InlineData("config.json", true)]
    public async Task CrashBetweenVerifyAndRenameIsRecovered(string file, bool contentDamaged)
    {
        // The window between the checksum and File.Move leaves a complete .incomplete file and no blob or link.
        using var sandbox = new HubSandbox();
        var content = (byte[])repo.Files[file].Content.Clone();
        if (contentDamaged) content[^1] ^= 0x55; // complete length, but not the bytes the checksum saw: a torn write
        var blob = sandbox.BlobPath(RepoId, repo.Files[file].Etag);
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        File.WriteAllBytes(blob + ".incomplete", content);

        using var client = sandbox.CreateClient();
        if (contentDamaged)
        {
            var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));
            Assert.Equal(file, error.FileName);
            AssertCacheConsistent(sandbox);
        }
        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());

        AssertCacheConsistent(sandbox);
        Assert.Equal(repo.Files[file].Content, File.ReadAllBytes(Path.Combine(directory, file)));
        Assert.False(File.Exists(blob + ".incomplete"));
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task SnapshotLinkToADeletedBlobIsRepairedOnlineAndReportedOffline()
    {
        using var sandbox = new HubSandbox();
        using var client = sandbox.CreateClient();
        var directory = await client.ResolveAsync(RepoId, HubFileSet.Model, Online());
        File.Delete(sandbox.BlobPath(RepoId, repo.Files["model.safetensors"].Etag));

        var offline = await Assert.ThrowsAsync<HubException>(() =>
            client.ResolveAsync(RepoId, HubFileSet.Model, new HubOptions { LocalFilesOnly = true }));
        Assert.Contains("no weights", offline.Message);

        Assert.Equal(directory, await client.ResolveAsync(RepoId, HubFileSet.Model, Online()));
        AssertCacheConsistent(sandbox);
        Assert.Equal(repo.Files["model.safetensors"].Content, File.ReadAllBytes(Path.Combine(directory, "model.safetensors")));
    }

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData("model.safetensors", "X-Linked-Size", "+4096")] // LFS: the CDN serves less than announced
    [InlineData("model.safetensors", "X-Linked-Size", "-4096")] // LFS: the CDN serves more than announced
    [InlineData("model.safetensors", "X-Linked-Etag", "other content")] // LFS: the etag names other content
    [InlineData("config.json", "ETag", "other content")] // plain git file: the etag is another file's git blob sha1
    public async Task ServerLyingAboutSizeOrEtagIsCaughtAndNothingEntersTheCache(string file, string header, string lie)
    {
        using var sandbox = new HubSandbox();
        var real = repo.Files[file];
        hub.Intercept = async context =>
        {
            if (context.Request.Host.Host != "127.0.0.1" || !context.Request.Path.Value!.EndsWith("/" + file, StringComparison.Ordinal)) return false;
            context.Response.Headers["X-Repo-Commit"] = FakeRepo.MainCommit;
            context.Response.Headers.ETag = $"\"{real.GitSha1}\"";
            if (real.IsLfs)
            {
                context.Response.StatusCode = 302;
                context.Response.Headers.Location = $"http://localhost:{hub.Port}/cdn/{real.Sha256}";
                context.Response.Headers["X-Linked-Etag"] = $"\"{real.Sha256}\"";
                context.Response.Headers["X-Linked-Size"] = real.Content.Length.ToString();
            }
            var other = FakeFile.Create(file, Encoding.UTF8.GetBytes(lie));
            context.Response.Headers[header] = header switch
            {
                "X-Linked-Size" => (real.Content.Length + int.Parse(lie)).ToString(),
                "X-Linked-Etag" => $"\"{other.Sha256}\"",
                _ => $"\"{other.GitSha1}\"",
            };
            if (!real.IsLfs)
            {
                context.Response.ContentLength = real.Content.Length;
                if (context.Request.Method == "GET") await context.Response.Body.WriteAsync(real.Content);
            }
            return true;
        };
        using var client = sandbox.CreateClient();

        var error = await Assert.ThrowsAsync<HubException>(() => client.ResolveAsync(RepoId, HubFileSet.Model, Online()));

        Assert.Equal(file, error.FileName);
        AssertCacheConsistent(sandbox);
        Assert.False(File.Exists(Path.Combine(sandbox.SnapshotDir(RepoId), file)));
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for the partial download to reach the cut");
            await Task.Delay(10);
        }
    }

    private static void Inflict(string incomplete, Damage damage, Random random)
    {
        var length = new FileInfo(incomplete).Length;
        if (length == 0 || damage == Damage.None) return;
        using var stream = new FileStream(incomplete, FileMode.Open, FileAccess.ReadWrite);
        int tail = (int)Math.Min(length, 1 + random.Next(4096));
        if (damage == Damage.LostTail)
        {
            stream.SetLength(length - tail);
            return;
        }
        stream.Seek(-tail, SeekOrigin.End);
        stream.Write(new byte[tail]);
    }

    /// <summary>Every blob matches its etag, and every snapshot entry is a link to an existing blob with the same content.</summary>
    private void AssertCacheConsistent(HubSandbox sandbox)
    {
        var repoDir = sandbox.RepoDir(RepoId);
        var blobs = Path.Combine(repoDir, "blobs");
        if (Directory.Exists(blobs))
            foreach (var blob in Directory.GetFiles(blobs).Where(p => !p.EndsWith(".incomplete", StringComparison.Ordinal)))
            {
                var etag = Path.GetFileName(blob);
                var content = File.ReadAllBytes(blob);
                var expected = FakeFile.Create("x", content);
                Assert.True(etag == expected.Sha256 || etag == expected.GitSha1, $"blob {etag} holds content whose checksums do not match its name");
            }
        var snapshots = Path.Combine(repoDir, "snapshots");
        if (Directory.Exists(snapshots))
            foreach (var entry in Directory.GetFiles(snapshots, "*", SearchOption.AllDirectories))
            {
                var info = new FileInfo(entry);
                Assert.NotNull(info.LinkTarget);
                var target = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(entry)!, info.LinkTarget!));
                Assert.True(File.Exists(target), $"snapshot entry {entry} points at missing blob {target}");
                Assert.Equal(repo.Files[Path.GetFileName(entry)].Content, File.ReadAllBytes(target));
            }
    }
}
