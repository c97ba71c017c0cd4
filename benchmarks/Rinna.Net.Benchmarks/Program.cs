using System.Globalization;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Rinna.Net.Benchmarks;

// Usage: dotnet run -c Release --project benchmarks/Rinna.Net.Benchmarks -- [--short] [BenchmarkDotNet args, e.g. --filter '*Generation*']
// --short: rinna-4b measured with 4 of its 36 layers and few iterations, so the whole suite takes minutes.
// RINNA_BENCH_SHAPES / RINNA_BENCH_DTYPES (comma-separated) narrow the shapes and dtypes, e.g. for a full-size rinna-4b run.
// Benchmark on an idle machine: with 2 cores, any other CPU load slows libtorch's threads 4-6x. The load is recorded.
// --machine-row SHAPE DTYPE [N]: load, prefill-512, decode and peak memory of one dtype, for benchmarks/machine-table.sh.
// --serve-decode SHAPE DTYPE: loads one model, then times one DecodeToken run per line read from stdin and prints its tokens/s,
// so that benchmarks/peer-ratio.sh (FINE=N) can alternate it with llama.cpp every few seconds without reloading either.
if (args is ["--serve-decode", var serveShape, var serveDType])
{
    var decode = new GenerationBenchmarks { Shape = serveShape, DType = serveDType };
    decode.Setup();
    // Warm-up for at least 20 s, so that FINE pairs compare steady states, after the JIT's tiers have settled.
    var warmUp = System.Diagnostics.Stopwatch.StartNew();
    for (int i = 0; i < 4 || warmUp.Elapsed < TimeSpan.FromSeconds(20); i++)
    {
        decode.PrefillBeforeDecode();
        decode.DecodeToken();
    }
    Console.WriteLine("READY");
    while (Console.ReadLine() is not null)
    {
        decode.PrefillBeforeDecode();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        decode.DecodeToken();
        Console.WriteLine((GenerationBenchmarks.DecodeSteps / clock.Elapsed.TotalSeconds).ToString("F3", CultureInfo.InvariantCulture));
    }
    return 0;
}

// --machine-row SHAPE DTYPE [REPETITIONS]: one of our rows of benchmarks/machine-table.sh (MachineRow).
if (args is ["--machine-row", var rowShape, var rowDType, ..])
    return MachineRow.Run(rowShape, rowDType, args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 3);

// --load-test [demo|pythia-160m] [clients] [seconds]: the endpoint under a crowd of clients (EndpointLoadTest).
if (args is ["--load-test", ..])
{
    var shape = args.Length > 1 ? (args[1] == "demo" ? ModelShapes.Demo : args[1]) : ModelShapes.Demo;
    int clients = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 32;
    int seconds = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 600;
    return await EndpointLoadTest.RunAsync(shape, clients, seconds);
}

var isShort = args.Contains("--short");
args = args.Where(a => a != "--short").ToArray();
if (isShort) Environment.SetEnvironmentVariable(BenchmarkSettings.ShortVariable, "1");
File.Delete(PeakMemory.File);
File.Delete(SpeculationReport.File);

var job = isShort
    ? Job.Default.WithLaunchCount(1).WithWarmupCount(1).WithIterationCount(3)
    : Job.Default.WithLaunchCount(1).WithWarmupCount(2).WithIterationCount(5);
var config = DefaultConfig.Instance
    .AddJob(job.WithEnvironmentVariable(BenchmarkSettings.ShortVariable, isShort ? "1" : "0"))
    .AddColumn(new TokensPerSecondColumn())
    .WithOptions(ConfigOptions.JoinSummary);

// Checkpoints are written before any measurement, so no benchmark process pays for (or counts the memory of) creating them.
foreach (var shape in GenerationBenchmarks.Shapes) BenchmarkCheckpoints.Ensure(shape);
var loadBefore = File.ReadAllText("/proc/loadavg");
var summaries = BenchmarkSwitcher.FromAssembly(typeof(ModelShapes).Assembly).Run(args, config);
var loadAfter = File.ReadAllText("/proc/loadavg");
Report.Write(summaries.ToList(), isShort, loadBefore, loadAfter);
return 0;
