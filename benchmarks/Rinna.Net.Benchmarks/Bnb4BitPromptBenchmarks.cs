using BenchmarkDotNet.Attributes;
using Rinna.Net.Model.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// A prompt (a chat turn, a speculative step's proposals, a document) through rinna-4b's <c>dense_h_to_4h</c> in NF4
/// (11264 × 2816) on 2 threads: the GEMV, a tile of rows per pass over the weight (its integer variants) or eight (its
/// float32 ones), which <see cref="Bnb4BitLinear"/> takes up to <see cref="Bnb4BitLinear.GemvRowsFor(ScalarType)"/> rows
/// (by compute dtype and CPU), against the baseline of dequantizing the weight a block at a time for libtorch's GEMM, its
/// path for more rows. Each call takes the next of <see cref="Copies"/> weights, so that the codes stream from memory as
/// in a model.
/// </summary>
public class Bnb4BitPromptBenchmarks
{
    /// <summary>Distinct weights cycled through (430 MB), more than a last-level cache holds.</summary>
    private const int Copies = 24;

    private Bnb4BitLinear[] layers = [];
    private Tensor input = null!;
    private int next;

    /// <summary>Prompt tokens: activation rows of the product.</summary>
    [Params(8, 32, 128, 512)]
    public int Rows { get; set; }

    /// <summary><c>bnb_4bit_compute_dtype</c>: the GEMV's integer variants for bfloat16 and float16, its float32 ones for float32.</summary>
    [Params("BFloat16", "Float32", "Float16")]
    public string Compute { get; set; } = "BFloat16";

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        torch.set_num_threads(2);
        var gen = new Generator(1);
        using var weight = randn(11264, 2816, generator: gen) * 0.02;
        using var bias = randn(11264, generator: gen);
        var compute = Enum.Parse<ScalarType>(Compute);
        layers = Enumerable.Range(0, Copies).Select(_ => new Bnb4BitLinear(weight, bias, Bnb4BitQuantization.Nf4, false, compute)).ToArray();
        // The model's activations are bfloat16 on the CPU (a float16 model computes in bfloat16).
        input = randn(Rows, 2816, generator: gen).to(ScalarType.BFloat16);
        if (!layers[0].TryGemv(input, out var probe)) throw new NotSupportedException("The GEMV does not take several rows here.");
        probe.Dispose();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var layer in layers) layer.Dispose();
        input.Dispose();
    }

    [Benchmark(Baseline = true)]
    public float Dequantize()
    {
        using var scope = NewDisposeScope();
        using (no_grad())
            return layers[next++ % Copies].DequantizingProduct(input)[0, 0].to(ScalarType.Float32).item<float>();
    }

    [Benchmark]
    public float Gemv()
    {
        using var scope = NewDisposeScope();
        if (!layers[next++ % Copies].TryGemv(input, out var output)) throw new NotSupportedException("The GEMV refused the rows.");
        return output[0, 0].to(ScalarType.Float32).item<float>();
    }
}
