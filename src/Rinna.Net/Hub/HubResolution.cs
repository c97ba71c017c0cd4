using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.Extensions.Logging;

namespace Rinna.Net.Hub;

/// <summary>
/// One <see cref="HubClient.ResolveAsync"/> call: resolves the revision to a commit once, then brings every requested file of
/// that commit into the snapshot, from the cache, the network, or (offline or when the hub is unreachable) the cache only.
/// </summary>
internal sealed class HubResolution
{
    private const string SafetensorsFile = "model.safetensors";
    private const string SafetensorsIndexFile = "model.safetensors.index.json";
    private const string PytorchFile = "pytorch_model.bin";
    private static readonly string[] TokenizerFiles = ["tokenizer_config.json", "special_tokens_map.json", "spiece.model", "tokenizer.json"];
    private static readonly string[] TokenizerModelFiles = ["spiece.model", "tokenizer.json"];
    private static readonly TimeSpan ProgressInterval = TimeSpan.FromMilliseconds(200);
    private const int MaxRedirects = 10;

    private readonly HubClient client;
    private readonly ILogger logger;
    private readonly string repoId;
    private readonly HubSettings settings;
    private readonly HubRepoCache cache;
    private readonly IProgress<DownloadProgress>? progress;
    private readonly CancellationToken cancellationToken;

    /// <summary>The commit every file is taken from, fixed by the first answer (or the cache) so that all files match.</summary>
    private string? commit;

    /// <summary>Set once the hub proved unreachable; later files then come from the cache without waiting on the network again.</summary>
    private HubException? networkFailure;

    private int filesFromCache;
    private int filesDownloaded;
    private long bytesDownloaded;

    public HubResolution(HubClient client, string repoId, HubSettings settings, IProgress<DownloadProgress>? progress, CancellationToken cancellationToken)
    {
        this.client = client;
        logger = client.Logger;
        this.repoId = repoId;
        this.settings = settings;
        cache = new HubRepoCache(settings.CacheDir, repoId, logger);
        this.progress = progress;
        this.cancellationToken = cancellationToken;
    }

    public async Task<string> RunAsync(HubFileSet files)
    {
        if (files.HasFlag(HubFileSet.Model)) await ResolveModelFilesAsync().ConfigureAwait(false);
        if (files.HasFlag(HubFileSet.Tokenizer)) await ResolveTokenizerFilesAsync().ConfigureAwait(false);
        if (files.HasFlag(HubFileSet.Adapter)) await ResolveAdapterFilesAsync().ConfigureAwait(false);

        var snapshot = cache.SnapshotDir(commit!);
        logger.LogInformation(
            "Resolved {RepoId} at {Revision} (commit {Commit}) to {Snapshot}: {Cached} file(s) from the cache, {Downloaded} downloaded ({Bytes} bytes)",
            repoId, settings.Revision, commit, snapshot, filesFromCache, filesDownloaded, bytesDownloaded);
        return snapshot;
    }

    private async Task ResolveModelFilesAsync()
    {
        await GetFileAsync("config.json", required: true).ConfigureAwait(false);
        await GetFileAsync("generation_config.json", required: false).ConfigureAwait(false);
        if (await GetFileAsync(SafetensorsFile, required: false).ConfigureAwait(false) is not null) return;

        if (await GetFileAsync(SafetensorsIndexFile, required: false).ConfigureAwait(false) is { } index)
        {
            foreach (var shard in ReadShardNames(index))
                await GetFileAsync(shard, required: true).ConfigureAwait(false);
            return;
        }
        if (await GetFileAsync(PytorchFile, required: false).ConfigureAwait(false) is null)
            throw NoneFound("weights", $"{SafetensorsFile}, {SafetensorsIndexFile} or {PytorchFile}");
    }

    private async Task ResolveTokenizerFilesAsync()
    {
        var found = new List<string>();
        foreach (var file in TokenizerFiles)
            if (await GetFileAsync(file, required: false).ConfigureAwait(false) is not null) found.Add(file);
        if (!found.Intersect(TokenizerModelFiles).Any())
            throw NoneFound("tokenizer model", string.Join(" or ", TokenizerModelFiles));
    }

