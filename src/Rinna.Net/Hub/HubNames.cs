using System.Text.RegularExpressions;

namespace Rinna.Net.Hub;

/// <summary>
/// Validation of every name that becomes part of a cache path or a URL: repository ids and revisions from the caller,
/// file names from <c>model.safetensors.index.json</c>, commits and etags from the server. A name that could escape the
/// cache directory (<c>..</c>, absolute paths, backslashes, odd characters) is rejected before any file is touched.
/// </summary>
internal static partial class HubNames
{
    [GeneratedRegex(@"^[0-9a-f]{40}\z")]
    private static partial Regex CommitHashPattern();

    [GeneratedRegex(@"^[0-9a-f]{64}\z")]
    private static partial Regex Sha256Pattern();

    // huggingface_hub's validate_repo_id, restricted to ASCII: an optional namespace, then a name of at most 96 characters.
    [GeneratedRegex(@"^([A-Za-z0-9_.\-]+/)?[A-Za-z0-9_.\-]{1,96}\z")]
    private static partial Regex RepoIdPattern();

    [GeneratedRegex(@"^[A-Za-z0-9_.+\-]+\z")]
    private static partial Regex PathSegmentPattern();

    [GeneratedRegex(@"^[A-Za-z0-9_\-]{1,128}\z")]
    private static partial Regex EtagPattern();

    public static bool IsCommitHash(string value) => CommitHashPattern().IsMatch(value);

    /// <summary>An LFS etag is the sha256 of the file's content, which makes the download verifiable.</summary>
    public static bool IsSha256(string etag) => Sha256Pattern().IsMatch(etag);

    /// <summary>A plain (non-LFS) file's etag is its git blob sha1: <c>sha1("blob &lt;size&gt;\0" + content)</c>.</summary>
    public static bool IsGitBlobSha1(string etag) => CommitHashPattern().IsMatch(etag);

    public static bool IsValidRepoId(string repoId) =>
        RepoIdPattern().IsMatch(repoId)
        && !repoId.Contains("--", StringComparison.Ordinal)
        && !repoId.Contains("..", StringComparison.Ordinal)
        && repoId.Split('/').All(part => part[0] is not ('-' or '.') && part[^1] is not ('-' or '.'));

    /// <summary>Branch, tag, commit or <c>refs/pr/N</c>: slash-separated plain segments, none of them <c>.</c> or <c>..</c>.</summary>
    public static bool IsValidRevision(string revision) => IsSafeRelativePath(revision);

    /// <summary>A file in the repository: slash-separated plain segments, none of them <c>.</c> or <c>..</c>.</summary>
    public static bool IsValidFileName(string fileName) => IsSafeRelativePath(fileName);

    public static bool IsValidEtag(string etag) => EtagPattern().IsMatch(etag);

    /// <summary>huggingface_hub's cache folder of a model repository: <c>models--org--name</c>.</summary>
    public static string RepoFolderName(string repoId) => "models--" + repoId.Replace("/", "--", StringComparison.Ordinal);

    public static Uri ResolveUrl(string endpoint, string repoId, string revision, string fileName) =>
        new($"{endpoint}/{repoId}/resolve/{Uri.EscapeDataString(revision)}/{string.Join('/', fileName.Split('/').Select(Uri.EscapeDataString))}");

    private static bool IsSafeRelativePath(string path) =>
        path.Length is > 0 and <= 1024
        && path.Split('/').All(segment => segment is not ("." or "..") && segment.Length <= 255 && PathSegmentPattern().IsMatch(segment));
}
