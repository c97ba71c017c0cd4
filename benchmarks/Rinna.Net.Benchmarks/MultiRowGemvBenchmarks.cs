using BenchmarkDotNet.Attributes;
using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// Eight decode rows (a continuous-batching step at full batch) through one linear layer on 2 threads:
/// <see cref="MultiRowGemv"/> against what ran before it, as the ratio to the baseline in the same run. Shapes: rinna-4b's
/// <c>dense_h_to_4h</c> in float16 (11264 × 2816, 63 MB; the old path was libtorch's float16 GEMV once per row) and the
/// demo model's <c>dense_h_to_4h</c> in float32 (768 × 192, as <c>IChatClient</c> serves it by default; the old path was
/// MKL's GEMM, which copies the weight before multiplying).
/// </summary>
public class MultiRowGemvBenchmarks
{
    private const int Rows = 8;
    private Tensor weight = null!, input = null!;

    [Params("rinna-4b Float16 11264x2816", "demo Float32 768x192")]
    public string Layer { get; set; } = "demo Float32 768x192";

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        torch.set_num_threads(2);
        var gen = new Generator(1);
        bool rinna = Layer.StartsWith("rinna", StringComparison.Ordinal);
        weight = rinna ? (randn(11264, 2816, generator: gen) * 0.02).to(ScalarType.Float16) : randn(768, 192, generator: gen) * 0.05;
        input = rinna ? randn(Rows, 1, 2816, generator: gen).to(ScalarType.BFloat16) : randn(Rows, 1, 192, generator: gen);
        Console.WriteLine($"// MultiRowGemv: {MultiRowGemv.DefaultVariant?.ToString() ?? "not accelerated"} here");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        weight.Dispose();
        input.Dispose();
    }

    /// <summary>What a step of eight rows ran before the kernel.</summary>
    [Benchmark(Baseline = true)]
    public float LibTorch()
    {
        using var scope = NewDisposeScope();
        var output = weight.dtype == ScalarType.Float16
            ? cat(Enumerable.Range(0, Rows).Select(i => F.linear(input[i].to(ScalarType.Float16), weight)).ToArray(), 0).to(ScalarType.BFloat16)
            : F.linear(input.view(Rows, -1), weight);
        return output[0, 0].to(ScalarType.Float32).item<float>();
    }

    [Benchmark]
    public float MultiRow()
    {
        using var scope = NewDisposeScope();
        if (!MultiRowGemv.TryMultiply(input, weight, null, out var output)) throw new NotSupportedException("MultiRowGemv does not run on this CPU.");
        return output[0, 0, 0].to(ScalarType.Float32).item<float>();
    }
}
