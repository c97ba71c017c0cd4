using BenchmarkDotNet.Attributes;
using TorchSharp;

namespace Rinna.Net.Benchmarks;

/// <summary>Loading a float16 checkpoint (the format rinna publishes) as each dtype: time and, per process, peak RSS.</summary>
public class LoadBenchmarks
{
    private string directory = "";

    [ParamsSource(nameof(Shapes))]
    public string Shape { get; set; } = "pythia-160m";

    [ParamsSource(nameof(DTypes))]
    public string DType { get; set; } = "BFloat16";

    public static IEnumerable<string> Shapes => GenerationBenchmarks.Shapes.Prepend(ModelShapes.Demo);

    public static IEnumerable<string> DTypes => GenerationBenchmarks.DTypes;

    [GlobalSetup]
    public void Setup()
    {
        Rinna.Net.Native.TorchSharpNativeLoader.EnsureInstalled(); // before the first torch call (Debian 12 libstdc++)
        torch.set_num_threads(2);
        directory = BenchmarkCheckpoints.Ensure(Shape);
    }

    [GlobalCleanup]
    public void Cleanup() => PeakMemory.Record($"{nameof(LoadBenchmarks)}/{Shape}/{DType}");

    [Benchmark]
    public long Load()
    {
        using var model = AutoModelForCausalLM.FromPretrainedAsync(directory, BenchmarkCheckpoints.Options(DType)).GetAwaiter().GetResult();
        return model.Config.VocabSize;
    }
}
