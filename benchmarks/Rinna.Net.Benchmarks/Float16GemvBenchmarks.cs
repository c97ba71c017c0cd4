using BenchmarkDotNet.Attributes;
using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// One decode row through rinna-4b's largest float16 product (<c>dense_h_to_4h</c>, 11264 × 2816, 63 MB of weights) on
/// 2 threads: each accelerated <see cref="Float16Gemv"/> variant against libtorch's float16 GEMV (the fallback), with
/// the bfloat16 input and output the model uses. Variants this CPU does not accelerate are reported as NA.
/// </summary>
public class Float16GemvBenchmarks
{
    private Tensor weight = null!, input = null!, bias = null!;

    /// <summary>The kernel: a <see cref="Float16GemvVariant"/> name, or <c>LibTorch</c>.</summary>
    [Params("LibTorch", "Vector128", "Vector256", "Avx512")]
    public string Kernel { get; set; } = "LibTorch";

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        torch.set_num_threads(2);
        var gen = new Generator(1);
        weight = (randn(11264, 2816, generator: gen) * 0.02).to(ScalarType.Float16);
        input = randn(1, 2816, generator: gen).to(ScalarType.BFloat16);
        bias = randn(11264, generator: gen).to(ScalarType.BFloat16);
        Console.WriteLine($"// Float16Gemv: decode uses {Float16Gemv.DefaultVariant?.ToString() ?? "libtorch's GEMV"} here, supported {Float16Gemv.IsSupported}");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        weight.Dispose();
        input.Dispose();
        bias.Dispose();
    }

    [Benchmark]
    public float Product()
    {
        using var scope = NewDisposeScope();
        Tensor output;
        if (Kernel == "LibTorch") output = F.linear(input.to(ScalarType.Float16), weight).to(ScalarType.BFloat16).add_(bias);
        else if (!Float16Gemv.TryMultiply(input, weight, bias, out output, gelu: false, residual: null, Enum.Parse<Float16GemvVariant>(Kernel)))
            throw new NotSupportedException($"{Kernel} is not accelerated on this CPU.");
        return output[0, 0].to(ScalarType.Float32).item<float>();
    }
}