    /// <summary>
    /// None of the files that can provide something exists. When the hub could not be asked, that is what the caller must
    /// hear (with the network error inside), not that the repository lacks them.
    /// </summary>
    private HubException NoneFound(string what, string files)
    {
        if (networkFailure is { } failure)
            return new HubException(repoId, settings.Revision, null, failure.StatusCode,
                Scrub($"the hub could not be reached ({(failure.Reason ?? failure.Message).TrimEnd('.')}), and the cache holds no {what} ({files}) of this revision."),
                failure.InnerException ?? failure) { IsTransient = true, Reason = failure.Reason };
        return Error(null, 404, $"the repository has no {what}: none of {files} exists" + (settings.Offline ? " in the cache (offline)." : "."));
    }

    private async Task ResolveAdapterFilesAsync()
    {
        await GetFileAsync("adapter_config.json", required: true).ConfigureAwait(false);
        if (await GetFileAsync("adapter_model.safetensors", required: false).ConfigureAwait(false) is not null) return;
        if (await GetFileAsync("adapter_model.bin", required: false).ConfigureAwait(false) is null)
            throw Error(null, 404,
                "the adapter repository has no weights: neither adapter_model.safetensors nor adapter_model.bin exists"
                + (settings.Offline ? " in the cache (offline)" : "") + ".");
    }

