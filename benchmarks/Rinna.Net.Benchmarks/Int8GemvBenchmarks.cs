using BenchmarkDotNet.Attributes;
using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// One decode row, or the 8 rows of a continuous-batching step, through rinna-4b's largest int8 product
/// (<c>dense_h_to_4h</c>, 11264 × 2816, 32 MB of weights) on 2 threads: each accelerated <see cref="Int8Gemv"/> variant
/// against ATen's <c>_int_mm</c> (oneDNN), the integer product alone (both return the same int32 sums). Variants this
/// CPU does not accelerate are reported as NA. Each call takes the next of <see cref="Copies"/> weights, 512 MiB in all,
/// so that weights stream from memory as in a model: one 32 MB weight would stay in a server CPU's last-level cache.
/// </summary>
public class Int8GemvBenchmarks
{
    /// <summary>Distinct weights cycled through, more than a last-level cache holds (260 MiB on the Intel VM).</summary>
    private const int Copies = 16;

    private Tensor[] weights = [];
    private Tensor input = null!;
    private int next;

    /// <summary>The kernel: an <see cref="Int8GemvVariant"/> name, or <c>IntMm</c>.</summary>
    [Params("IntMm", "Vector128", "Avx2", "Avx512", "AvxVnni")]
    public string Kernel { get; set; } = "IntMm";

    /// <summary>Activation rows: a decode step's one, or a batch of eight.</summary>
    [Params(1, 8)]
    public int Rows { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        torch.set_num_threads(2);
        var gen = new Generator(1);
        weights = Enumerable.Range(0, Copies).Select(_ => randint(-127, 128, [11264, 2816], generator: gen).to(ScalarType.Int8)).ToArray();
        input = randint(-127, 128, [Rows, 2816], generator: gen).to(ScalarType.Int8);
        Console.WriteLine($"// Int8Gemv: widest variant {Int8Gemv.DefaultVariant?.ToString() ?? "none"}, used for decode {Int8Gemv.IsPreferredForDecode}");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var weight in weights) weight.Dispose();
        input.Dispose();
    }

    [Benchmark]
    public int Product()
    {
        using var scope = NewDisposeScope();
        var weight = weights[next++ % Copies];
        Tensor output;
        if (Kernel == "IntMm") output = AtenInt8Kernels.Product(input, weight);
        else if (!Int8Gemv.TryMultiply(input, weight, out output, Enum.Parse<Int8GemvVariant>(Kernel)))
            throw new NotSupportedException($"{Kernel} is not accelerated on this CPU.");
        return output[0, 0].item<int>();
    }
}
