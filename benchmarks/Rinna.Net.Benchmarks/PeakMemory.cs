namespace Rinna.Net.Benchmarks;

/// <summary>Peak resident memory of the benchmark process (VmHWM), which includes libtorch's native allocations.</summary>
public static class PeakMemory
{
    // A fixed location: BenchmarkDotNet runs each case in its own process from its own build directory.
    public static string File => Path.Combine(Path.GetTempPath(), "rinna-net-bench-peak-memory.tsv");

    public static long ReadPeakBytes()
    {
        foreach (var line in System.IO.File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                return long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1]) * 1024; // "VmHWM:\t10470400 kB": no space after the tab from 10 GB on
        return 0;
    }

    /// <summary>Appends this process's peak to a shared file; the host aggregates it into the report.</summary>
    public static void Record(string benchmark) =>
        System.IO.File.AppendAllText(File, $"{benchmark}\t{ReadPeakBytes()}\n");
}
