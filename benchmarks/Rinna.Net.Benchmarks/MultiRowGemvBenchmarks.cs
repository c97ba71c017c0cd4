using BenchmarkDotNet.Attributes;
using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// Eight decode rows (a continuous-batching step at full batch) through one linear layer on 2 threads:
/// <see cref="MultiRowGemv"/> against what ran before it, as the ratio to the baseline in the same run. Shapes: rinna-4b's
/// <c>dense_h_to_4h</c> and output head in float16 (11264 × 2816, 63 MB, and 65536 × 2816, 369 MB; the old path, and
/// still the path where <see cref="MultiRowGemv"/> does not run, is libtorch's float16 GEMV once per row) and the
/// demo model's <c>dense_h_to_4h</c> in float32 (768 × 192, as <c>IChatClient</c> serves it by default; the old path was
/// MKL's GEMM, which copies the weight before multiplying). Float16 weights run with each widening
/// (<see cref="Float16Widening"/>); float32 weights ignore it, so their two cases are the same code.
/// </summary>
public class MultiRowGemvBenchmarks
{
    private const int Rows = 8;
    private Tensor weight = null!, input = null!;

    [Params("rinna-4b Float16 11264x2816", "rinna-4b-head Float16 65536x2816", "demo Float32 768x192")]
    public string Layer { get; set; } = "demo Float32 768x192";

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        torch.set_num_threads(2);
        var gen = new Generator(1);
        // "name dtype NxK": rinna-4b's layers hold float16 weights (σ 0.02, so about 0.24 % float16 subnormals, as trained
        // weights have) and take bfloat16 rows; the demo model's float32 weights take float32 rows.
        var parts = Layer.Split(' ');
        var size = parts[2].Split('x').Select(int.Parse).ToArray();
        bool float16 = parts[1] == "Float16";
        weight = float16 ? (randn(size[0], size[1], generator: gen) * 0.02).to(ScalarType.Float16) : randn(size[0], size[1], generator: gen) * 0.05;
        input = float16 ? randn(Rows, 1, size[1], generator: gen).to(ScalarType.BFloat16) : randn(Rows, 1, size[1], generator: gen);
        Console.WriteLine($"// MultiRowGemv: {MultiRowGemv.DefaultVariant?.ToString() ?? "not accelerated"} here, float16 widening {Float16Gemv.Widening}");
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

    /// <summary>Float16 shifted into float32's places (the default where subnormal operands cost nothing).</summary>
    [Benchmark]
    public float MultiRowScaled() => MultiRow(Float16Widening.Scaled);

    /// <summary>Float16 converted exactly, never forming a subnormal (the default where they take a microcode assist).</summary>
    [Benchmark]
    public float MultiRowExact() => MultiRow(Float16Widening.Exact);

    private float MultiRow(Float16Widening widening)
    {
        using var scope = NewDisposeScope();
        if (MultiRowGemv.DefaultVariant is not { } variant
            || !MultiRowGemv.TryMultiply(input, weight, null, out var output, false, null, variant, widening))
            throw new NotSupportedException("MultiRowGemv does not run on this CPU.");
        return output[0, 0, 0].to(ScalarType.Float32).item<float>();
    }
}
