using BenchmarkDotNet.Attributes;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// One decode row through rinna-4b's largest products (<c>dense_h_to_4h</c>, 11264 × 2816, 16 MB of codes, and its
/// transpose <c>dense_4h_to_h</c>, whose 11264-column rows put 22 KiB of integer activations in L1) in NF4 on 2 threads,
/// each call on the next of <see cref="Copies"/> such weights (400 MB in all) so that the codes stream from memory as in
/// a model, where one weight would stay in a server CPU's last-level cache: each
/// <see cref="Bnb4BitGemv"/> variant against the prompt path (dequantize to float32, then libtorch's GEMV), with the
/// bfloat16 input and output the model uses. The float32 variants serve float32 compute, the integer ones (Int16)
/// bfloat16 and float16 compute.
/// </summary>
public class Bnb4BitGemvBenchmarks
{
    /// <summary>Distinct weights cycled through, more than a last-level cache holds (260 MiB on the Intel VM).</summary>
    private const int Copies = 24;

    private Bnb4BitLinear[] layers = [];
    private Bnb4BitMatrix[] matrices = [];
    private Tensor input = null!;
    private int next;

    /// <summary>The kernel: a <see cref="Bnb4BitGemvVariant"/> name, or <c>Dequantize</c>.</summary>
    [Params("Dequantize", "Scalar", "Vector128", "Vector256", "Avx2", "Avx512", "Vector128Int16", "Avx2Int16", "AvxVnniInt16", "Avx512Int16")]
    public string Kernel { get; set; } = "Dequantize";

    /// <summary>The weight's rows × columns.</summary>
    [Params("11264x2816", "2816x11264")]
    public string Shape { get; set; } = "11264x2816";

    /// <summary>bitsandbytes' double quantization: 8-bit block scales, looked up in the dynamic map per row.</summary>
    [Params(false, true)]
    public bool DoubleQuant { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        torch.set_num_threads(2);
        var gen = new Generator(1);
        int rows = int.Parse(Shape.Split('x')[0], System.Globalization.CultureInfo.InvariantCulture);
        int columns = int.Parse(Shape.Split('x')[1], System.Globalization.CultureInfo.InvariantCulture);
        using var weight = randn(rows, columns, generator: gen) * 0.02;
        using var bias = randn(rows, generator: gen);
        // The same values each time: the copies differ only in where they lie.
        layers = Enumerable.Range(0, Copies).Select(_ => new Bnb4BitLinear(weight, bias, Bnb4BitQuantization.Nf4, DoubleQuant)).ToArray();
        input = randn(1, columns, generator: gen).to(ScalarType.BFloat16);
        matrices = layers.Select(layer => new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, layer.NestedAbsmax, layer.Offset,
            DoubleQuant ? Bnb4BitQuantization.DynamicMap : null, rows, columns)).ToArray();
        Console.WriteLine($"// Bnb4BitGemv: decode uses {Bnb4BitGemv.DefaultVariant} for float32 compute, {Bnb4BitGemv.Int16VariantFor(matrices[0])?.ToString() ?? "the same"} for bfloat16 and float16");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var layer in layers) layer.Dispose();
        input.Dispose();
    }

    [Benchmark]
    public float Product()
    {
        using var scope = NewDisposeScope();
        int which = next++ % Copies;
        var (layer, matrix) = (layers[which], matrices[which]);
        Tensor output;
        if (Kernel == "Dequantize")
        {
            using var dense = layer.DequantizeWeight();
            output = nn.functional.linear(input.to(ScalarType.Float32), dense, layer.Bias).to(ScalarType.BFloat16);
        }
        else if (!Bnb4BitGemv.TryMultiply(input, matrix, layer.Bias, out output, Enum.Parse<Bnb4BitGemvVariant>(Kernel)))
            throw new NotSupportedException($"{Kernel} could not run here.");
        return output[0, 0].to(ScalarType.Float32).item<float>();
    }
}
