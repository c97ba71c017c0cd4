using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Rinna.Net.Hub;

namespace Rinna.Net.Tests.Hub;

/// <summary>Collects every log line (message and exception) so tests can look for leaked secrets.</summary>
internal sealed class RecordingLogger : ILogger
{
    public ConcurrentQueue<string> Lines { get; } = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Lines.Enqueue($"{logLevel}: {formatter(state, exception)} {exception}");
}

/// <summary>Reports synchronously, in order, unlike <see cref="Progress{T}"/>.</summary>
internal sealed class RecordingProgress(Action<DownloadProgress>? onReport = null) : IProgress<DownloadProgress>
{
    public ConcurrentQueue<DownloadProgress> Reports { get; } = new();

    public void Report(DownloadProgress value)
    {
        Reports.Enqueue(value);
        onReport?.Invoke(value);
    }
}

/// <summary>A private cache directory and environment per test, so tests run in parallel without touching the process environment.</summary>
internal sealed class HubSandbox : IDisposable
{
    /// <summary>
    /// The limit of every test that talks to a hub: far beyond what any needs (seconds), so a regression that hangs fails
    /// the test instead of the whole run.
    /// </summary>
    public const int TestTimeoutMs = 120_000;

    public static readonly HubRetryPolicy FastRetries = new(4, TimeSpan.FromMilliseconds(5), TimeSpan.FromMilliseconds(20));

    private readonly DirectoryInfo root = Directory.CreateTempSubdirectory("rinna-hub-");

    public HubSandbox()
    {
        Environment["HOME"] = Root;
        Environment["HF_HUB_CACHE"] = CacheDir;
    }

    public string Root => root.FullName;

    public string CacheDir => System.IO.Path.Combine(Root, "hub");

    public Dictionary<string, string> Environment { get; } = new();

    public RecordingLogger Logger { get; } = new();

    public HubClient CreateClient(HubRetryPolicy? retryPolicy = null, HubStorage? storage = null) =>
        new(new SocketsHttpHandler { AllowAutoRedirect = false }, disposeHandler: true, Logger,
            name => Environment.GetValueOrDefault(name), retryPolicy ?? FastRetries, storage);

    public string RepoDir(string repoId) => System.IO.Path.Combine(CacheDir, "models--" + repoId.Replace("/", "--"));

    public string SnapshotDir(string repoId, string commit = FakeRepo.MainCommit) => System.IO.Path.Combine(RepoDir(repoId), "snapshots", commit);

    public string BlobPath(string repoId, string etag) => System.IO.Path.Combine(RepoDir(repoId), "blobs", etag);

    public void Dispose() => root.Delete(recursive: true);
}

/// <summary>
/// A disk as a test wants it: a chosen amount of free space, writes that fail with ENOSPC past a byte count, and a record of
/// the largest <c>.incomplete</c> file ever written (to prove a download never wrote past its bound).
/// </summary>
internal sealed class FakeStorage : HubStorage
{
    private readonly ConcurrentDictionary<string, long> largest = new();

    /// <summary>Free space to report; <c>null</c> asks the real file system.</summary>
    public long? FreeBytes { get; set; }

    /// <summary>Writes that would make an <c>.incomplete</c> file longer than this fail as a full disk does.</summary>
    public long? DiskFullAt { get; set; }

    /// <summary>The longest the <c>.incomplete</c> file at <paramref name="path"/> ever was; 0 if it was never written.</summary>
    public long LargestFile(string path) => largest.GetValueOrDefault(path);

    public override long? AvailableBytes(string directory) => FreeBytes ?? base.AvailableBytes(directory);

    public override Stream OpenIncomplete(string path) => new WatchedStream(base.OpenIncomplete(path), this, path);

    private void Saw(string path, long length) => largest.AddOrUpdate(path, length, (_, seen) => Math.Max(seen, length));

    private sealed class WatchedStream(Stream inner, FakeStorage storage, string path) : Stream
    {
        public override bool CanRead => inner.CanRead;
        public override bool CanSeek => inner.CanSeek;
        public override bool CanWrite => inner.CanWrite;
        public override long Length => inner.Length;

        public override long Position
        {
            get => inner.Position;
            set => inner.Position = value;
        }

        public override void Flush() => inner.Flush();
        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);
        public override long Seek(long offset, SeekOrigin origin) => inner.Seek(offset, origin);
        public override void SetLength(long value) => inner.SetLength(value);

        public override void Write(byte[] buffer, int offset, int count) =>
            WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (storage.DiskFullAt is { } full && inner.Position + buffer.Length > full)
            {
                // A full disk takes what fits, then refuses, as write(2) does before ENOSPC.
                var fits = (int)Math.Max(0, full - inner.Position);
                await inner.WriteAsync(buffer[..fits], cancellationToken);
                storage.Saw(path, inner.Length);
                throw new IOException("No space left on device", 28);
            }
            await inner.WriteAsync(buffer, cancellationToken);
            storage.Saw(path, inner.Length);
        }

        public override ValueTask DisposeAsync() => inner.DisposeAsync();

        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }
}
