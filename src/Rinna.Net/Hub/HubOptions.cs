namespace Rinna.Net.Hub;

/// <summary>
/// Where and how <c>FromPretrainedAsync</c> finds a model: the options huggingface_hub's <c>from_pretrained</c> takes.
/// Unset options fall back to the same environment variables and defaults as Python, so both share one cache.
/// </summary>
public class HubOptions
{
    /// <summary>Branch, tag, commit hash or <c>refs/pr/N</c>; <c>null</c> means <c>main</c>.</summary>
    public string? Revision { get; set; }

    /// <summary>
    /// Hub cache directory; <c>null</c> means <c>HF_HUB_CACHE</c>, then <c>HUGGINGFACE_HUB_CACHE</c>, then <c>HF_HOME/hub</c>,
    /// then <c>$XDG_CACHE_HOME/huggingface/hub</c>, then <c>~/.cache/huggingface/hub</c>.
    /// </summary>
    public string? CacheDir { get; set; }

    /// <summary>
    /// Never touch the network; use only what the cache holds (also forced by <c>HF_HUB_OFFLINE=1</c> or <c>TRANSFORMERS_OFFLINE=1</c>).
    /// </summary>
    public bool LocalFilesOnly { get; set; }

    /// <summary>
    /// Access token for gated or private repositories; <c>null</c> means <c>HF_TOKEN</c>, then <c>HUGGING_FACE_HUB_TOKEN</c>, then
    /// the token file <c>huggingface-cli login</c> stores (<c>HF_TOKEN_PATH</c>, default <c>HF_HOME/token</c>).
    /// It is sent only to <see cref="Endpoint"/>, never to the CDN a download is redirected to, and never logged.
    /// </summary>
    public string? Token { get; set; }

    /// <summary>Hub endpoint; <c>null</c> means <c>HF_ENDPOINT</c>, then <c>https://huggingface.co</c>.</summary>
    public string? Endpoint { get; set; }

    /// <summary>
    /// Longest wait for the hub to answer one metadata request (the <c>HEAD</c> that finds a file's commit, etag and size)
    /// before it is retried; <c>null</c> means <c>HF_HUB_ETAG_TIMEOUT</c> (seconds), then 10 s, as in huggingface_hub.
    /// </summary>
    public TimeSpan? MetadataTimeout { get; set; }

    /// <summary>
    /// Longest wait for the next bytes of a download (an idle timeout) before the transfer is resumed on a new connection;
    /// <c>null</c> means <c>HF_HUB_DOWNLOAD_TIMEOUT</c> (seconds), then 10 s, as in huggingface_hub.
    /// </summary>
    public TimeSpan? DownloadTimeout { get; set; }

    /// <summary>
    /// Overall limit for one file's metadata request, redirects and retries included; past it the hub counts as unreachable
    /// (the cache is used if it has the file). <c>null</c> means 2 minutes, more than the default timeouts and retries take.
    /// </summary>
    public TimeSpan? MetadataDeadline { get; set; }

    /// <summary>
    /// Overall limit for downloading one file, retries and resumptions included, so a server that trickles bytes cannot hold
    /// a load forever; the partial file is kept for a later call to resume. <c>null</c> means one minute plus the time the
    /// file's size takes at 64 KiB/s (about 32 hours for a 7.4 GB checkpoint, 2 minutes for a 4 MB tokenizer model).
    /// </summary>
    public TimeSpan? DownloadDeadline { get; set; }

    /// <summary>
    /// The largest file a download may write, in bytes: a file announced larger is refused before anything is downloaded, and
    /// a download whose size the server does not announce stops when it reaches this. <c>null</c> means 50 GiB, the hub's own
    /// limit for one file (huggingface_hub has no such setting).
    /// </summary>
    public long? MaxFileSize { get; set; }

    /// <summary>Reports download progress (file, bytes, total, rate) while files are fetched from the hub.</summary>
    public IProgress<DownloadProgress>? DownloadProgress { get; set; }

    /// <summary>
    /// The client that talks to the hub; <c>null</c> creates one per call. Pass one to share connections between loads or
    /// to route requests through your own <see cref="HttpMessageHandler"/> (proxy, test server).
    /// </summary>
    public HubClient? HubClient { get; set; }

    /// <summary>Where log messages go (what was resolved from where, dtype decisions); <c>null</c> logs nothing.</summary>
    public Microsoft.Extensions.Logging.ILoggerFactory? LoggerFactory { get; set; }

    /// <summary>A copy of these options for another repository of the same hub and cache, at <paramref name="revision"/>.</summary>
    internal HubOptions ForRevision(string? revision)
    {
        var copy = (HubOptions)MemberwiseClone();
        copy.Revision = revision;
        return copy;
    }

    /// <summary>Resolves <paramref name="modelIdOrPath"/> to a local directory holding <paramref name="files"/>, downloading what is missing.</summary>
    internal async Task<string> ResolveAsync(string modelIdOrPath, HubFileSet files, CancellationToken cancellationToken)
    {
        if (Directory.Exists(modelIdOrPath)) return Path.GetFullPath(modelIdOrPath);
        var logger = LoggerFactory?.CreateLogger("Rinna.Net.Hub");
        var client = HubClient ?? new HubClient(logger);
        try
        {
            return await client.ResolveAsync(modelIdOrPath, files, this, DownloadProgress, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (HubClient is null) client.Dispose();
        }
    }
}
