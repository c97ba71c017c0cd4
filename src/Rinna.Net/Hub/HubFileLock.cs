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
    private readonly FileStream handle;

    private HubFileLock(FileStream handle) => this.handle = handle;

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
            catch (IOException ex) when (IsHeldByAnother(ex))
            {
                if (!waiting) logger.LogInformation("Waiting for another download of {File} to finish (lock {LockPath})", fileName, path);
                waiting = true;
            }
            await Task.Delay(PollInterval, cancellationToken).ConfigureAwait(false);
        }
    }

    public void Dispose() => handle.Dispose();

    /// <summary>EWOULDBLOCK from <c>flock</c> (Linux 11, macOS 35), or a Windows sharing or lock violation.</summary>
    private static bool IsHeldByAnother(IOException exception) =>
        exception.HResult is 11 or 35 or unchecked((int)0x80070020) or unchecked((int)0x80070021);
}
