using Rinna.Net.Native;

namespace Rinna.Net.Hub;

/// <summary>
/// The file-system calls of a download that depend on the state of the disk: its free space, and the <c>.incomplete</c>
/// file the bytes go to. Tests replace it to fake a nearly full disk or a write that fails.
/// </summary>
internal class HubStorage
{
    public static HubStorage Default { get; } = new();

    /// <summary>Bytes free for this user on the file system holding <paramref name="directory"/>; <c>null</c> when unknown.</summary>
    public virtual long? AvailableBytes(string directory) => DiskSpace.AvailableBytes(directory);

    /// <summary>Opens or creates a download's <c>.incomplete</c> file, readable (to hash what is there) and writable.</summary>
    public virtual Stream OpenIncomplete(string path) =>
        new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read, 1, FileOptions.Asynchronous);
}
