using Microsoft.Extensions.Logging;

namespace Rinna.Net.Hub;

/// <summary>
/// One repository's folder in the huggingface_hub cache, laid out exactly as Python lays it so both share it:
/// <code>
/// &lt;cache&gt;/.locks/models--org--name/&lt;etag&gt;.lock
/// &lt;cache&gt;/models--org--name/refs/&lt;revision&gt;                 (text: the commit)
/// &lt;cache&gt;/models--org--name/blobs/&lt;etag&gt;[.incomplete]
/// &lt;cache&gt;/models--org--name/snapshots/&lt;commit&gt;/&lt;file&gt;      (relative symlink to ../../blobs/&lt;etag&gt;)
/// &lt;cache&gt;/models--org--name/.no_exist/&lt;commit&gt;/&lt;file&gt;      (empty: the file does not exist at that commit)
/// </code>
/// Callers pass only names validated by <see cref="HubNames"/>; every path is still checked to stay inside the cache.
/// </summary>
internal sealed class HubRepoCache(string cacheDir, string repoId, ILogger logger)
{
    private readonly string repoFolderName = HubNames.RepoFolderName(repoId);

    public string CacheDir { get; } = cacheDir;

    public string RepoDir => Inside(CacheDir, repoFolderName);

    public string SnapshotDir(string commit) => Inside(RepoDir, "snapshots", commit);

    public string SnapshotPath(string commit, string fileName) => Inside(SnapshotDir(commit), fileName);

    /// <summary>
    /// Whether the snapshot holds the file. A link whose blob was deleted does not count (as in huggingface_hub, which
    /// follows links); <see cref="File.Exists"/> alone would say yes, since .NET reports a dangling symlink as existing.
    /// </summary>
    public bool HasSnapshotFile(string commit, string fileName)
    {
        var entry = new FileInfo(SnapshotPath(commit, fileName));
        return entry.LinkTarget is null ? entry.Exists : entry.ResolveLinkTarget(returnFinalTarget: true) is { Exists: true };
    }

    public string BlobPath(string etag) => Inside(RepoDir, "blobs", etag);

    public string IncompletePath(string etag) => BlobPath(etag) + ".incomplete";

    public string LockPath(string etag) => Inside(CacheDir, ".locks", repoFolderName, etag + ".lock");

    private string NoExistPath(string commit, string fileName) => Inside(RepoDir, ".no_exist", commit, fileName);

    private string RefPath(string revision) => Inside(RepoDir, "refs", revision);

    /// <summary>The commit a revision names in the cache: the revision itself when it is a commit hash, else <c>refs/&lt;revision&gt;</c>.</summary>
    public string? FindCommit(string revision)
    {
        if (HubNames.IsCommitHash(revision)) return revision;
        var refPath = RefPath(revision);
        if (!File.Exists(refPath)) return null;
        var commit = BoundedFile.ReadAllText(refPath, 4096).Trim();
        if (HubNames.IsCommitHash(commit)) return commit;
        logger.LogWarning("Ignoring cache ref {RefPath}: it does not hold a commit hash", refPath);
        return null;
    }

    /// <summary>Records which commit a branch or tag points to, as huggingface_hub does; a commit hash needs no ref.</summary>
    public void WriteRef(string revision, string commit)
    {
        if (revision == commit) return;
        var refPath = RefPath(revision);
        if (File.Exists(refPath) && BoundedFile.ReadAllText(refPath, 4096).Trim() == commit) return;
        WriteAtomically(refPath, commit);
    }

    public bool IsKnownMissing(string commit, string fileName) => File.Exists(NoExistPath(commit, fileName));

    public void MarkMissing(string commit, string fileName)
    {
        var marker = NoExistPath(commit, fileName);
        Directory.CreateDirectory(Path.GetDirectoryName(marker)!);
        File.WriteAllBytes(marker, []);
    }

    /// <summary>
    /// Points <c>snapshots/&lt;commit&gt;/&lt;file&gt;</c> at the blob with a relative symlink, like huggingface_hub; copies the blob where
    /// the file system refuses symlinks.
    /// </summary>
    public string LinkSnapshot(string commit, string fileName, string etag)
    {
        var pointer = SnapshotPath(commit, fileName);
        var blob = BlobPath(etag);
        Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
        if (PointsAt(pointer, blob)) return pointer;

        DeleteIfPresent(pointer);
        var relativeTarget = Path.GetRelativePath(Path.GetDirectoryName(pointer)!, blob);
        try
        {
            File.CreateSymbolicLink(pointer, relativeTarget);
        }
        catch (IOException) when (PointsAt(pointer, blob))
        {
            // Another process linked the same blob between our delete and create.
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            logger.LogWarning("Symlinks are not possible in {CacheDir} ({Reason}); copying {File} into the snapshot instead", CacheDir, ex.Message, fileName);
            var temporary = pointer + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp";
            File.Copy(blob, temporary);
            File.Move(temporary, pointer, overwrite: true);
        }
        return pointer;
    }

    private static bool PointsAt(string pointer, string blob)
    {
        var info = new FileInfo(pointer);
        if (info.LinkTarget is { } target)
            return Path.GetFullPath(target, Path.GetDirectoryName(pointer)!) == blob;
        // A copy made where symlinks are unavailable counts as linked when it has the blob's size.
        return info.Exists && File.Exists(blob) && info.Length == new FileInfo(blob).Length;
    }

    private static void DeleteIfPresent(string path)
    {
        if (new FileInfo(path) is { } info && (info.Exists || info.LinkTarget is not null)) info.Delete();
    }

    private static void WriteAtomically(string path, string content)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var temporary = path + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp";
        File.WriteAllText(temporary, content);
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>Joins names under a root and refuses any result that is not strictly inside it.</summary>
    private static string Inside(string root, params string[] relativeParts)
    {
        var fullRoot = Path.GetFullPath(root);
        var combined = Path.GetFullPath(Path.Combine([fullRoot, .. relativeParts.SelectMany(part => part.Split('/'))]));
        var prefix = Path.EndsInDirectorySeparator(fullRoot) ? fullRoot : fullRoot + Path.DirectorySeparatorChar;
        if (!combined.StartsWith(prefix, StringComparison.Ordinal))
            throw new InvalidOperationException($"Refusing cache path '{combined}' outside '{fullRoot}'.");
        return combined;
    }
}
