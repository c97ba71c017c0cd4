using System.Net;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Rinna.Net.Hub;

/// <summary>
/// Resolves a model id such as <c>rinna/japanese-gpt-neox-3.6b</c> to a local directory holding its files, downloading them
/// from the Hugging Face hub into the huggingface_hub cache (shared with Python) when they are not there yet.
/// </summary>
/// <remarks>
/// Downloads resume from a <c>.incomplete</c> file, are verified (size, and sha256 for LFS files) before they enter the
/// cache, retry timeouts, dropped connections, 429 and 5xx with backoff, and take an inter-process lock per file. They are
/// bounded: never past the announced size (or <see cref="HubOptions.MaxFileSize"/>), never started without the disk space
/// to finish, never longer than <see cref="HubOptions.DownloadDeadline"/>, and redirects stay on http(s). The access
/// token is only ever sent to the hub endpoint itself, never to the CDN a download is redirected to, and never logged.
/// An instance is thread-safe and meant to be reused.
/// </remarks>
public sealed class HubClient : IDisposable
{
    /// <summary>The revision used when <see cref="HubOptions.Revision"/> is not set.</summary>
    public const string DefaultRevision = "main";

    private readonly HttpClient http;
    private readonly ILogger logger;
    private readonly Func<string, string?> environment;
    private readonly HubRetryPolicy retryPolicy;
    private readonly HubStorage storage;

    /// <summary>Creates a client with its own HTTP connection pool.</summary>
    /// <param name="logger">Receives what was resolved from where; <c>null</c> logs nothing.</param>
    public HubClient(ILogger? logger = null)
        : this(CreateDefaultHandler(), disposeHandler: true, logger, Environment.GetEnvironmentVariable, HubRetryPolicy.Default)
    {
    }

    /// <summary>Creates a client that sends its requests through <paramref name="handler"/> (a proxy, a test double, ...).</summary>
    /// <param name="handler">
    /// The HTTP pipeline. It must not follow redirects itself: the client reads the hub's metadata from the redirect response
    /// and follows redirects on its own so that the token never reaches another host. The caller keeps ownership.
    /// </param>
    /// <param name="logger">Receives what was resolved from where; <c>null</c> logs nothing.</param>
    /// <exception cref="ArgumentException">The handler follows redirects automatically.</exception>
    public HubClient(HttpMessageHandler handler, ILogger? logger = null)
        : this(handler, disposeHandler: false, logger, Environment.GetEnvironmentVariable, HubRetryPolicy.Default)
    {
    }

    internal HubClient(
        HttpMessageHandler handler, bool disposeHandler, ILogger? logger, Func<string, string?> environment, HubRetryPolicy retryPolicy, HubStorage? storage = null)
    {
        ArgumentNullException.ThrowIfNull(handler);
        if (handler is SocketsHttpHandler { AllowAutoRedirect: true } or HttpClientHandler { AllowAutoRedirect: true })
            throw new ArgumentException("The HTTP handler must have AllowAutoRedirect = false; HubClient follows redirects itself.", nameof(handler));
        http = new HttpClient(handler, disposeHandler) { Timeout = Timeout.InfiniteTimeSpan };
        http.DefaultRequestHeaders.UserAgent.ParseAdd($"Rinna.Net/{typeof(HubClient).Assembly.GetName().Version?.ToString(3) ?? "0"}");
        this.logger = logger ?? NullLogger.Instance;
        this.environment = environment;
        this.retryPolicy = retryPolicy;
        this.storage = storage ?? HubStorage.Default;
    }