    private IEnumerable<string> ReadShardNames(string indexPath)
    {
        try
        {
            using var document = JsonDocument.Parse(BoundedFile.ReadAllBytes(indexPath));
            if (!document.RootElement.TryGetProperty("weight_map", out var weightMap) || weightMap.ValueKind != JsonValueKind.Object)
                throw Error(SafetensorsIndexFile, null, "the shard index has no 'weight_map' object.");
            var shards = new List<string>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var entry in weightMap.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                    throw Error(SafetensorsIndexFile, null, $"'weight_map' entry '{entry.Name}' is not a file name.");
                var shard = entry.Value.GetString()!;
                if (seen.Add(shard)) shards.Add(shard);
            }
            if (shards.Count == 0) throw Error(SafetensorsIndexFile, null, "'weight_map' names no shard.");
            return shards;
        }
        catch (JsonException ex)
        {
            throw Error(SafetensorsIndexFile, null, $"the shard index is not valid JSON: {ex.Message}", ex);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw Error(SafetensorsIndexFile, null, $"cannot read the shard index: {ex.Message}", ex);
        }
    }

    /// <summary>Brings one file into the snapshot and returns its path, or <c>null</c> when an optional file does not exist.</summary>
    private async Task<string?> GetFileAsync(string fileName, bool required)
    {
        try
        {
            return await GetFileCoreAsync(fileName, required).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // A read-only, full or damaged cache directory: the caller needs the path, not a bare file-system error.
            throw Error(fileName, null,
                $"the cache '{settings.CacheDir}' cannot be used ({ex.Message.TrimEnd('.')}). Check its permissions and free space, or choose another "
                + "directory (HubOptions.CacheDir or HF_HUB_CACHE).", ex);
        }
    }

    private async Task<string?> GetFileCoreAsync(string fileName, bool required)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (!HubNames.IsValidFileName(fileName))
            throw Error(fileName, null,
                "unsafe file name: only relative paths of letters, digits and '._+-' segments are accepted, without '..', backslashes or a leading '/'.");

        if (settings.Offline) return FromCache(fileName, required, cause: null);

        // A commit never changes, so what the cache knows about it (the file, or that it does not exist) needs no request.
        var revision = commit ?? settings.Revision;
        if (HubNames.IsCommitHash(revision) && (cache.HasSnapshotFile(revision, fileName) || cache.IsKnownMissing(revision, fileName)))
            return FromCache(fileName, required, cause: null);
        if (networkFailure is not null) return FromCache(fileName, required, networkFailure);

        FileMetadata? metadata;
        try
        {
            metadata = await WithRetriesAsync(
                fileName,
                settings.MetadataDeadline,
                () => $"asking the hub about the file took longer than HubOptions.MetadataDeadline ({Duration(settings.MetadataDeadline)})",
                token => FetchMetadataAsync(revision, fileName, token)).ConfigureAwait(false);
        }
        catch (HubException ex) when (ex.IsTransient)
        {
            networkFailure = ex;
            logger.LogWarning("Hub unreachable for {RepoId} ({Reason}); trying the cache", repoId, ex.Message);
            return FromCache(fileName, required, ex);
        }

        if (metadata is null)
        {
            if (required) throw Error(fileName, 404, "the file does not exist in the repository at this revision (HTTP 404).");
            return null; // recorded in .no_exist
        }
        PinCommit(metadata.Commit, fileName);

        var blob = cache.BlobPath(metadata.Etag);
        if (File.Exists(blob))
        {
            cache.LinkSnapshot(metadata.Commit, fileName, metadata.Etag);
            return CacheHit(metadata.Commit, fileName);
        }

        using (await HubFileLock.AcquireAsync(cache.LockPath(metadata.Etag), fileName, logger, cancellationToken).ConfigureAwait(false))
        {
            if (File.Exists(blob))
                logger.LogInformation("{File} of {RepoId} was downloaded meanwhile by another process", fileName, repoId);
            else
                await DownloadBlobAsync(fileName, metadata).ConfigureAwait(false);
        }
        return cache.LinkSnapshot(metadata.Commit, fileName, metadata.Etag);
    }

    private string CacheHit(string commit, string fileName)
    {
        this.commit ??= commit;
        filesFromCache++;
        logger.LogDebug("{File} of {RepoId} found in the cache (commit {Commit})", fileName, repoId, commit);
        return cache.SnapshotPath(commit, fileName);
    }

    /// <summary>The cache lookup of huggingface_hub's <c>try_to_load_from_cache</c>: ref → commit → snapshot file or <c>.no_exist</c> marker.</summary>
    private string? FromCache(string fileName, bool required, HubException? cause)
    {
        var commit = this.commit ?? cache.FindCommit(settings.Revision);
        if (commit is null)
            throw cause ?? Error(null, null,
                $"nothing of this revision is in the cache '{settings.CacheDir}', and downloading is disabled (HubOptions.LocalFilesOnly or HF_HUB_OFFLINE). "
                + "Download it once online.");
        this.commit = commit;

        if (cache.HasSnapshotFile(commit, fileName)) return CacheHit(commit, fileName);
        if (cache.IsKnownMissing(commit, fileName))
        {
            if (required) throw Error(fileName, 404, $"the file does not exist in the repository at commit {commit} (cached answer of the hub).");
            return null;
        }
        if (!required)
        {
            logger.LogDebug("Optional {File} of {RepoId} is not in the cache; going on without it", fileName, repoId);
            return null;
        }
        throw cause ?? Error(fileName, null,
            $"the file is not in the cache '{settings.CacheDir}' (commit {commit}), and downloading is disabled (HubOptions.LocalFilesOnly or HF_HUB_OFFLINE).");
    }

    private void PinCommit(string commit, string fileName)
    {
        if (this.commit is null)
        {
            this.commit = commit;
            cache.WriteRef(settings.Revision, commit);
        }
        else if (this.commit != commit)
        {
            throw Error(fileName, null, $"the hub answered with commit {commit} after {this.commit}; the revision moved during the download. Try again.");
        }
    }

    /// <summary>What the hub says about one file.</summary>
    /// <param name="Commit">The commit the revision resolved to.</param>
    /// <param name="Etag">The blob's name: sha256 for LFS files, the git blob sha1 otherwise.</param>
    /// <param name="Size">The announced size; <c>null</c> when the hub announced none (then the download is bounded by <see cref="HubOptions.MaxFileSize"/>).</param>
    /// <param name="Location">Where the bytes are fetched: the CDN a redirect named, or the resolve URL itself.</param>
    private sealed record FileMetadata(string Commit, string Etag, long? Size, Uri Location);

    /// <summary>
    /// HEAD on the resolve URL. Relative redirects (a renamed repository) are followed; an absolute one points at the CDN, and its
    /// response already carries the metadata. Returns <c>null</c> for an optional file the repository does not have.
    /// </summary>
    private async Task<FileMetadata?> FetchMetadataAsync(string revision, string fileName, CancellationToken token)
    {
        var uri = HubNames.ResolveUrl(settings.Endpoint, repoId, revision, fileName);
        for (var hop = 0; hop <= MaxRedirects; hop++)
        {
            using var response = await client.SendAsync(HttpMethod.Head, uri, settings, 0, settings.MetadataTimeout, token).ConfigureAwait(false);
            var location = response.Headers.Location;
            if (IsRedirect(response.StatusCode) && location is not null && !location.IsAbsoluteUri)
            {
                uri = RedirectTarget(fileName, uri, location);
                continue;
            }
            if (IsRedirect(response.StatusCode) || response.IsSuccessStatusCode)
                return ReadMetadata(response, fileName, location is { IsAbsoluteUri: true } ? RedirectTarget(fileName, uri, location) : uri);

            var commit = Header(response, "X-Repo-Commit");
            if (IsEntryNotFound(response, commit))
            {
                if (commit is not null && HubNames.IsCommitHash(commit))
                {
                    PinCommit(commit, fileName);
                    cache.MarkMissing(commit, fileName);
                }
                logger.LogDebug("{File} does not exist in {RepoId} at {Revision}", fileName, repoId, revision);
                return null;
            }
            throw ErrorFromResponse(response, fileName);
        }
        throw Error(fileName, null, $"more than {MaxRedirects} redirects.");
    }

    private FileMetadata ReadMetadata(HttpResponseMessage response, string fileName, Uri location)
    {
        var commit = Header(response, "X-Repo-Commit");
        var etag = NormalizeEtag(Header(response, "X-Linked-Etag") ?? response.Headers.ETag?.ToString());
        // A redirect's own Content-Length is the length of its empty body, not the file's.
        var sizeText = Header(response, "X-Linked-Size");
        long? size = sizeText is null ? (IsRedirect(response.StatusCode) ? null : response.Content.Headers.ContentLength)
            : long.TryParse(sizeText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var linked) ? linked
            : throw Error(fileName, (int)response.StatusCode, $"the hub answered with a malformed X-Linked-Size '{Shorten(sizeText)}'.");
        if (commit is null || etag is null)
            throw Error(fileName, (int)response.StatusCode,
                $"the hub's answer lacks {(commit is null ? "X-Repo-Commit" : "ETag")}; is the endpoint '{settings.Endpoint}' a Hugging Face hub?");
        if (!HubNames.IsCommitHash(commit))
            throw Error(fileName, (int)response.StatusCode, $"the hub answered with a malformed commit '{Shorten(commit)}'.");
        if (!HubNames.IsValidEtag(etag))
            throw Error(fileName, (int)response.StatusCode, $"the hub answered with a malformed etag '{Shorten(etag)}'.");
        return new FileMetadata(commit, etag, size, location);
    }

    /// <summary>
    /// Downloads into <c>blobs/&lt;etag&gt;.incomplete</c>, resuming with <c>Range</c> from what an earlier attempt left, checks size
    /// and (LFS) sha256, and only then moves the file to <c>blobs/&lt;etag&gt;</c>. The caller holds the file's lock.
    /// </summary>
    private async Task DownloadBlobAsync(string fileName, FileMetadata metadata)
    {
        if (metadata.Size > settings.MaxFileSize)
            throw Error(fileName, null,
                $"the hub announces {FormatBytes(metadata.Size.Value)}, more than HubOptions.MaxFileSize ({FormatBytes(settings.MaxFileSize)}); nothing was downloaded.");
        var incomplete = cache.IncompletePath(metadata.Etag);
        Directory.CreateDirectory(Path.GetDirectoryName(incomplete)!);
        var started = Stopwatch.StartNew();
        logger.LogInformation("Downloading {File} of {RepoId} ({Size} bytes) from {Host}", fileName, repoId, metadata.Size, metadata.Location.Host);

        using var sha256 = new RunningSha256();
        var deadline = settings.DownloadDeadlineFor(metadata.Size);
        await WithRetriesAsync(
            fileName,
            deadline,
            () => $"the download took longer than {(settings.DownloadDeadline is null ? "its default deadline" : "HubOptions.DownloadDeadline")} ({Duration(deadline)}) "
                + $"with {FormatBytes(LengthOf(incomplete))}{(metadata.Size is { } size ? $" of {FormatBytes(size)}" : "")} received; "
                + "the partial file is kept and a later call resumes it"
                + (settings.DownloadDeadline is null ? " (HubOptions.DownloadDeadline allows more time)." : "."),
            token => DownloadAttemptAsync(fileName, metadata, incomplete, sha256, token)).ConfigureAwait(false);

        var (checksum, actual) = HubNames.IsSha256(metadata.Etag) ? ("sha256", sha256.Finish())
            : HubNames.IsGitBlobSha1(metadata.Etag) ? ("git blob sha1", GitBlobSha1(incomplete))
            : (null, null);
        if (actual is not null && actual != metadata.Etag)
        {
            File.Delete(incomplete);
            throw Error(fileName, null,
                $"the downloaded file is corrupt: its {checksum} is {actual}, the hub announced {metadata.Etag}. The partial file was deleted; try again.");
        }
        var length = LengthOf(incomplete);
        File.Move(incomplete, cache.BlobPath(metadata.Etag), overwrite: true);
        filesDownloaded++;
        bytesDownloaded += length;
        logger.LogInformation("Downloaded {File} of {RepoId}: {Size} bytes in {Seconds:0.0} s", fileName, repoId, length, started.Elapsed.TotalSeconds);
    }

    private static long LengthOf(string path) => new FileInfo(path) is { Exists: true } info ? info.Length : 0;

    /// <summary>
    /// The git object id of a file, which the hub sends as the etag of files not stored in LFS (configs, tokenizer JSON):
    /// checking it catches a resumed download stitched onto bytes a crash damaged, which the size alone cannot.
    /// </summary>
    private static string GitBlobSha1(string path)
    {
        using var sha1 = IncrementalHash.CreateHash(HashAlgorithmName.SHA1);
        using var file = File.OpenRead(path);
        sha1.AppendData(System.Text.Encoding.ASCII.GetBytes($"blob {file.Length}\0"));
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            int read;
            while ((read = file.Read(buffer)) > 0) sha1.AppendData(buffer.AsSpan(0, read));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return Convert.ToHexStringLower(sha1.GetHashAndReset());
    }

    /// <summary>
    /// One GET from where the <c>.incomplete</c> file ends; succeeds once the file has the announced size (or, with none announced,
    /// the body ended) and is fully hashed. Free space is checked before anything is requested, and nothing past the announced
    /// size, or past <see cref="HubOptions.MaxFileSize"/> when none was announced, is ever written.
    /// </summary>
    private async Task<bool> DownloadAttemptAsync(string fileName, FileMetadata metadata, string incomplete, RunningSha256 sha256, CancellationToken token)
    {
        await using var file = client.Storage.OpenIncomplete(incomplete);
        var expected = metadata.Size;
        if (file.Length > expected) Truncate(file, sha256);
        await sha256.CatchUpAsync(file, token).ConfigureAwait(false);

        if (expected is null || file.Length < expected)
        {
            if (expected is { } size) EnsureSpace(fileName, incomplete, size - file.Length);
            using var response = await GetFollowingRedirectsAsync(fileName, metadata.Location, file.Length, token).ConfigureAwait(false);
            if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable || (response.StatusCode == HttpStatusCode.OK && file.Length > 0))
            {
                logger.LogInformation("The server did not resume {File} at byte {Offset} (HTTP {Status}); starting over", fileName, file.Length, (int)response.StatusCode);
                Truncate(file, sha256);
                if (response.StatusCode != HttpStatusCode.OK) throw new HubTransientFailure(null, "the server refused to resume the download");
            }
            else if (response.StatusCode == HttpStatusCode.PartialContent && response.Content.Headers.ContentRange?.From != file.Length)
            {
                Truncate(file, sha256);
                throw new HubTransientFailure(null, "the server resumed the download at the wrong offset");
            }
            else if (!response.IsSuccessStatusCode)
            {
                throw ErrorFromResponse(response, fileName);
            }

            // What this response says the whole file holds: it must agree with the hub, and it sizes a file the hub did not.
            if (response.Content.Headers.ContentLength is { } contentLength)
            {
                var end = file.Length + contentLength;
                if (expected is { } announced && end != announced)
                    throw Error(fileName, null,
                        $"the hub announced {FormatBytes(announced)} but the download server sends {FormatBytes(end)}; nothing more was written.");
                if (expected is null)
                {
                    if (end > settings.MaxFileSize)
                        throw Error(fileName, null,
                            $"the download server announces {FormatBytes(end)}, more than HubOptions.MaxFileSize ({FormatBytes(settings.MaxFileSize)}); nothing more was written.");
                    EnsureSpace(fileName, incomplete, contentLength);
                    expected = end;
                }
            }

            await CopyBodyAsync(response, file, sha256, fileName, incomplete, expected, token).ConfigureAwait(false);
            try
            {
                await file.FlushAsync(CancellationToken.None).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                throw WriteFailed(fileName, incomplete, ex);
            }
        }

        if (file.Length < expected)
            throw new HubTransientFailure(null, $"the connection ended after {file.Length} of {expected} bytes");
        return true;
    }

    /// <summary>
    /// Refuses, before a byte is requested, a download that cannot fit. huggingface_hub only warns here; a warning does not
    /// stop a multi-gigabyte file from filling the disk other programs need.
    /// </summary>
    private void EnsureSpace(string fileName, string incomplete, long neededBytes)
    {
        if (neededBytes <= 0) return;
        var directory = Path.GetDirectoryName(incomplete)!;
        if (client.Storage.AvailableBytes(directory) is { } free && free < neededBytes)
            throw Error(fileName, null,
                $"not enough disk space: the download needs {FormatBytes(neededBytes)} more in '{directory}', whose file system has {FormatBytes(free)} free. "
                + "Free some space or move the cache (HubOptions.CacheDir or HF_HUB_CACHE); nothing was downloaded.");
    }

    private HubException WriteFailed(string fileName, string incomplete, IOException exception)
    {
        var free = client.Storage.AvailableBytes(Path.GetDirectoryName(incomplete)!);
        var message = IsDiskFull(exception)
            ? $"the disk is full: writing '{incomplete}' failed ({exception.Message}){(free is { } bytes ? $" with {FormatBytes(bytes)} free" : "")}. "
              + "Free some space or move the cache (HubOptions.CacheDir or HF_HUB_CACHE); the partial file is kept and a later call resumes it."
            : $"writing '{incomplete}' failed: {exception.Message}";
        return Error(fileName, null, message, exception);
    }

    /// <summary>ENOSPC (28 on Linux and macOS), or Windows' ERROR_DISK_FULL and ERROR_HANDLE_DISK_FULL.</summary>
    private static bool IsDiskFull(IOException exception) =>
        exception.HResult is 28 or unchecked((int)0x80070070) or unchecked((int)0x80070027);

    private static void Truncate(Stream file, RunningSha256 sha256)
    {
        file.SetLength(0);
        sha256.Reset();
    }

    private async Task CopyBodyAsync(
        HttpResponseMessage response, Stream file, RunningSha256 sha256, string fileName, string incomplete, long? expected, CancellationToken token)
    {
        var limit = expected ?? settings.MaxFileSize;
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        using var idle = CancellationTokenSource.CreateLinkedTokenSource(token);
        var clock = Stopwatch.StartNew();
        var lastReport = TimeSpan.Zero;
        long received = 0;
        var offset = file.Length;
        file.Seek(0, SeekOrigin.End);
        try
        {
            Stream body;
            try
            {
                body = await response.Content.ReadAsStreamAsync(token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or HttpRequestException)
            {
                throw new HubTransientFailure(null, $"the connection was lost: {ex.Message}", ex);
            }
            while (true)
            {
                idle.CancelAfter(settings.ReadTimeout);
                int read;
                try
                {
                    read = await body.ReadAsync(buffer, idle.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException ex) when (!token.IsCancellationRequested)
                {
                    throw new HubTransientFailure(null, $"no data for {settings.ReadTimeout.TotalSeconds:0.#} s", ex);
                }
                catch (Exception ex) when (ex is IOException or HttpRequestException)
                {
                    throw new HubTransientFailure(null, $"the connection was lost: {ex.Message}", ex);
                }
                if (read == 0) break;

                // Not one byte past the size: a server that keeps sending must not fill the disk before the size check.
                if (offset + received + read > limit)
                {
                    Truncate(file, sha256);
                    throw Error(fileName, null, expected is not null
                        ? $"the server sent more than the announced {FormatBytes(limit)}; the download was stopped there and the partial file discarded."
                        : $"the server announced no size and sent more than HubOptions.MaxFileSize ({FormatBytes(limit)}); the download was stopped there and the partial file discarded.");
                }

                // Written whatever the token says: the file must end exactly where the hashed bytes end to stay resumable.
                try
                {
                    await file.WriteAsync(buffer.AsMemory(0, read), CancellationToken.None).ConfigureAwait(false);
                }
                catch (IOException ex)
                {
                    throw WriteFailed(fileName, incomplete, ex);
                }
                sha256.Append(buffer.AsSpan(0, read));
                received += read;
                if (clock.Elapsed - lastReport >= ProgressInterval)
                {
                    lastReport = clock.Elapsed;
                    Report(fileName, offset + received, expected ?? 0, received, clock.Elapsed);
                }
            }
            Report(fileName, offset + received, expected ?? offset + received, received, clock.Elapsed);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// The sha256 of the <c>.incomplete</c> file as it grows, kept across retries so a resumed multi-gigabyte download is hashed
    /// once: what an earlier process left is read back, everything received is hashed as it is written.
    /// </summary>
    private sealed class RunningSha256 : IDisposable
    {
        private readonly IncrementalHash hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        private long hashedBytes;

        public void Append(ReadOnlySpan<byte> data)
        {
            hash.AppendData(data);
            hashedBytes += data.Length;
        }

        public void Reset()
        {
            hash.GetHashAndReset();
            hashedBytes = 0;
        }

        /// <summary>Hashes the part of the file not hashed yet; starts over if the file shrank underneath.</summary>
        public async Task CatchUpAsync(Stream file, CancellationToken cancellationToken)
        {
            if (file.Length < hashedBytes) Reset();
            var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
            try
            {
                file.Position = hashedBytes;
                int read;
                while ((read = await file.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                    Append(buffer.AsSpan(0, read));
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        public string Finish() => Convert.ToHexStringLower(hash.GetHashAndReset());

        public void Dispose() => hash.Dispose();
    }

    private void Report(string fileName, long onDisk, long totalBytes, long received, TimeSpan elapsed) =>
        progress?.Report(new DownloadProgress(fileName, onDisk, totalBytes, elapsed > TimeSpan.Zero ? received / elapsed.TotalSeconds : 0));

    /// <summary>GET that follows redirects itself, so the token (sent only to the endpoint's origin) never leaks to the CDN.</summary>
    private async Task<HttpResponseMessage> GetFollowingRedirectsAsync(string fileName, Uri uri, long rangeStart, CancellationToken token)
    {
        for (var hop = 0; hop <= MaxRedirects; hop++)
        {
            var response = await client.SendAsync(HttpMethod.Get, uri, settings, rangeStart, settings.ReadTimeout, token).ConfigureAwait(false);
            if (!IsRedirect(response.StatusCode) || response.Headers.Location is not { } location) return response;
            response.Dispose();
            uri = RedirectTarget(fileName, uri, location);
        }
        throw Error(fileName, null, $"more than {MaxRedirects} redirects.");
    }

    /// <summary>
    /// Where a redirect leads, if it may be followed: http(s) only, and never from https down to http. requests (and so
    /// huggingface_hub) follows a downgrade and only drops the token; here a file whose etag is no checksum would then rest on
    /// an unauthenticated connection alone, and neither the hub nor its CDN ever redirects that way.
    /// </summary>
    private Uri RedirectTarget(string fileName, Uri from, Uri location)
    {
        Uri target;
        try
        {
            target = new Uri(from, location);
        }
        catch (UriFormatException ex)
        {
            throw Error(fileName, null, $"refused a redirect from {from.Host} to a malformed location '{Shorten(location.OriginalString)}'.", ex);
        }
        if (target.Scheme is not ("http" or "https"))
            throw Error(fileName, null,
                $"refused a redirect from {from.Host} to '{Shorten(target.GetLeftPart(UriPartial.Path))}': only http and https locations are followed.");
        if (from.Scheme == "https" && target.Scheme == "http")
            throw Error(fileName, null,
                $"refused a redirect from {from.Host} to '{Shorten(target.GetLeftPart(UriPartial.Path))}': a download that started on https never continues on plain http.");
        return target;
    }

    /// <summary>
    /// Runs one network step (a metadata request, or one file's download) with retries, within an overall deadline that
    /// covers every attempt and every wait between them; the caller's cancellation ends it at once as itself.
    /// </summary>
    private async Task<T> WithRetriesAsync<T>(string fileName, TimeSpan deadline, Func<string> deadlineMessage, Func<CancellationToken, Task<T>> attempt)
    {
        var policy = client.RetryPolicy;
        using var step = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // CancelAfter accepts at most 2³²−2 ms (49 days); a longer deadline is none in practice.
        if (deadline != Timeout.InfiniteTimeSpan && deadline < TimeSpan.FromDays(49)) step.CancelAfter(deadline);
        HubException DeadlinePassed(Exception inner)
        {
            var reason = deadlineMessage();
            return new HubException(repoId, settings.Revision, fileName, null, Scrub(reason), inner) { IsTransient = true, Reason = reason };
        }

        for (var number = 1; ; number++)
        {
            try
            {
                return await attempt(step.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException ex) when (step.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                throw DeadlinePassed(ex);
            }
            catch (HubTransientFailure failure) when (number < policy.MaxAttempts)
            {
                var delay = policy.DelayBefore(number, failure.RetryAfter);
                logger.LogWarning("{File} of {RepoId}: {Reason}; retry {Retry} of {Retries} in {Delay:0.##} s",
                    fileName, repoId, failure.Message, number, policy.MaxAttempts - 1, delay.TotalSeconds);
                try
                {
                    await Task.Delay(delay, step.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
                {
                    throw DeadlinePassed(ex);
                }
            }
            catch (HubTransientFailure failure)
            {
                var message = failure.StatusCode switch
                {
                    429 when settings.Token is null =>
                        $"rate limited by the hub (HTTP 429) after {number} attempts; wait a while, or pass a token (HubOptions.Token or HF_TOKEN) for a higher limit.",
                    429 => $"rate limited by the hub (HTTP 429) after {number} attempts, with the token's limit; wait a while and try again.",
                    { } status => $"the hub answered HTTP {status} after {number} attempts; try again later.",
                    null => $"{failure.Message} (after {number} attempts).",
                };
                throw new HubException(repoId, settings.Revision, fileName, failure.StatusCode, Scrub(message), failure.InnerException)
                {
                    IsTransient = true,
                    Reason = Scrub(message),
                };
            }
        }
    }

    private static string Duration(TimeSpan span) =>
        span == Timeout.InfiniteTimeSpan ? "none"
        : span < TimeSpan.FromMinutes(2) ? $"{span.TotalSeconds.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)} s"
        : span < TimeSpan.FromHours(2) ? $"{span.TotalMinutes.ToString("0.#", System.Globalization.CultureInfo.InvariantCulture)} min"
        : $"{span.TotalHours.ToString("0.#", System.Globalization.CultureInfo.InvariantCulture)} h";

    private static string FormatBytes(long bytes) =>
        string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes:N0} bytes ({bytes / 1e6:0.##} MB)");

    private static bool IsEntryNotFound(HttpResponseMessage response, string? commit) =>
        response.StatusCode == HttpStatusCode.NotFound
        && (Header(response, "X-Error-Code") == "EntryNotFound" || (Header(response, "X-Error-Code") is null && commit is not null));

    /// <summary>Turns a failed response into a retryable failure (429, 5xx) or a <see cref="HubException"/> that says what to do.</summary>
    private Exception ErrorFromResponse(HttpResponseMessage response, string fileName)
    {
        var status = (int)response.StatusCode;
        if (status == 429 || status >= 500)
            return new HubTransientFailure(status, $"HTTP {status}", retryAfter: response.Headers.RetryAfter?.Delta);

        var code = Header(response, "X-Error-Code");
        var serverMessage = Header(response, "X-Error-Message") is { } text ? $" The hub says: {Scrub(text)}" : "";
        var tokenHint = settings.Token is null
            ? "pass a token with access (HubOptions.Token or HF_TOKEN)"
            : "check that the token (HubOptions.Token or HF_TOKEN) is valid and has access";
        var message = (status, code) switch
        {
            (_, "GatedRepo") => $"the repository is gated (HTTP {status}): accept its conditions on the model page, then {tokenHint}.",
            (_, "RepoNotFound") or (401, _) =>
                $"repository not found or not accessible (HTTP {status}). Check the model id; if the repository is private or gated, {tokenHint}.",
            (403, _) => $"access denied (HTTP 403); {tokenHint}.",
            (_, "RevisionNotFound") => $"revision not found (HTTP {status}): no branch, tag or commit of that name.",
            (404, "EntryNotFound") => "the file does not exist in the repository at this revision (HTTP 404).",
            (404, _) => "not found (HTTP 404): the repository, the revision or the file does not exist.",
            _ => $"the hub answered HTTP {status}.",
        };
        return Error(fileName, status, message + serverMessage);
    }

    private HubException Error(string? fileName, int? statusCode, string message, Exception? innerException = null) =>
        new(repoId, settings.Revision, fileName, statusCode, Scrub(message), innerException);

    /// <summary>Removes the token from any text that may reach an exception message or a log.</summary>
    private string Scrub(string text) =>
        settings.Token is { Length: > 0 } token ? text.Replace(token, "***", StringComparison.Ordinal) : text;

    private static bool IsRedirect(HttpStatusCode status) => (int)status is >= 300 and < 400;

    private static string? Header(HttpResponseMessage response, string name) =>
        response.Headers.TryGetValues(name, out var values) ? values.FirstOrDefault() : null;

    /// <summary>huggingface_hub's etag normalization: drop the weak marker and the quotes.</summary>
    private static string? NormalizeEtag(string? etag)
    {
        if (etag is null) return null;
        if (etag.StartsWith("W/", StringComparison.Ordinal)) etag = etag[2..];
        return etag.Trim('"') is { Length: > 0 } plain ? plain : null;
    }

    private static string Shorten(string value) => value.Length <= 80 ? value : value[..80] + "…";
}
