using BenchmarkDotNet.Attributes;
using Rinna.Net.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Benchmarks;

/// <summary>Prefill and decode throughput of random-weight GPT-NeoX models, per dtype.</summary>
public class GenerationBenchmarks
{
    internal const int DecodeSteps = 32;
    private const int DecodeContext = 64;
    private GptNeoXForCausalLM model = null!;
    private Tensor prompt128 = null!, prompt512 = null!, decodePrompt = null!;
    private KeyValueCache cache = null!;

    /// <summary>The loaded model (after <see cref="Setup"/>), for reports that size it.</summary>
    internal GptNeoXForCausalLM Model => model;

    [ParamsSource(nameof(Shapes))]
    public string Shape { get; set; } = "pythia-160m";

    [ParamsSource(nameof(DTypes))]
    public string DType { get; set; } = "Float32";

    public static IEnumerable<string> Shapes => BenchmarkSettings.Only(BenchmarkSettings.ShapesVariable,
        BenchmarkSettings.Short ? ["pythia-160m", "rinna-4b-L4"] : ["pythia-160m", "rinna-4b"], ["overhead-24", "rinna-4b-L4", "rinna-4b"]);

    public static IEnumerable<string> DTypes => BenchmarkSettings.Only(BenchmarkSettings.DTypesVariable, ["Float32", "BFloat16", "Float16", "Int8", "Int8All", "Nf4"], ["Nf4Float32", "Nf4All", "Nf4AllDq"]);

    [GlobalSetup]
    public void Setup()
    {
        model = BenchmarkCheckpoints.Load(Shape, DType);
        var random = new Random(7);
        Tensor Ids(int n) => tensor(Enumerable.Range(0, n).Select(_ => (long)random.Next(4, model.Config.VocabSize)).ToArray()).unsqueeze(0);
        prompt128 = Ids(128);
        prompt512 = Ids(512);
        decodePrompt = Ids(DecodeContext);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        PeakMemory.Record($"{nameof(GenerationBenchmarks)}/{Shape}/{DType}");
        model.Dispose();
    }

    [Benchmark(OperationsPerInvoke = 128)]
    public void PrefillToken128() => Prefill(prompt128);

    [Benchmark(OperationsPerInvoke = 512)]
    public void PrefillToken512() => Prefill(prompt512);

    [IterationSetup(Target = nameof(DecodeToken))]
    public void PrefillBeforeDecode()
    {
        cache = new KeyValueCache(model.Config.NumHiddenLayers, DecodeContext + DecodeSteps);
        model.Forward(decodePrompt, pastKeyValues: cache, useCache: true, lastPositionOnly: true).Dispose();
    }

    /// <summary>Greedy decode steps after a 64-token prompt, argmax included, as generation runs them.</summary>
    [Benchmark(OperationsPerInvoke = DecodeSteps)]
    public long DecodeToken()
    {
        long token = 5;
        for (int i = 0; i < DecodeSteps; i++)
        {
            using var scope = NewDisposeScope();
            using var output = model.Forward(tensor(new[] { token }).unsqueeze(0), pastKeyValues: cache, useCache: true, lastPositionOnly: true);
            token = output.Logits[0, 0].argmax().item<long>();
        }
        cache.Dispose();
        return token;
    }

    private void Prefill(Tensor ids)
    {
        using var output = model.Forward(ids, lastPositionOnly: true);
    }
}
