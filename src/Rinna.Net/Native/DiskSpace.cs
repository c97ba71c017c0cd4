namespace Rinna.Net.Native;

/// <summary>
/// Free space of the file system that holds a directory: <c>statvfs</c> on Unix and <c>GetDiskFreeSpaceEx</c> on Windows,
/// both reached through <see cref="DriveInfo"/>, which accepts any path on Unix and the path's root on Windows.
/// </summary>
internal static class DiskSpace
{
    /// <summary>
    /// Bytes this user may still write next to <paramref name="directory"/> (or its nearest existing parent, as
    /// huggingface_hub's <c>_check_disk_space</c> looks), or <c>null</c> when the system cannot tell.
    /// </summary>
    public static long? AvailableBytes(string directory)
    {
        for (var path = Path.GetFullPath(directory); path is not null; path = Path.GetDirectoryName(path))
        {
            if (!Directory.Exists(path)) continue;
            try
            {
                return new DriveInfo(path).AvailableFreeSpace;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
            {
                // A network share or an exotic mount that will not say: the write itself still fails cleanly when full.
                return null;
            }
        }
        return null;
    }
}