    /// <summary>
    /// Makes the requested files of a model available locally and returns the directory that holds them.
    /// </summary>
    /// <param name="modelIdOrPath">
    /// An existing local directory, returned as it is (as a full path); otherwise a hub model id, <c>org/name</c>.
    /// </param>
    /// <param name="files">Which files are needed; <see cref="HubFileSet"/> values can be combined.</param>
    /// <param name="options">Revision, cache directory, offline mode, token and endpoint; <c>null</c> uses the environment and defaults.</param>
    /// <param name="progress">Receives progress while a file downloads; nothing is reported for files already cached.</param>
    /// <param name="cancellationToken">Stops the resolution; a file interrupted mid-download stays resumable.</param>
    /// <returns>The snapshot directory <c>&lt;cache&gt;/models--org--name/snapshots/&lt;commit&gt;</c>, or the local directory itself.</returns>
    /// <exception cref="ArgumentException"><paramref name="modelIdOrPath"/> is neither a directory nor a valid model id, or the revision is malformed.</exception>
    /// <exception cref="HubException">The repository, revision or a required file could not be resolved, online or from the cache.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    public async Task<string> ResolveAsync(
        string modelIdOrPath,
        HubFileSet files,
        HubOptions? options = null,
        IProgress<DownloadProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelIdOrPath);
        if (files == 0 || (files & ~(HubFileSet.Model | HubFileSet.Tokenizer | HubFileSet.Adapter)) != 0)
            throw new ArgumentOutOfRangeException(nameof(files), files, "Request HubFileSet.Model, HubFileSet.Tokenizer, HubFileSet.Adapter or a combination.");

        if (Directory.Exists(modelIdOrPath))
        {
            var directory = Path.GetFullPath(modelIdOrPath);
            logger.LogInformation("Using local directory {Directory} for {Files}", directory, files);
            return directory;
        }
        if (!HubNames.IsValidRepoId(modelIdOrPath))
            throw new ArgumentException(
                $"'{modelIdOrPath}' is neither an existing directory nor a valid hub model id such as 'rinna/japanese-gpt-neox-3.6b'.",
                nameof(modelIdOrPath));

        var settings = HubSettings.Resolve(options, environment);
        if (!HubNames.IsValidRevision(settings.Revision))
            throw new ArgumentException(
                $"Revision '{settings.Revision}' is not a valid branch, tag, commit or refs/pr/N name.", nameof(options));

        var resolution = new HubResolution(this, modelIdOrPath, settings, progress, cancellationToken);
        return await resolution.RunAsync(files).ConfigureAwait(false);
    }

    /// <summary>Releases the HTTP connections.</summary>
    public void Dispose() => http.Dispose();

    internal ILogger Logger => logger;

    internal HubRetryPolicy RetryPolicy => retryPolicy;

    internal HubStorage Storage => storage;

    /// <summary>Sends one request without following redirects; the token goes only to the endpoint's own origin.</summary>
    internal async Task<HttpResponseMessage> SendAsync(
        HttpMethod method, Uri uri, HubSettings settings, long rangeStart, TimeSpan headersTimeout, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(method, uri);
        request.Headers.AcceptEncoding.ParseAdd("identity");
        if (rangeStart > 0) request.Headers.Range = new System.Net.Http.Headers.RangeHeaderValue(rangeStart, null);
        if (settings.Token is { } token && IsSameOrigin(uri, new Uri(settings.Endpoint)))
            request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(headersTimeout);
        try
        {
            return await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
        {
            throw new HubTransientFailure(null, $"{uri.Host} did not answer within {headersTimeout.TotalSeconds:0.#} s", ex);
        }
        catch (HttpRequestException ex)
        {
            throw new HubTransientFailure(null, $"could not reach {uri.Host}: {ex.Message}", ex);
        }
    }

    private static bool IsSameOrigin(Uri a, Uri b) =>
        Uri.Compare(a, b, UriComponents.SchemeAndServer, UriFormat.Unescaped, StringComparison.OrdinalIgnoreCase) == 0;

    private static SocketsHttpHandler CreateDefaultHandler() => new()
    {
        AllowAutoRedirect = false,
        AutomaticDecompression = DecompressionMethods.None,
        ConnectTimeout = TimeSpan.FromSeconds(10),
        PooledConnectionLifetime = TimeSpan.FromMinutes(5),
    };
}
