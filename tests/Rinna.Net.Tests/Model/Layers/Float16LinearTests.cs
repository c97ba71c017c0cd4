using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Layers;
using Rinna.Net.Model;
using Rinna.Net.Native;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Layers;

public class Float16LinearTests
{
    public Float16LinearTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<int, int, int> Shapes => new()
    {
        // M, K, N: one token, the row-by-row and multi-row limits and one past each (the latter: the bfloat16 GEMM path), odd and prime sizes.
        { 1, 7, 5 }, { 1, 1031, 17 }, { 3, 13, 9 }, { Float16Linear.GemvRowLimit, 129, 31 },
        { Float16Linear.GemvRowLimit + 1, 129, 31 }, { MultiRowGemv.MaxRows, 129, 31 }, { MultiRowGemv.MaxRows + 1, 129, 31 },
        { 40, 100, 67 }, { 2, 64, 1 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void MatchesAFloat64ProductOfTheFloat16Weight(int m, int k, int n)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(m * 1_000_000 + k * 1000 + n));
        var (layer, weight, bias) = Create(n, k, gen);
        var x = randn(m, k, generator: gen).to(ScalarType.BFloat16);

        var y = layer.call(x);

        Assert.Equal(ScalarType.BFloat16, y.dtype);
        Assert.Equal(new long[] { m, n }, y.shape);
        AssertCloseToFloat64(x, weight, bias, y);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ConvertsWeightsLargerThanOneBlockBlockByBlock(bool inBFloat16)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(11);
        // 3,001 × 4,099 float16 elements: more than one conversion block, with a partial last block.
        long n = 3001, k = 4099;
        Assert.True(n * k > Float16Linear.ConversionBlockElements && (n * k) % Float16Linear.ConversionBlockElements != 0);
        var (layer, weight, bias) = Create(n, k, gen);
        var x = randn(MultiRowGemv.MaxRows + 3, k, generator: gen).to(ScalarType.BFloat16);

        AssertCloseToFloat64(x, weight, bias, layer.BlockwiseGemm(x, inBFloat16).to(ScalarType.BFloat16).add_(bias));
    }

    [Fact]
    public void APromptTakesThePathThisCpuMultipliesFastest()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(19);
        var (layer, _, bias) = Create(40, 129, gen);
        var x = randn(MultiRowGemv.MaxRows + 2, 129, generator: gen).to(ScalarType.BFloat16);
        Assert.Equal(Bits(layer.BlockwiseGemm(x, Float16Linear.PromptsInBFloat16).to(ScalarType.BFloat16).add_(bias)), Bits(layer.call(x)));
    }

    [Fact]
    public void APromptInFloat32MultipliesTheExactWeightAndRoundsOnce()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(23);
        var (layer, weight, bias) = Create(300, 129, gen);
        var x = randn(MultiRowGemv.MaxRows + 5, 129, generator: gen).to(ScalarType.BFloat16);
        var expected = nn.functional.linear(x.to(ScalarType.Float32), weight.to(ScalarType.Float32)).to(ScalarType.BFloat16).add_(bias);
        var actual = layer.BlockwiseGemm(x, inBFloat16: false);
        Assert.Equal(ScalarType.Float32, actual.dtype);
        Assert.Equal(Bits(expected), Bits(actual.to(ScalarType.BFloat16).add_(bias)));
    }

    [Fact]
    public void APromptInBFloat16MultipliesTheWeightRoundedAsADirectConversionWould()
    {
        using var scope = NewDisposeScope();
        // The GEMM path converts through float32; that must round every finite float16 to the bfloat16 a direct
        // conversion gives (float16 widens to float32 exactly), so check all of them.
        var values = Enumerable.Range(0, 1 << 16).Select(bits => (float)BitConverter.Int16BitsToHalf((short)bits)).Where(float.IsFinite).ToArray();
        Assert.Equal(63488, values.Length);
        var finite = tensor(values).to(ScalarType.Float16);
        Assert.Equal(values, finite.to(ScalarType.Float32).data<float>().ToArray());
        Assert.Equal(Bits(finite.to(ScalarType.BFloat16)), Bits(finite.to(ScalarType.Float32).to(ScalarType.BFloat16)));

        var gen = new Generator(17);
        var (layer, weight, bias) = Create(300, 129, gen);
        var x = randn(MultiRowGemv.MaxRows + 5, 129, generator: gen).to(ScalarType.BFloat16);
        var expected = nn.functional.linear(x, weight.to(ScalarType.BFloat16)).add_(bias);
        Assert.Equal(Bits(expected), Bits(layer.BlockwiseGemm(x, inBFloat16: true).add_(bias)));
    }

    /// <summary>bfloat16 widens to float32 exactly, so equal float32 bit patterns mean equal bfloat16 ones.</summary>
    private static int[] Bits(Tensor t) => t.to(ScalarType.Float32).data<float>().ToArray().Select(BitConverter.SingleToInt32Bits).ToArray();

    [Fact]
    public void KeepsLeadingDimensionsAndTheInputDType()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        var (layer, weight, bias) = Create(6, 10, gen);
        var x = randn(2, 7, 10, generator: gen);

        var y = layer.call(x);

        Assert.Equal(ScalarType.Float32, y.dtype);
        Assert.Equal(new long[] { 2, 7, 6 }, y.shape);
        AssertCloseToFloat64(x.reshape(-1, 10), weight, bias, y.reshape(-1, 6));
    }

    [Fact]
    public void RejectsAWeightThatIsNotFloat16()
    {
        using var weight = new Parameter(randn(4, 4).to(ScalarType.BFloat16), requires_grad: false);
        var error = Assert.Throws<ArgumentException>(() => new Float16Linear(weight, null));
        Assert.Contains("BFloat16", error.Message);
    }

    private static (Float16Linear Layer, Tensor Weight, Tensor Bias) Create(long n, long k, Generator gen)
    {
        // A Parameter takes over its tensor's handle, so the reference reads the layer's own parameters.
        var weight = new Parameter((randn(n, k, generator: gen) * 0.05).to(ScalarType.Float16), requires_grad: false);
        var bias = new Parameter(randn(n, generator: gen).to(ScalarType.BFloat16), requires_grad: false);
        return (new Float16Linear(weight, bias), weight, bias);
    }

    /// <summary>
    /// The result is rounded to bfloat16 (8 significant bits) on either path, so each element may be off by about
    /// 2⁻⁸ of its magnitude; the relative L2 error over the output must stay below 1 %.
    /// </summary>
    private static void AssertCloseToFloat64(Tensor x, Tensor weight, Tensor bias, Tensor actual)
    {
        var expected = x.to(ScalarType.Float64).matmul(weight.to(ScalarType.Float64).t()).add(bias.to(ScalarType.Float64));
        var error = (actual.to(ScalarType.Float64) - expected).norm().item<double>() / expected.norm().item<double>();
        Assert.True(error < 1e-2, $"relative L2 error {error}");
    }
}
