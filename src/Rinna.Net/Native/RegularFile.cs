using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Rinna.Net.Native;

/// <summary>
/// Opens a file for reading only when it is a regular file. A name that links to a device (<c>/dev/zero</c>) or is a
/// named pipe must fail at once: reading a device never ends, and opening a pipe blocks until a writer appears, beyond
/// the reach of any cancellation token.
/// </summary>
/// <remarks>
/// On Linux the file is opened with <c>O_NONBLOCK</c>, so opening a pipe returns at once, and the type is checked on the
/// opened descriptor (<c>statx</c> with <c>AT_EMPTY_PATH</c>), so a file swapped for a pipe between a check and the open
/// is still refused. Elsewhere the name's final link target is checked before an ordinary open.
/// </remarks>
internal static partial class RegularFile
{
    private const int ORdOnly = 0;
    private const int ONonBlock = 0x800;
    private const int OCloExec = 0x80000;
    private const int FGetFl = 3;
    private const int FSetFl = 4;
    private const int AtEmptyPath = 0x1000;
    private const uint StatxType = 0x1;
    private const uint StatxSize = 0x200;
    private const int StatxModeOffset = 28; // struct statx is the same on every Linux architecture
    private const int StatxSizeOffset = 40;
    private const int FileTypeMask = 0xF000;
    private const int Regular = 0x8000;

    private static readonly bool Linux = OperatingSystem.IsLinux() && NativeLibrary.TryLoad("libc.so.6", out _);

    /// <summary>Opens <paramref name="path"/> for reading, following links, and returns the handle with the file's length.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="UnauthorizedAccessException">The file cannot be read.</exception>
    /// <exception cref="IOException">The name is a directory, device, pipe or socket, or cannot be opened.</exception>
    public static (SafeFileHandle Handle, long Length) OpenRead(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (path.Contains('\0')) throw new IOException("the file name contains NUL.");
        if (Linux)
        {
            try
            {
                return OpenLinux(path);
            }
            catch (EntryPointNotFoundException)
            {
                // A C library older than statx (glibc 2.28): the portable check below still refuses devices and pipes by name.
            }
        }
        return OpenPortable(path);
    }

    private static unsafe (SafeFileHandle, long) OpenLinux(string path)
    {
        int fd = Open(path, ORdOnly | ONonBlock | OCloExec);
        if (fd < 0) throw OpenError(Marshal.GetLastPInvokeError(), path);
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            byte* status = stackalloc byte[256];
            if (Statx(fd, "", AtEmptyPath, StatxType | StatxSize, status) != 0)
                throw new IOException($"cannot inspect the file ({Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}).");
            int mode = *(ushort*)(status + StatxModeOffset);
            if ((mode & FileTypeMask) != Regular) throw NotRegular(KindOf(mode));
            // Reads of a regular file never block anyway; the flag is cleared so the stream sees an ordinary handle.
            int flags = Fcntl(fd, FGetFl, 0);
            if (flags >= 0) _ = Fcntl(fd, FSetFl, flags & ~ONonBlock);
            return (handle, *(long*)(status + StatxSizeOffset));
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static (SafeFileHandle, long) OpenPortable(string path)
    {
        FileSystemInfo info = new FileInfo(path);
        if (info.LinkTarget is not null) info = info.ResolveLinkTarget(returnFinalTarget: true) ?? info;
        if (Directory.Exists(info.FullName)) throw NotRegular("directory");
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        return (handle, RandomAccess.GetLength(handle));
    }

    private static string KindOf(int mode) => (mode & FileTypeMask) switch
    {
        0x4000 => "directory",
        0x2000 => "character device",
        0x6000 => "block device",
        0x1000 => "named pipe (FIFO)",
        0xC000 => "socket",
        _ => "special file",
    };

    private static IOException NotRegular(string kind) =>
        new($"it is a {kind}, not a regular file; a model or tokenizer file must be a regular file (or a link to one).");

    private static Exception OpenError(int errno, string path)
    {
        var reason = Marshal.GetPInvokeErrorMessage(errno);
        return errno switch
        {
            2 or 20 => new FileNotFoundException($"the file does not exist ({reason}).", path),
            1 or 13 => new UnauthorizedAccessException($"the file cannot be read ({reason})."),
            21 => NotRegular("directory"),
            _ => new IOException($"cannot open the file ({reason})."),
        };
    }

    [LibraryImport("libc.so.6", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc.so.6", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int Statx(int directory, string path, int flags, uint mask, byte* status);

    [LibraryImport("libc.so.6", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);
}
