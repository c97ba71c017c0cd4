using System.Globalization;
using System.Text;
using BenchmarkDotNet.Reports;

namespace Rinna.Net.Benchmarks;

/// <summary>Turns the run into the markdown the README quotes: throughput, roofline, peak memory, machine load.</summary>
public static class Report
{
    public static void Write(IReadOnlyList<Summary> summaries, bool isShort, string loadBefore, string loadAfter)
    {
        var reports = summaries.SelectMany(s => s.Reports).Where(r => r.ResultStatistics is not null).ToList();
        if (reports.Count == 0) return;
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine($"# Rinna.Net benchmark results ({(isShort ? "short" : "full")} run, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
        md.AppendLine();
        md.AppendLine($"Machine: {KernelChoices.Cpu()}, {Environment.OSVersion}; load average before `{loadBefore.Trim()}`, after `{loadAfter.Trim()}`.");
        md.AppendLine();
        md.AppendLine("Kernels: " + string.Join("; ", KernelChoices.Describe()) + ".");
        md.AppendLine();

        double? bandwidth = reports.FirstOrDefault(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name == "ReadOneGiB")?.ResultStatistics is { } bw
            ? MemoryBandwidthBenchmarks.Bytes / bw.Mean : null; // bytes per ns == GB/s
        if (bandwidth is { } gbps) md.AppendLine($"Measured read bandwidth (libtorch sum, 2 threads): **{gbps:F1} GB/s**.").AppendLine();

        md.AppendLine("| benchmark | shape | dtype | tokens/s | decode roofline tokens/s | % of roofline |");
        md.AppendLine("| --- | --- | --- | --- | --- | --- |");
        foreach (var r in reports.Where(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name.Contains("Token")))
        {
            var method = r.BenchmarkCase.Descriptor.WorkloadMethod.Name;
            var shape = Parameter(r, "Shape") ?? "rinna-demo (chat)";
            var dtype = Parameter(r, "DType") ?? "";
            double tokensPerSecond = 1e9 / r.ResultStatistics!.Mean;
            string roofline = "", percent = "";
            if (method == "DecodeToken" && bandwidth is { } b && shape != "rinna-demo (chat)")
            {
                double limit = b * 1e9 / ModelShapes.DecodeBytesPerToken(ModelShapes.Get(shape), dtype);
                roofline = limit.ToString("F2", inv);
                percent = (100 * tokensPerSecond / limit).ToString("F0", inv) + " %";
            }
            md.AppendLine($"| {method} | {shape} | {dtype} | {tokensPerSecond.ToString("F2", inv)} | {roofline} | {percent} |");
        }
        var loads = reports.Where(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name == "Load").ToList();
        if (loads.Count > 0)
        {
            md.AppendLine().AppendLine("| load (float16 checkpoint) | shape | dtype | seconds |").AppendLine("| --- | --- | --- | --- |");
            foreach (var r in loads)
                md.AppendLine($"| Load | {r.BenchmarkCase.Parameters["Shape"]} | {r.BenchmarkCase.Parameters["DType"]} | {(r.ResultStatistics!.Mean / 1e9).ToString("F2", inv)} |");
        }
        if (File.Exists(PeakMemory.File))
        {
            md.AppendLine().AppendLine("| process | peak RSS (MB) |").AppendLine("| --- | --- |");
            foreach (var line in File.ReadLines(PeakMemory.File).Distinct())
            {
                var parts = line.Split('\t');
                md.AppendLine($"| {parts[0]} | {long.Parse(parts[1], inv) / 1e6:F0} |");
            }
        }
        var lookups = reports.Where(r => r.BenchmarkCase.Descriptor.Type == typeof(SpeculativeDecodingBenchmarks)).ToList();
        if (lookups.Count > 0)
        {
            md.AppendLine().AppendLine("| prompt lookup | text | plain tokens/s | lookup tokens/s | speed-up | model calls | proposed | accepted | acceptance |")
                .AppendLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
            var stats = File.Exists(SpeculationReport.File)
                // Both methods' processes record the same raw prompt-lookup run; any one of them will do.
                ? File.ReadLines(SpeculationReport.File).Select(l => l.Split('\t')).GroupBy(p => (p[0], p[1]))
                    .ToDictionary(g => g.Key, g => g.Last()[2..].Select(long.Parse).ToArray())
                : [];
            foreach (var group in lookups.GroupBy(r => ((string)r.BenchmarkCase.Parameters["Shape"], (string)r.BenchmarkCase.Parameters["Text"])))
            {
                double Mean(string method) => group.Single(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name == method).ResultStatistics!.Mean;
                // Both methods generate the same tokens (greedy output is exact), counted once in the lookup run.
                var (tokens, calls, proposed, accepted) = stats.TryGetValue(group.Key, out var s) ? (s[0], s[1], s[2], s[3]) : (0L, 0L, 0L, 0L);
                md.AppendLine($"| {group.Key.Item1} | {group.Key.Item2} | {(tokens * 1e9 / Mean("Plain")).ToString("F2", inv)} | "
                    + $"{(tokens * 1e9 / Mean("PromptLookup")).ToString("F2", inv)} | {(Mean("Plain") / Mean("PromptLookup")).ToString("F2", inv)}× | "
                    + $"{calls} | {proposed} | {accepted} | {(proposed == 0 ? 0 : 100.0 * accepted / proposed).ToString("F0", inv)} % |");
            }
        }
        var path = Path.Combine("BenchmarkDotNet.Artifacts", "results", "rinna-summary.md");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, md.ToString());
        Console.WriteLine(md.ToString());
    }

    private static string? Parameter(BenchmarkReport report, string name) =>
        report.BenchmarkCase.Parameters.Items.FirstOrDefault(p => p.Name == name)?.Value as string;
}
