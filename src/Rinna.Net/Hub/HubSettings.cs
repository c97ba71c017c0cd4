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
    TimeSpan ReadTimeout)
{
    internal const string DefaultEndpoint = "https://huggingface.co";
    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

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
            Seconds(Env("HF_HUB_ETAG_TIMEOUT")) ?? DefaultTimeout,
            Seconds(Env("HF_HUB_DOWNLOAD_TIMEOUT")) ?? DefaultTimeout);
    }

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
            // At most a few KB: a token file that is a device or a huge file must not be read whole.
            using var stream = File.OpenRead(path);
            var buffer = new byte[MaxTokenFileBytes + 1];
            int read = stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
            if (read > MaxTokenFileBytes)
                throw new ArgumentException($"The stored hub token file {path} is larger than {MaxTokenFileBytes} bytes; it is not a token.");
            return System.Text.Encoding.UTF8.GetString(buffer, 0, read).Trim() is { Length: > 0 } token ? token : null;
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
