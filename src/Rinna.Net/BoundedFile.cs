namespace Rinna.Net;

/// <summary>
/// Reads a small file whole, but never more than a limit: a configuration name that points at a device such as
/// <c>/dev/zero</c>, or at a huge file, fails fast with an <see cref="IOException"/> instead of exhausting memory.
/// </summary>
internal static class BoundedFile
{
    /// <summary>The most bytes of a JSON configuration file (<c>config.json</c>, a shard index, ...).</summary>
    public const int JsonLimit = 64 << 20;

    /// <exception cref="IOException">The file cannot be read, or holds more than <paramref name="maxBytes"/> bytes.</exception>
    public static byte[] ReadAllBytes(string path, int maxBytes = JsonLimit)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.SequentialScan);
        // The length a regular file reports sizes the buffer; devices report 0 and are read in chunks up to the limit.
        var buffer = new byte[(int)Math.Min(maxBytes + 1L, stream.CanSeek && stream.Length > 0 ? stream.Length + 1 : 64 * 1024)];
        int total = 0;
        while (true)
        {
            if (total == buffer.Length)
            {
                if (buffer.Length > maxBytes) break;
                Array.Resize(ref buffer, (int)Math.Min(maxBytes + 1L, buffer.Length * 2L));
            }
            int read = stream.Read(buffer, total, buffer.Length - total);
            if (read == 0) break;
            total += read;
        }
        if (total > maxBytes)
            throw new IOException($"the file is larger than {maxBytes} bytes, far more than this kind of file holds.");
        Array.Resize(ref buffer, total);
        return buffer;
    }

    /// <summary><see cref="ReadAllBytes"/> as UTF-8 text.</summary>
    public static string ReadAllText(string path, int maxBytes = JsonLimit) =>
        System.Text.Encoding.UTF8.GetString(ReadAllBytes(path, maxBytes)).TrimStart('\uFEFF');
}
