namespace Rinna.Net.Benchmarks;

/// <summary>Settings shared by the host and the benchmark processes (passed through the environment).</summary>
public static class BenchmarkSettings
{
    public const string ShortVariable = "RINNA_BENCH_SHORT";

    public static bool Short => Environment.GetEnvironmentVariable(ShortVariable) == "1";
}
