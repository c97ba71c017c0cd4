using System.Diagnostics;
using System.Globalization;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// One of our rows of <c>benchmarks/machine-table.sh</c>: load time, prefill-512 and decode speed, and peak memory of
/// one dtype in one process, timed by a stopwatch around <see cref="GenerationBenchmarks"/>' own code (the table
/// alternates these rows with llama.cpp's, as peer-ratio.sh's FINE pairs do, which BenchmarkDotNet cannot).
/// </summary>
internal static class MachineRow
{
    /// <summary>Measures and prints one <c>RESULT key=value …</c> line; the medians are over <paramref name="repetitions"/> runs after a warm-up.</summary>
    public static int Run(string shape, string dtype, int repetitions)
    {
        BenchmarkCheckpoints.Ensure(shape);
        var bench = new GenerationBenchmarks { Shape = shape, DType = dtype };
        var clock = Stopwatch.StartNew();
        bench.Setup();
        double loadSeconds = clock.Elapsed.TotalSeconds;

        bench.PrefillToken512();
        bench.PrefillBeforeDecode();
        bench.DecodeToken();
        var prefill = new List<double>();
        var decode = new List<double>();
        for (int i = 0; i < repetitions; i++)
        {
            clock.Restart();
            bench.PrefillToken512();
            prefill.Add(512 / clock.Elapsed.TotalSeconds);
            bench.PrefillBeforeDecode();
            clock.Restart();
            bench.DecodeToken();
            decode.Add(GenerationBenchmarks.DecodeSteps / clock.Elapsed.TotalSeconds);
        }

        var model = bench.Model;
        long weights = model.GetMemoryFootprint();
        // A decode step reads every weight but the input embedding, of which it reads one row.
        var embedding = model.named_parameters().Single(p => p.name.EndsWith("embed_in.weight", StringComparison.Ordinal)).parameter;
        long decodeBytes = weights - embedding.numel() * embedding.ElementSize;
        long peak = PeakMemory.ReadPeakBytes();
        bench.Cleanup();
        Console.WriteLine("KERNELS " + string.Join("; ", KernelChoices.Describe()));
        // peak_rss_mb is VmHWM in MiB, as llama.cpp's peer tool reports its own; machine_table.py shows both in MB.
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT load_s={loadSeconds:F2} prefill_tok_s={Median(prefill):F2} decode_tok_s={Median(decode):F3} " +
            $"peak_rss_mb={peak / 1048576.0:F0} weights_mb={weights / 1e6:F0} decode_bytes_mb={decodeBytes / 1e6:F0}"));
        return 0;
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values.Count % 2 == 1 ? values[values.Count / 2] : (values[values.Count / 2 - 1] + values[values.Count / 2]) / 2;
    }
}
