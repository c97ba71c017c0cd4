namespace Rinna.Net.Hub;

/// <summary>
/// The effective hub settings of one resolution: <see cref="HubOptions"/> first, then the environment variables
/// huggingface_hub reads, then its defaults, so that Python and .NET share one cache and one configuration.
/// </summary>
internal sealed record HubSettings(
    string CacheDir,
    string Endpoint,
    string? Token,
    bool Offline,
    string Revision,
    TimeSpan MetadataTimeout,
    TimeSpan ReadTimeout,
    TimeSpan MetadataDeadline,
    TimeSpan? DownloadDeadline,
    long MaxFileSize)
{
    internal const string DefaultEndpoint = "https://huggingface.co";
    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Above every metadata request's worst case under the default retries (6 × 10 s plus at most 40 s of waits), so by default
    /// it only ends what the per-request timeouts cannot: a server that keeps asking for retries.
    /// </summary>
    internal static readonly TimeSpan DefaultMetadataDeadline = TimeSpan.FromMinutes(2);

    /// <summary>The hub's own limit for one file (50 GB); rinna's largest checkpoint file is 7.4 GB.</summary>
    internal const long DefaultMaxFileSize = 50L << 30;

    /// <summary>The slowest average rate a download may keep when <see cref="HubOptions.DownloadDeadline"/> is not set.</summary>
    internal const long MinimumDownloadRate = 64 << 10;

    /// <summary>Headroom of the default download deadline for connecting, redirects and a few retries.</summary>
    private static readonly TimeSpan DownloadDeadlineBase = TimeSpan.FromMinutes(1);

    /// <summary>
    /// The overall deadline of one file's download: <see cref="HubOptions.DownloadDeadline"/>, or one minute plus the time the
    /// file takes at <see cref="MinimumDownloadRate"/>, so a trickling server ends in minutes for a config and hours for a checkpoint.
    /// </summary>
    public TimeSpan DownloadDeadlineFor(long? size) =>
        DownloadDeadline ?? DownloadDeadlineBase + TimeSpan.FromSeconds((double)(size ?? MaxFileSize) / MinimumDownloadRate);

    public static HubSettings Resolve(HubOptions? options, Func<string, string?> environment)
    {
        options ??= new HubOptions();
        string? Env(string name) => environment(name) is { Length: > 0 } value ? value : null;

        var home = Env("HOME") ?? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        var hfHome = ExpandHome(Env("HF_HOME"), home)
            ?? Path.Combine(ExpandHome(Env("XDG_CACHE_HOME"), home) ?? Path.Combine(home, ".cache"), "huggingface");
        var cacheDir = ExpandHome(options.CacheDir, home)
            ?? ExpandHome(Env("HF_HUB_CACHE"), home)
            ?? ExpandHome(Env("HUGGINGFACE_HUB_CACHE"), home)
            ?? Path.Combine(hfHome, "hub");

        var endpoint = (options.Endpoint ?? Env("HF_ENDPOINT") ?? DefaultEndpoint).TrimEnd('/');
        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var endpointUri) || endpointUri.Scheme is not ("http" or "https"))
            throw new ArgumentException($"Hub endpoint '{endpoint}' is not an absolute http(s) URL.", nameof(options));

        var token = options.Token is { Length: > 0 } ? options.Token
            : Env("HF_TOKEN") ?? Env("HUGGING_FACE_HUB_TOKEN") ?? ReadStoredToken(ExpandHome(Env("HF_TOKEN_PATH"), home) ?? Path.Combine(hfHome, "token"));

        // A token goes into an HTTP header: one with whitespace or control characters would split or corrupt it.
        if (token is not null && token.Any(c => c <= ' ' || c >= (char)0x7F))
            throw new ArgumentException(
                "The hub token (Token, HF_TOKEN or the stored token file) contains whitespace, a control character or a non-ASCII character; " +
                "tokens are printable ASCII. The token itself is not shown.", nameof(options));

        var offline = options.LocalFilesOnly || IsTrue(Env("HF_HUB_OFFLINE")) || IsTrue(Env("TRANSFORMERS_OFFLINE"));

        return new HubSettings(
            Path.GetFullPath(cacheDir),
            endpoint,
            token,
            offline,
            options.Revision is { Length: > 0 } revision ? revision : HubClient.DefaultRevision,
            Positive(options.MetadataTimeout, nameof(HubOptions.MetadataTimeout)) ?? Seconds(Env("HF_HUB_ETAG_TIMEOUT")) ?? DefaultTimeout,
            Positive(options.DownloadTimeout, nameof(HubOptions.DownloadTimeout)) ?? Seconds(Env("HF_HUB_DOWNLOAD_TIMEOUT")) ?? DefaultTimeout,
            Positive(options.MetadataDeadline, nameof(HubOptions.MetadataDeadline)) ?? DefaultMetadataDeadline,
            Positive(options.DownloadDeadline, nameof(HubOptions.DownloadDeadline)),
            options.MaxFileSize is { } maxFileSize
                ? (maxFileSize > 0 ? maxFileSize : throw new ArgumentOutOfRangeException(nameof(options), maxFileSize, "HubOptions.MaxFileSize must be positive."))
                : DefaultMaxFileSize);
    }

    /// <summary>A time limit as the caller set it: positive, or <see cref="Timeout.InfiniteTimeSpan"/> for none.</summary>
    private static TimeSpan? Positive(TimeSpan? value, string name) =>
        value is null || value > TimeSpan.Zero || value == Timeout.InfiniteTimeSpan
            ? value
            : throw new ArgumentOutOfRangeException("options", value, $"HubOptions.{name} must be positive (or Timeout.InfiniteTimeSpan for no limit).");

    /// <summary>huggingface_hub's truthy spellings of a boolean environment variable.</summary>
    private static bool IsTrue(string? value) =>
        value?.Trim().ToUpperInvariant() is "1" or "ON" or "YES" or "TRUE";

    private static TimeSpan? Seconds(string? value) =>
        double.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var seconds) && seconds > 0
            ? TimeSpan.FromSeconds(seconds)
            : null;

    private static string? ExpandHome(string? path, string home)
    {
        if (path is null) return null;
        if (path == "~") return home;
        return path.StartsWith("~/", StringComparison.Ordinal) ? Path.Combine(home, path[2..]) : path;
    }

    private const int MaxTokenFileBytes = 4096;

    private static string? ReadStoredToken(string path)
    {
        try
        {
            if (!File.Exists(path)) return null;
            // A regular file of at most a few KB: a device, a named pipe or a huge file must not be read (or waited on).
            Microsoft.Win32.SafeHandles.SafeFileHandle handle;
            long length;
            try
            {
                (handle, length) = BoundedFile.OpenRegular(path);
            }
            catch (IOException ex)
            {
                throw new ArgumentException($"The stored hub token file {path} cannot be read as a token: {ex.Message}", ex);
            }
            using (handle)
            {
                if (length > MaxTokenFileBytes)
                    throw new ArgumentException($"The stored hub token file {path} is larger than {MaxTokenFileBytes} bytes; it is not a token.");
                var bytes = BoundedFile.ReadAll(handle, length, MaxTokenFileBytes);
                return System.Text.Encoding.UTF8.GetString(bytes).Trim() is { Length: > 0 } token ? token : null;
            }
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
