using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Kernels.Cpu;

/// <summary>
/// <see cref="Bnb4BitDequantize"/> in both vector widths on every machine, bit for bit against the layer's reference
/// dequantization (<see cref="Bnb4BitLinear.DequantizeWeight"/>, bitsandbytes' values) converted by libtorch.
/// </summary>
public class Bnb4BitDequantizeTests
{
    public Bnb4BitDequantizeTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<int, int, string, bool, string> Cases
    {
        get
        {
            // Rows a multiple of 64 long, rows straddling blocks (100, 1500), a partial last block (37 × 100, 5 × 33).
            (int, int)[] shapes = [(64, 2816), (37, 100), (5, 33), (300, 1500)];
            var data = new TheoryData<int, int, string, bool, string>();
            foreach (var (n, k) in shapes)
                foreach (var (type, dq) in new[] { (Bnb4BitQuantization.Nf4, false), (Bnb4BitQuantization.Fp4, true), (Bnb4BitQuantization.Nf4, true) })
                    foreach (var width in Enum.GetNames<LaneWidth>())
                        data.Add(n, k, type, dq, width);
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void RowsEqualTheReferenceDequantizationInEveryForm(int n, int k, string quantType, bool doubleQuant, string width)
    {
        if (!Bnb4BitDequantize.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(n * 1000 + k));
        var weight = randn(n, k, generator: gen) * 0.05;
        // Blocks whose values leave float16's range (infinity there), and tiny ones whose scale or products are
        // subnormal (flushed to zero as bitsandbytes' fast-math kernels do).
        weight.view(-1).narrow(0, 0, Math.Min(64, n * k)).mul_(3e6);
        if (n * k > 192) weight.view(-1).narrow(0, 128, 64).mul_(1e-36);
        using var layer = new Bnb4BitLinear(weight, null, quantType, doubleQuant);
        var matrix = new Bnb4BitMatrix(layer.Weight, quantType == Bnb4BitQuantization.Nf4 ? Bnb4BitQuantization.Nf4Code : Bnb4BitQuantization.Fp4Code,
            layer.Absmax, layer.NestedAbsmax, layer.Offset, doubleQuant ? Bnb4BitQuantization.DynamicMap : null, n, k);
        var reference = layer.DequantizeWeight();
        var lanes = Enum.Parse<LaneWidth>(width);

        // The whole weight, and a later run of rows starting on a block boundary of the flattened weight.
        int step = 64 / (int)System.Numerics.BigInteger.GreatestCommonDivisor(k, 64);
        var ranges = new List<(int First, int Count)> { (0, n) };
        if (step < n) ranges.Add((step, n - step));
        foreach (var (first, count) in ranges)
        {
            var expected = reference.narrow(0, first, count);
            foreach (var (form, expectedInForm) in new[]
            {
                (Bnb4BitDequantizedForm.Float32, expected),
                (Bnb4BitDequantizedForm.BFloat16, expected.to(ScalarType.BFloat16)),
                (Bnb4BitDequantizedForm.Float16InFloat32, expected.to(ScalarType.Float16).to(ScalarType.Float32)),
                (Bnb4BitDequantizedForm.BFloat16InFloat32, expected.to(ScalarType.BFloat16).to(ScalarType.Float32)),
            })
            {
                // One element more than needed and offset by one, so streaming stores (aligned only) are off here and on below.
                foreach (bool offset in new[] { false, true })
                {
                    var buffer = full(count * k + 1, float.NaN, dtype: expectedInForm.dtype);
                    var destination = offset ? buffer.narrow(0, 1, count * k) : buffer;
                    Bnb4BitDequantize.Rows(matrix, first, count, destination, form, lanes);
                    var actual = destination.narrow(0, 0, count * k).view(count, k);
                    Assert.True(BitwiseEqual(actual, expectedInForm), $"{form}, rows [{first}, {first + count}), offset {offset}: not bit for bit the reference.");
                    if (!offset) Assert.True(buffer[count * k].isnan().item<bool>(), "The kernel wrote past the rows it was given.");
                }
            }
        }
    }

    [Fact]
    public void RowsNotStartingOnABlockAreRefused()
    {
        if (!Bnb4BitDequantize.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        using var scope = NewDisposeScope();
        using var layer = new Bnb4BitLinear(randn(8, 100), null, Bnb4BitQuantization.Nf4, false);
        var matrix = new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, null, 0, null, 8, 100);
        var error = Assert.Throws<ArgumentException>(() => Bnb4BitDequantize.Rows(matrix, 1, 2, empty(200), Bnb4BitDequantizedForm.Float32));
        Assert.Contains("block", error.Message);
        Assert.Throws<ArgumentException>(() => Bnb4BitDequantize.Rows(matrix, 0, 9, empty(900), Bnb4BitDequantizedForm.Float32));
        Assert.Throws<ArgumentException>(() => Bnb4BitDequantize.Rows(matrix, 0, 2, empty(199), Bnb4BitDequantizedForm.Float32));
        Assert.Throws<ArgumentException>(() => Bnb4BitDequantize.Rows(matrix, 0, 2, empty(200), Bnb4BitDequantizedForm.BFloat16));
    }

    /// <summary>Same bits (NaNs included), compared as integers.</summary>
    private static bool BitwiseEqual(Tensor a, Tensor b)
        => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.contiguous().bytes.SequenceEqual(b.contiguous().bytes);
}
