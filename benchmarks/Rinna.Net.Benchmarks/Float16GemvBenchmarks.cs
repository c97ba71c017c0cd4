using BenchmarkDotNet.Attributes;
using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// One decode row through rinna-4b's largest float16 product (<c>dense_h_to_4h</c>, 11264 × 2816, 63 MB of weights;
/// each call takes the next of <see cref="Copies"/> such weights, 507 MB in all, so they stream from memory as in a
/// model, where one would stay in a server CPU's last-level cache) and pythia-160m's (3072 × 768, 4.7 MB, one weight,
/// in cache, where a row's fixed work shows) on
/// 2 threads: each accelerated <see cref="Float16Gemv"/> variant with each <see cref="Float16Widening"/> against
/// libtorch's float16 GEMV (the fallback), with the bfloat16 input and output the model uses. The weights have σ 0.02,
/// so about 0.24 % of them are float16 subnormals, as in trained weights (what the scaled widening pays for on CPUs
/// with subnormal assists). Variants this CPU does not accelerate are reported as NA.
/// </summary>
public class Float16GemvBenchmarks
{
    /// <summary>Distinct rinna-4b-shaped weights cycled through, more than a last-level cache holds (260 MiB on the Intel VM).</summary>
    private const int Copies = 8;

    private Tensor[] weights = [];
    private Tensor input = null!, bias = null!;
    private int next;

    /// <summary>The kernel: a <see cref="Float16GemvVariant"/> name and a <see cref="Float16Widening"/> name, or <c>LibTorch</c>.</summary>
    [Params("LibTorch", "Vector128 Scaled", "Vector128 Exact", "Vector256 Scaled", "Vector256 Exact", "Avx512 Scaled", "Avx512 Exact")]
    public string Kernel { get; set; } = "LibTorch";

    /// <summary>The weight's shape, rows × columns.</summary>
    [Params("11264x2816", "3072x768")]
    public string Shape { get; set; } = "11264x2816";

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        torch.set_num_threads(2);
        var gen = new Generator(1);
        var (rows, columns) = Shape.Split('x') is [var r, var c] ? (int.Parse(r, System.Globalization.CultureInfo.InvariantCulture), int.Parse(c, System.Globalization.CultureInfo.InvariantCulture)) : throw new ArgumentException(Shape);
        weights = Enumerable.Range(0, rows * (long)columns > 16_000_000 ? Copies : 1)
            .Select(_ => (randn(rows, columns, generator: gen) * 0.02).to(ScalarType.Float16)).ToArray();
        input = randn(1, columns, generator: gen).to(ScalarType.BFloat16);
        bias = randn(rows, generator: gen).to(ScalarType.BFloat16);
        Console.WriteLine($"// Float16Gemv: decode uses {(Float16Gemv.IsSupported ? $"{Float16Gemv.DefaultVariant} {Float16Gemv.Widening}" : "libtorch's GEMV")} here");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var weight in weights) weight.Dispose();
        input.Dispose();
        bias.Dispose();
    }

    [Benchmark]
    public float Product()
    {
        using var scope = NewDisposeScope();
        var weight = weights[next++ % weights.Length];
        Tensor output;
        if (Kernel == "LibTorch") output = F.linear(input.to(ScalarType.Float16), weight).to(ScalarType.BFloat16).add_(bias);
        else if (Kernel.Split(' ') is not [var variant, var widening]
            || !Float16Gemv.TryMultiply(input, weight, bias, out output, gelu: false, residual: null, Enum.Parse<Float16GemvVariant>(variant), Enum.Parse<Float16Widening>(widening)))
            throw new NotSupportedException($"{Kernel} is not accelerated on this CPU.");
        return output[0, 0].to(ScalarType.Float32).item<float>();
    }
}
