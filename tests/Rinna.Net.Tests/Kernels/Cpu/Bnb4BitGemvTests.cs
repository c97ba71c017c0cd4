using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Kernels.Cpu;

/// <summary>Every <see cref="Bnb4BitGemv"/> variant, forced, on every machine, against a float64 product with the dequantized weight.</summary>
public class Bnb4BitGemvTests
{
    public Bnb4BitGemvTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<string, int, int, string, bool> Cases
    {
        get
        {
            // K a multiple of 32 (the vector loops), of 64, neither (the scalar loop, blocks straddling rows), odd N·K.
            (int, int)[] shapes = [(1, 32), (3, 64), (17, 96), (5, 33), (9, 100), (64, 2816), (33, 1024), (7, 31), (6, 160)];
            var data = new TheoryData<string, int, int, string, bool>();
            foreach (var variant in Enum.GetNames<Bnb4BitGemvVariant>())
                foreach (var (n, k) in shapes)
                    foreach (var (type, dq) in new[] { (Bnb4BitQuantization.Nf4, false), (Bnb4BitQuantization.Fp4, true) })
                        data.Add(variant, n, k, type, dq);
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesAFloat64ProductWithTheDequantizedWeight(string variant, int n, int k, string quantType, bool doubleQuant)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        var chosen = Enum.Parse<Bnb4BitGemvVariant>(variant);
        if (chosen is Bnb4BitGemvVariant.Avx512 or Bnb4BitGemvVariant.Avx2 && !Bnb4BitGemv.IsAccelerated(chosen))
            Assert.Skip($"This CPU has no {chosen}; the portable variants run here.");
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(n * 100_000 + k));
        var weight = randn(n, k, generator: gen) * 0.05;
        weight[0, 0] = tensor(1.5f); // an outlier: its block's other weights round to few codes
        var bias = k % 2 == 0 ? randn(n, generator: gen) : null;
        using var layer = new Bnb4BitLinear(weight, bias, quantType, doubleQuant);
        var dense = layer.DequantizeWeight().to(ScalarType.Float64);

        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            var x = randn(1, k, generator: gen).to(dtype);
            var matrix = new Bnb4BitMatrix(layer.Weight, quantType == Bnb4BitQuantization.Nf4 ? Bnb4BitQuantization.Nf4Code : Bnb4BitQuantization.Fp4Code,
                layer.Absmax, layer.NestedAbsmax, layer.Offset, doubleQuant ? Bnb4BitQuantization.DynamicMap : null, n, k);
            Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, layer.Bias, out var y, chosen));
            Assert.Equal(dtype, y.dtype);
            Assert.Equal(new long[] { 1, n }, y.shape);

            var x64 = x.to(ScalarType.Float64);
            var expected = x64.matmul(dense.t());
            if (bias is not null) expected += bias.to(ScalarType.Float64);
            // Float32 accumulation over K terms: a few units of the float32 epsilon times the sum of |w·x|.
            var magnitude = x64.abs().matmul(dense.abs().t()) + (bias is null ? 0 : bias.abs().to(ScalarType.Float64));
            var tolerance = magnitude * (k * 1.2e-7 + (dtype == ScalarType.BFloat16 ? 8e-3 : 0)) + 1e-6;
            var error = (y.to(ScalarType.Float64) - expected).abs();
            Assert.True((error <= tolerance).all().item<bool>(), $"{variant} {dtype}: max error {error.max().item<double>():E2}");
        }
    }

    [Fact]
    public void DecodeThroughTheLayerUsesTheKernelAndAgreesWithThePromptPath()
    {
        using var scope = NewDisposeScope();
        var weight = randn(48, 320) * 0.05;
        using var layer = new Bnb4BitLinear(weight, randn(48), Bnb4BitQuantization.Nf4, useDoubleQuant: true);
        var x = randn(3, 320);
        var rows = layer.call(x);                     // dequantize + matmul
        var single = layer.call(x[1].unsqueeze(0));   // GEMV where libgomp is loaded
        Assert.True((rows[1] - single[0]).abs().max().item<float>() <= 1e-4f);
    }

    [Fact]
    public void RefusesOperandsThatDoNotFit()
    {
        using var scope = NewDisposeScope();
        using var layer = new Bnb4BitLinear(randn(4, 64));
        var matrix = new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, null, 0, null, 4, 64);
        Assert.False(Bnb4BitGemv.TryMultiply(randn(2, 64), matrix, null, out _));            // two rows
        Assert.False(Bnb4BitGemv.TryMultiply(randn(1, 64).to(ScalarType.Float64), matrix, null, out _));
        Assert.False(Bnb4BitGemv.TryMultiply(randn(1, 32), matrix, null, out _));
    }
}
