using System.Diagnostics;
using System.Runtime;

namespace Rinna.Net.Benchmarks;

/// <summary>Warm-up until the JIT has finished tiering the code a benchmark runs, so that it measures a host's steady state.</summary>
/// <remarks>
/// Why: the .NET JIT recompiles hot methods in the background (tier 0, then instrumented, then optimized code) in batches
/// spread over tens of seconds, and on a 2-core machine each batch competes with libtorch's two threads. One or two
/// BenchmarkDotNet warm-up iterations of a few hundred milliseconds end long before that: eight demo chats took 43–46 ms
/// in rounds where nothing was compiled and up to 300 ms in rounds where several hundred methods were (benchmarks/RESULTS.md).
/// </remarks>
public static class SteadyState
{
    /// <summary>
    /// Runs <paramref name="round"/> until it has run for <paramref name="quiet"/> without the JIT compiling a method
    /// (<see cref="JitInfo.GetCompiledMethodCount"/>), or for <paramref name="limit"/> in all; returns the rounds run.
    /// </summary>
    public static int WarmUp(Action round, TimeSpan quiet, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        var sinceCompiling = Stopwatch.StartNew();
        long compiled = JitInfo.GetCompiledMethodCount();
        int rounds = 0;
        while (clock.Elapsed < limit)
        {
            round();
            rounds++;
            long now = JitInfo.GetCompiledMethodCount();
            if (now != compiled)
            {
                compiled = now;
                sinceCompiling.Restart();
            }
            else if (sinceCompiling.Elapsed >= quiet) break;
        }
        Console.WriteLine($"// warm-up: {rounds} rounds in {clock.Elapsed.TotalSeconds:F1} s, the last {sinceCompiling.Elapsed.TotalSeconds:F1} s without JIT compilation");
        return rounds;
    }
}
