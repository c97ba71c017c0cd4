using Microsoft.Extensions.Logging;

namespace Rinna.Net.Hub;

/// <summary>
/// An inter-process lock on <c>.locks/models--org--name/&lt;etag&gt;.lock</c>. On Unix <see cref="FileShare.None"/> takes an
/// exclusive <c>flock</c>, the same kind of lock Python's <c>filelock</c> takes on that file, so .NET and Python processes
/// downloading the same blob wait for each other.
/// </summary>
internal sealed class HubFileLock : IDisposable
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(100);
    private readonly FileStream _handle;

    private HubFileLock(FileStream handle) => _handle = handle;

    public static async Task<HubFileLock> AcquireAsync(string path, string fileName, ILogger logger, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var waiting = false;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            try
            {
                return new HubFileLock(new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None));
            }
            catch (IOException) when (File.Exists(path))
            {
                // The lock file exists and could not be opened exclusively: another process or thread holds it.
                if (!waiting) logger.LogInformation("Waiting for another download of {File} to finish (lock {LockPath})", fileName, path);
                waiting = true;
            }
            await Task.Delay(PollInterval, cancellationToken).ConfigureAwait(false);
        }
    }

    public void Dispose() => _handle.Dispose();
}
