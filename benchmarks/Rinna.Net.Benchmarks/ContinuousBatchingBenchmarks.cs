using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using TorchSharp;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// Aggregate greedy tokens/s of 8 concurrent requests against 1, both through the continuous batching scheduler, in
/// the same run: each request has its own 12–19-token prompt (the eight arrive together, so they are prefilled in one
/// pass) and generates <see cref="NewTokens"/> tokens. <c>benchmarks/batch-peer.sh</c> runs it between two runs of
/// llama.cpp's batched decoding on the same weights. The "× 1 stream" column is the aggregate throughput over the one-stream case's.
/// Each case also prints the p50 and p99 of the time between a request's consecutive tokens (its own stream's
/// per-token latency) to its log, as <c>// per-token latency</c>.
/// </summary>
[Config(typeof(StreamsConfig))]
public class ContinuousBatchingBenchmarks
{
    private const int NewTokens = 32;
    private GptNeoXForCausalLM model = null!;
    private ContinuousBatchingScheduler scheduler = null!;
    private int[][] prompts = null!;
    private readonly List<long> intervals = [];
    private int streams;

    [ParamsSource(nameof(Shapes))]
    public string Shape { get; set; } = ModelShapes.Demo;

    [ParamsSource(nameof(DTypes))]
    public string DType { get; set; } = "Float32";

    /// <summary>The demo model and rinna-4b with 4 layers; the full 36-layer rinna-4b when <c>RINNA_BENCH_SHAPES</c> names it.</summary>
    public static IEnumerable<string> Shapes => BenchmarkSettings.Only(BenchmarkSettings.ShapesVariable, [ModelShapes.Demo, "rinna-4b-L4"], ["rinna-4b"]);

    public static IEnumerable<string> DTypes => BenchmarkSettings.Only(BenchmarkSettings.DTypesVariable, ["Float32", "Float16", "Int8"], ["Nf4", "Nf4Float32"]);

    [GlobalSetup]
    public void Setup()
    {
        model = BenchmarkCheckpoints.Load(Shape, DType);
        scheduler = new ContinuousBatchingScheduler(model, maxBatchSize: 8);
        var random = new Random(7);
        prompts = Enumerable.Range(0, 8).Select(i => Enumerable.Range(0, 12 + i).Select(_ => random.Next(4, model.Config.VocabSize)).ToArray()).ToArray();
        // One and eight streams until the JIT has tiered the loop (at most a minute: a round of the full rinna-4b takes most of it).
        SteadyState.WarmUp(() =>
        {
            Run(1, record: false);
            Run(8, record: false);
        }, TimeSpan.FromSeconds(3), TimeSpan.FromSeconds(60));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        PeakMemory.Record($"{nameof(ContinuousBatchingBenchmarks)}/{Shape}/{DType}");
        if (intervals.Count > 0)
        {
            var sorted = intervals.Order().ToArray();
            double Percentile(double p) => sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))] * 1e3 / System.Diagnostics.Stopwatch.Frequency;
            Console.WriteLine($"// per-token latency {Shape} {DType}, {streams} stream(s): p50 {Percentile(0.5):F1} ms, p99 {Percentile(0.99):F1} ms over {sorted.Length} intervals");
        }
        scheduler.Dispose();
        model.Dispose();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = NewTokens)]
    public int OneStreamToken() => Run(1);

    [Benchmark(OperationsPerInvoke = 8 * NewTokens)]
    public int EightStreamsToken() => Run(8);

    private int Run(int streams, bool record = true)
    {
        if (record) this.streams = streams;
        var config = new GenerationConfig { MaxNewTokens = NewTokens, MinNewTokens = NewTokens, EosTokenId = [3], PadTokenId = 0 };
        var requests = Enumerable.Range(0, streams).Select(i =>
        {
            long last = 0;
            // Runs on the scheduler's thread between steps: a timestamp and, after the first token, one interval.
            return scheduler.GenerateAsync(prompts[i], config, onStep: !record ? null : _ =>
            {
                long now = System.Diagnostics.Stopwatch.GetTimestamp();
                if (last != 0) intervals.Add(now - last);
                last = now;
            });
        }).ToArray();
        Task.WaitAll(requests);
        return requests.Sum(r => r.Result.TokenIds.Count);
    }

    private sealed class StreamsConfig : ManualConfig
    {
        public StreamsConfig() => AddColumn(new AggregateSpeedupColumn());
    }

    /// <summary>Tokens/s of a case over the one-stream case's with the same shape and dtype.</summary>
    private sealed class AggregateSpeedupColumn : IColumn
    {
        public string Id => nameof(AggregateSpeedupColumn);
        public string ColumnName => "× 1 stream";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 1;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "Aggregate tokens/s over the one-stream case's (same shape and dtype)";

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
        {
            if (summary[benchmarkCase]?.ResultStatistics is not { } stats) return "-";
            var baseline = summary.Reports.Select(r => r.BenchmarkCase).FirstOrDefault(c => c.Descriptor.WorkloadMethod.Name == nameof(OneStreamToken)
                && c.Parameters.DisplayInfo == benchmarkCase.Parameters.DisplayInfo);
            if (baseline is null || summary[baseline]?.ResultStatistics is not { } one) return "-";
            return (one.Mean / stats.Mean).ToString("F2", System.Globalization.CultureInfo.InvariantCulture);
        }

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
        public bool IsAvailable(Summary summary) => true;
    }
}
