using System.Diagnostics;
using System.Globalization;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// Runs a seeded mutation campaign: each input must end in success or a <see cref="RinnaException"/> within a per-input
/// time limit, without allocating far more managed or native memory than the input could justify. Failures are grouped
/// by exception type and throwing frame so one bug reports once, with the iteration that reproduces it.
/// </summary>
internal static class FuzzRunner
{
    /// <summary>Environment variable that sets the iterations of every campaign (the long run); unset, each uses its CI default.</summary>
    public const string IterationsVariable = "RINNA_FUZZ_ITERATIONS";

    /// <summary>Environment variable that changes the base seed (default fixed, so CI runs are reproducible).</summary>
    public const string SeedVariable = "RINNA_FUZZ_SEED";

    private static readonly TimeSpan PerInputTimeout = TimeSpan.FromSeconds(30);
    private const long ManagedAllocationLimit = 512L << 20;
    private const long NativePeakGrowthLimit = 1L << 30;

    public static int Iterations(int ciDefault) =>
        int.TryParse(Environment.GetEnvironmentVariable(IterationsVariable), CultureInfo.InvariantCulture, out var n) && n > 0 ? n : ciDefault;

    public static int BaseSeed =>
        int.TryParse(Environment.GetEnvironmentVariable(SeedVariable), CultureInfo.InvariantCulture, out var s) ? s : 20261127;

    /// <summary>Runs <paramref name="attempt"/> once per iteration with a mutator seeded by (base seed, target, iteration).</summary>
    public static void Run(string target, int ciIterations, ITestOutputHelper output, Action<Mutator> attempt)
    {
        int iterations = Iterations(ciIterations);
        int targetSeed = BaseSeed ^ StableHash(target);
        var outcomes = new SortedDictionary<string, int>(StringComparer.Ordinal);
        var failures = new Dictionary<string, (int Iteration, int Count, string Detail)>(StringComparer.Ordinal);
        long startPeak = ProcessMemory.PeakResidentBytes;
        var clock = Stopwatch.StartNew();

        for (int i = 0; i < iterations; i++)
        {
            int seed = targetSeed + i;
            long allocated = 0;
            var run = Task.Factory.StartNew(() =>
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                try
                {
                    attempt(new Mutator(seed));
                }
                finally
                {
                    allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                }
            }, CancellationToken.None, TaskCreationOptions.None, TaskScheduler.Default);

            string outcome;
            string? failure = null;
            if (Task.WaitAny([run], PerInputTimeout) < 0)
            {
                outcome = "HANG";
                failure = $"no result within {PerInputTimeout.TotalSeconds:0} s";
                Record(failures, "hang", i, seed, failure);
                break; // the stuck thread keeps running; later inputs would measure nothing useful
            }
            var error = run.Exception?.InnerException;
            outcome = error is null ? "ok" : error.GetType().Name;
            if (error is not null and not RinnaException)
                failure = Describe(error);
            else if (allocated > ManagedAllocationLimit)
                failure = $"allocated {allocated >> 20} MiB of managed memory for one input";
            if (failure is not null)
                Record(failures, error is not null and not RinnaException ? $"{error.GetType().FullName} at {TopFrame(error)}" : "allocation", i, seed, failure);
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
        }

        long peakGrowth = ProcessMemory.PeakResidentBytes - startPeak;
        output.WriteLine($"{target}: {iterations} inputs in {clock.Elapsed.TotalSeconds:0.0} s, seed {targetSeed}; outcomes: "
            + string.Join(", ", outcomes.Select(kv => $"{kv.Key} {kv.Value}")) + $"; peak RSS growth {peakGrowth >> 20} MiB");
        Assert.True(failures.Count == 0, $"{target}: {failures.Count} distinct undocumented failure(s):\n"
            + string.Join("\n", failures.Select(kv => $"- {kv.Key} ×{kv.Value.Count}; first at iteration {kv.Value.Iteration}: {kv.Value.Detail}")));
        Assert.True(peakGrowth < NativePeakGrowthLimit, $"{target}: peak resident memory grew by {peakGrowth >> 20} MiB during the campaign.");
    }

    private static void Record(Dictionary<string, (int, int, string)> failures, string key, int iteration, int seed, string detail)
    {
        failures[key] = failures.TryGetValue(key, out var existing)
            ? (existing.Item1, existing.Item2 + 1, existing.Item3)
            : (iteration, 1, $"(seed {seed}) {detail}");
    }

    private static string Describe(Exception error)
    {
        var text = $"{error.GetType().FullName}: {error.Message}";
        return text.Length > 400 ? text[..400] + "…" : text + "\n" + string.Join("\n", (error.StackTrace ?? "").Split('\n').Take(8));
    }

    private static string TopFrame(Exception error) =>
        (error.StackTrace ?? "").Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.Contains("Rinna.Net.", StringComparison.Ordinal)
            && !l.Contains("Rinna.Net.Tests", StringComparison.Ordinal)) ?? "(outside Rinna.Net)";

    private static int StableHash(string text)
    {
        unchecked
        {
            int hash = (int)2166136261;
            foreach (char c in text) hash = (hash ^ c) * 16777619;
            return hash & 0x3fffffff;
        }
    }
}
