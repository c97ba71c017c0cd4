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
/// CPU does not accelerate are reported as NA.
/// </summary>
public class Int8GemvBenchmarks
{
    private Tensor weight = null!, input = null!;

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
        weight = randint(-127, 128, [11264, 2816], generator: gen).to(ScalarType.Int8);
        input = randint(-127, 128, [Rows, 2816], generator: gen).to(ScalarType.Int8);
        Console.WriteLine($"// Int8Gemv: widest variant {Int8Gemv.DefaultVariant?.ToString() ?? "none"}, used for decode {Int8Gemv.IsPreferredForDecode}");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        weight.Dispose();
        input.Dispose();
    }

    [Benchmark]
    public int Product()
    {
        using var scope = NewDisposeScope();
        Tensor output;
        if (Kernel == "IntMm") output = AtenInt8Kernels.Product(input, weight);
        else if (!Int8Gemv.TryMultiply(input, weight, out output, Enum.Parse<Int8GemvVariant>(Kernel)))
            throw new NotSupportedException($"{Kernel} is not accelerated on this CPU.");
        return output[0, 0].item<int>();
    }
}
