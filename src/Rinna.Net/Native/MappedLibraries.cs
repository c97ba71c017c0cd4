namespace Rinna.Net.Native;

/// <summary>
/// The files mapped into this process (Linux's <c>/proc/self/maps</c>), to find the native libraries libtorch loaded:
/// its bundled libgomp, libtorch_cpu itself.
/// </summary>
internal static class MappedLibraries
{
    /// <summary>The absolute paths of the mapped files, each once, in map order; empty where the map cannot be read.</summary>
    public static IReadOnlyList<string> Paths()
    {
        if (!OperatingSystem.IsLinux()) return [];
        try
        {
            return File.ReadLines("/proc/self/maps")
                .Select(line => line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries))
                .Where(fields => fields.Length == 6 && fields[5].StartsWith('/'))
                .Select(fields => fields[5].Trim())
                .Distinct()
                .ToArray();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }

    /// <summary>The first mapped file named <paramref name="fileName"/> (for example <c>libtorch_cpu.so</c>), or null.</summary>
    public static string? Find(string fileName) => Paths().FirstOrDefault(path => Path.GetFileName(path) == fileName);
}
