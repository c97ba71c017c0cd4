using System.Runtime.InteropServices;

namespace Rinna.Net.Tests;

/// <summary>Resident memory of the test process as Linux counts it (libtorch's native allocations included).</summary>
internal static partial class ProcessMemory
{
    public static long ResidentBytes => Status("VmRSS:");

    public static long PeakResidentBytes => Status("VmHWM:");

    /// <summary>Returns freed heap memory to the OS and restarts the peak (VmHWM) from the current RSS.</summary>
    public static void ResetPeak()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        MallocTrim(0);
        File.WriteAllText("/proc/self/clear_refs", "5");
    }

    private static long Status(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line[key.Length..].Trim().Split(' ')[0]) * 1024;
        throw new InvalidOperationException($"{key} not found in /proc/self/status");
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}

/// <summary>Tests that measure process-wide memory, or compare timings, must not overlap with other tests.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialMemoryCollection
{
    public const string Name = "Serial memory measurements";
}
