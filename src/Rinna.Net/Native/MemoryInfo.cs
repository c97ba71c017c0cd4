namespace Rinna.Net.Native;

/// <summary>How much memory a load may still take, so that a weight larger than that is refused before it is allocated.</summary>
/// <remarks>
/// libtorch's allocator fails only when the kernel refuses the address range; a claim that the kernel grants but cannot
/// back ends in the OOM killer once the pages are populated. So sizes are compared with what is available first.
/// </remarks>
internal static class MemoryInfo
{
    /// <summary>
    /// Bytes that can still be allocated: on Linux <c>MemAvailable</c> plus free swap, capped by the cgroup's
    /// <c>memory.max</c> less its usage; elsewhere the memory the runtime reports as available to the process.
    /// </summary>
    public static long AvailableBytes
    {
        get
        {
            if (!OperatingSystem.IsLinux()) return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            long available = long.MaxValue;
            try
            {
                long memAvailable = -1, swapFree = 0;
                foreach (var line in File.ReadLines("/proc/meminfo"))
                {
                    if (line.StartsWith("MemAvailable:", StringComparison.Ordinal)) memAvailable = Kilobytes(line);
                    else if (line.StartsWith("SwapFree:", StringComparison.Ordinal)) swapFree = Kilobytes(line);
                }
                if (memAvailable >= 0) available = memAvailable + swapFree;
                if (ReadNumber("/sys/fs/cgroup/memory.max") is { } max && ReadNumber("/sys/fs/cgroup/memory.current") is { } current)
                    available = Math.Min(available, Math.Max(0, max - current));
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or OverflowException)
            {
                // Without the figures nothing is refused in advance; libtorch's own failure is still reported.
            }
            return available;
        }
    }

    private static long Kilobytes(string line) => long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;

    /// <summary>A cgroup file holding one number, or null when it is absent or says <c>max</c>.</summary>
    private static long? ReadNumber(string path)
    {
        if (!File.Exists(path)) return null;
        var text = File.ReadAllText(path).Trim();
        return long.TryParse(text, out var value) ? value : null;
    }
}
