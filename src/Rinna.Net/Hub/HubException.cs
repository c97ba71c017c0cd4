namespace Rinna.Net.Hub;

/// <summary>
/// A model could not be resolved through the Hugging Face hub or its local cache: unknown, gated or private repository,
/// missing file or revision, rate limiting, server or network failure, a corrupt download, or offline mode with nothing cached.
/// </summary>
/// <remarks>The message names the repository, the revision and the file; it never contains the access token.</remarks>
public class HubException : RinnaException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="repoId">The repository, e.g. <c>rinna/japanese-gpt-neox-3.6b</c>.</param>
    /// <param name="revision">The requested revision (branch, tag, commit or <c>refs/pr/N</c>), if known.</param>
    /// <param name="fileName">The file in the repository that was being resolved, if any.</param>
    /// <param name="statusCode">The HTTP status code the hub answered with, if the failure came from an HTTP response.</param>
    /// <param name="message">What went wrong and what to do about it.</param>
    /// <param name="innerException">The underlying error, if any.</param>
    public HubException(string repoId, string? revision, string? fileName, int? statusCode, string message, Exception? innerException = null)
        : base(Compose(repoId, revision, fileName, message), innerException)
    {
        RepoId = repoId;
        Revision = revision;
        FileName = fileName;
        StatusCode = statusCode;
    }

    /// <summary>The repository, e.g. <c>rinna/japanese-gpt-neox-3.6b</c>.</summary>
    public string RepoId { get; }

    /// <summary>The requested revision (branch, tag, commit or <c>refs/pr/N</c>), if known.</summary>
    public string? Revision { get; }

    /// <summary>The file in the repository that was being resolved, if any.</summary>
    public string? FileName { get; }

    /// <summary>The HTTP status code the hub answered with, or <c>null</c> when the failure was not an HTTP response.</summary>
    public int? StatusCode { get; }

    /// <summary>The hub could not be reached or kept failing (timeouts, HTTP 429, 5xx) until the retries ran out.</summary>
    internal bool IsTransient { get; init; }

    /// <summary>What went wrong, without the repository and file prefix, for a later message that cites this failure.</summary>
    internal string? Reason { get; init; }

    private static string Compose(string repoId, string? revision, string? fileName, string message)
    {
        var where = $"'{repoId}' at revision '{revision ?? HubClient.DefaultRevision}'";
        if (fileName is not null) where += $", file '{fileName}'";
        return $"{where}: {message}";
    }
}
