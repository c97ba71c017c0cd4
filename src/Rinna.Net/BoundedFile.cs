using Microsoft.Win32.SafeHandles;
using Rinna.Net.Native;

namespace Rinna.Net;

/// <summary>
/// The one way the library opens a local model or tokenizer file: only regular files (a link to <c>/dev/zero</c>, a
/// named pipe or a directory fails at once, without blocking), and small files are read whole only up to a limit
/// proportional to what they describe. Every failure is an <see cref="IOException"/> (or
/// <see cref="UnauthorizedAccessException"/>) that the caller reports as its own exception, naming the file.
/// </summary>
internal static class BoundedFile
{
    /// <summary>The most bytes of a JSON configuration file (<c>config.json</c>, a shard index, ...).</summary>
    public const int JsonLimit = 64 << 20;

    /// <summary>Opens a regular file for reading, refusing one longer than <paramref name="maxBytes"/>.</summary>
    /// <exception cref="IOException">Missing, not a regular file, unreadable, or longer than <paramref name="maxBytes"/>.</exception>
    /// <exception cref="UnauthorizedAccessException">No permission to read it.</exception>
    public static (SafeFileHandle Handle, long Length) OpenRegular(string path, long maxBytes = long.MaxValue)
    {
        var (handle, length) = RegularFile.OpenRead(path);
        if (length > maxBytes)
        {
            handle.Dispose();
            throw TooLarge(length, maxBytes);
        }
        return (handle, length);
    }

    /// <summary><see cref="OpenRegular"/> as a stream.</summary>
    public static FileStream OpenStream(string path, long maxBytes = long.MaxValue, int bufferSize = 4096)
    {
        var (handle, _) = OpenRegular(path, maxBytes);
        try
        {
            return new FileStream(handle, FileAccess.Read, bufferSize);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Reads a regular file whole, up to <paramref name="maxBytes"/> bytes.</summary>
    /// <exception cref="IOException">The file cannot be read, is not a regular file, or holds (or grows to) more than <paramref name="maxBytes"/> bytes.</exception>
    /// <exception cref="UnauthorizedAccessException">No permission to read it.</exception>
    public static byte[] ReadAllBytes(string path, int maxBytes = JsonLimit)
    {
        var (handle, length) = OpenRegular(path, maxBytes);
        using (handle) return ReadAll(handle, length, maxBytes);
    }

    /// <summary>Reads an opened file of <paramref name="length"/> bytes whole, refusing it when it grew past <paramref name="maxBytes"/>.</summary>
    public static byte[] ReadAll(SafeFileHandle handle, long length, int maxBytes)
    {
        // The length sizes the buffer; one byte more tells a file that grew past the limit while it was read.
        var buffer = new byte[(int)Math.Min(maxBytes + 1L, length + 1)];
        int total = 0;
        while (total < buffer.Length)
        {
            int read = RandomAccess.Read(handle, buffer.AsSpan(total), total);
            if (read == 0) break;
            total += read;
        }
        if (total > maxBytes) throw TooLarge(total, maxBytes);
        Array.Resize(ref buffer, total);
        return buffer;
    }

    /// <summary><see cref="ReadAllBytes"/> as UTF-8 text.</summary>
    public static string ReadAllText(string path, int maxBytes = JsonLimit) =>
        System.Text.Encoding.UTF8.GetString(ReadAllBytes(path, maxBytes)).TrimStart('\uFEFF');

    private static IOException TooLarge(long length, long maxBytes) =>
        new($"the file has {length} bytes, more than the {maxBytes} this kind of file may hold.");
}
