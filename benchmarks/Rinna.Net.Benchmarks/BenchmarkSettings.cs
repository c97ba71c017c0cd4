namespace Rinna.Net.Benchmarks;

/// <summary>Settings shared by the host and the benchmark processes (passed through the environment).</summary>
public static class BenchmarkSettings
{
    public const string ShortVariable = "RINNA_BENCH_SHORT";

    public const string ShapesVariable = "RINNA_BENCH_SHAPES";
    public const string DTypesVariable = "RINNA_BENCH_DTYPES";

    public static bool Short => Environment.GetEnvironmentVariable(ShortVariable) == "1";

    /// <summary>
    /// Narrows a parameter list to the comma-separated values of an environment variable (e.g. RINNA_BENCH_DTYPES=Float16,Int8),
    /// so that a long full-size run can measure only what is asked; unset keeps every value. Values in
    /// <paramref name="onRequest"/> (the full-size model where a benchmark's default is its 4-layer cut) run only when named.
    /// </summary>
    public static IEnumerable<string> Only(string variable, IEnumerable<string> values, IEnumerable<string>? onRequest = null)
    {
        var wanted = Environment.GetEnvironmentVariable(variable)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return wanted is null or [] ? values : values.Concat(onRequest ?? []).Distinct().Where(wanted.Contains);
    }
}
