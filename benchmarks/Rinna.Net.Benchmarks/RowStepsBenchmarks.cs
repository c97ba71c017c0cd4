using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// A decode layer's row steps on one thread, in each <see cref="LaneWidth"/>: the bfloat16 LayerNorm
/// (<see cref="RowLayerNorm"/>), and around an int8 product the activations' quantization and the sums' rescale with
/// bias, GELU and residual (<see cref="RowwiseInt8"/>), for rinna-4b's rows (2816 wide, 11264 for the MLP) and
/// pythia-160m's (768, 3072). A width the CPU does not run in hardware runs in .NET's software fallback, which is what
/// a kernel written in one width costs elsewhere (256-bit on Arm64): compare with <c>DOTNET_EnableAVX2=0</c> on x64.
/// </summary>
public unsafe class RowStepsBenchmarks
{
    private ushort[] x = [], gamma = [], beta = [], residual = [], output = [];
    private float[] activations = [], scratch = [], rowScale = [], bias = [];
    private int[] sums = [];
    private sbyte[] codes = [];

    /// <summary>The vector width, a <see cref="LaneWidth"/> name.</summary>
    [Params("Vector128", "Vector256")]
    public string Width { get; set; } = "Vector256";

    /// <summary>The hidden size; the MLP's rows are four times as long.</summary>
    [Params(768, 2816)]
    public int Hidden { get; set; } = 2816;

    private LaneWidth Lanes => Enum.Parse<LaneWidth>(Width);

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        // A torch call before the first Generator: created first, in a BenchmarkDotNet job process, it loaded a second
        // libtorch and aborted the process (two registrations of the same dispatch key).
        torch.set_num_threads(1);
        var gen = new Generator(1);
        ushort[] BFloat16(Tensor t)
        {
            using var rounded = t.to(ScalarType.BFloat16);
            return MemoryMarshal.Cast<byte, ushort>(rounded.bytes).ToArray();
        }
        int inner = 4 * Hidden;
        x = BFloat16(randn(Hidden, generator: gen) * 3);
        gamma = BFloat16(randn(Hidden, generator: gen) * 0.2 + 1);
        beta = BFloat16(randn(Hidden, generator: gen) * 0.1);
        residual = BFloat16(randn(inner, generator: gen));
        activations = randn(inner, generator: gen).data<float>().ToArray();
        rowScale = (rand(inner, generator: gen) * 0.01).data<float>().ToArray();
        bias = randn(inner, generator: gen).data<float>().ToArray();
        sums = randint(-200_000, 200_000, [inner], generator: gen).to(ScalarType.Int32).data<int>().ToArray();
        scratch = new float[inner];
        codes = new sbyte[inner];
        output = new ushort[inner];
        Console.WriteLine($"// {Width}: {(LaneWidths.IsAccelerated(Lanes) ? "in hardware" : "in software")} here");
    }

    /// <summary>The two LayerNorms of a layer.</summary>
    [Benchmark]
    public float LayerNorm()
    {
        fixed (ushort* input = x)
        fixed (ushort* weight = gamma)
        fixed (ushort* shift = beta)
        fixed (float* destination = scratch)
        {
            RowLayerNorm.Apply(input, weight, shift, 1e-5, Hidden, destination, Lanes);
            RowLayerNorm.Apply(input, weight, shift, 1e-5, Hidden, destination, Lanes);
            return destination[0];
        }
    }

    /// <summary>A layer's int8 steps around its four products: quantize each input row, rescale each output row (GELU on the MLP's up-projection, residuals where the layer adds them).</summary>
    [Benchmark]
    public float Int8Steps()
    {
        int h = Hidden, i = 4 * Hidden;
        float total = 0;
        foreach (var (input, outputs, gelu, residuals) in new[] { (h, 3 * h, false, 0), (h, h, false, 1), (h, i, true, 0), (i, h, false, 2) })
        {
            RowwiseInt8.TryQuantizeRow(activations.AsSpan(0, input), 0.0, codes.AsSpan(0, input), out float scale, Lanes);
            for (int start = 0; start < outputs; start += 64)
            {
                int count = Math.Min(64, outputs - start);
                var block = MemoryMarshal.AsBytes(residual.AsSpan(start, count));
                RowwiseInt8.RescaleBlock(sums.AsSpan(start, count), scale, rowScale.AsSpan(start, count), bias.AsSpan(start, count), true, gelu, true,
                    residuals >= 1 ? block : default, residuals >= 2 ? block : default, scratch.AsSpan(0, count),
                    MemoryMarshal.AsBytes(output.AsSpan(start, count)), Lanes);
            }
            total += scale;
        }
        return total;
    }
}
