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

    public HubClient CreateClient(HubRetryPolicy? retryPolicy = null) =>
        new(new SocketsHttpHandler { AllowAutoRedirect = false }, disposeHandler: true, Logger,
            name => Environment.GetValueOrDefault(name), retryPolicy ?? FastRetries);

    public string RepoDir(string repoId) => System.IO.Path.Combine(CacheDir, "models--" + repoId.Replace("/", "--"));

    public string SnapshotDir(string repoId, string commit = FakeRepo.MainCommit) => System.IO.Path.Combine(RepoDir(repoId), "snapshots", commit);

    public string BlobPath(string repoId, string etag) => System.IO.Path.Combine(RepoDir(repoId), "blobs", etag);

    public void Dispose() => root.Delete(recursive: true);
}
