using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Layers;
using Rinna.Net.Native;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Tests.Kernels.Cpu;

public class MultiRowGemvTests
{
    public MultiRowGemvTests() => TorchSharpNativeLoader.EnsureInstalled();

    /// <summary>
    /// Every variant on every machine (those the CPU does not accelerate are reported as skipped), both weight formats and
    /// both float16 widenings (the exact one through libtorch's F16C conversion where it is found, and in managed code),
    /// odd shapes, 2 to 32 rows.
    /// </summary>
    public static TheoryData<string, string, int, int, int, bool> Shapes
    {
        get
        {
            // N, K, rows, bias: K below, at and past the 4- to 32-wide steps, odd and prime sizes, rinna-4b's long rows; short last passes.
            (int, int, int, bool)[] shapes =
            [
                (1, 1, 2, false), (3, 15, 3, true), (17, 16, 4, false), (5, 17, 5, true), (9, 63, 8, true), (33, 64, 7, false),
                (2, 65, 6, true), (100, 1031, 8, true), (7, 11269, 2, false), (300, 192, 8, true), (40, 300, 32, true), (5, 70, 17, false),
            ];
            var data = new TheoryData<string, string, int, int, int, bool>();
            foreach (var variant in Enum.GetNames<Float16GemvVariant>())
                foreach (var format in new[] { "Float16 Scaled", "Float16 Exact", "Float16 Exact managed", "Float32" })
                    foreach (var (n, k, rows, bias) in shapes) data.Add(variant, format, n, k, rows, bias);
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void EveryRowMatchesAFloat64ProductWithinFloat32Accumulation(string variant, string format, int n, int k, int rows, bool withBias)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(n * 100_000 + k * 10 + rows));
        var weight = (randn(n, k, generator: gen) * 0.05).to(Enum.Parse<ScalarType>(format.Split(' ')[0]));
        var x = randn(rows, 1, k, generator: gen);
        var bias = withBias ? randn(n, generator: gen) : null;
        var widening = format.Contains("Exact", StringComparison.Ordinal) ? Float16Widening.Exact : Float16Widening.Scaled;

        Assert.True(Multiply(variant, x, weight, bias, out var y, widening: widening, libTorchWidening: !format.EndsWith("managed", StringComparison.Ordinal)));

        Assert.Equal(ScalarType.Float32, y.dtype);
        Assert.Equal(new long[] { rows, 1, n }, y.shape);
        var w64 = weight.to(ScalarType.Float64);
        var x64 = x.to(ScalarType.Float64).view(rows, k);
        var expected = x64.matmul(w64.t());
        if (bias is not null) expected = expected.add(bias.to(ScalarType.Float64));
        // float32 sums of k exact products: each element is within about k · 2⁻²⁴ of Σ|w·x| (plus the bias' own rounding).
        var bound = x64.abs().matmul(w64.abs().t()).mul(k * Math.Pow(2, -24)).add(1e-30);
        if (bias is not null) bound = bound.add(bias.to(ScalarType.Float64).abs().mul(Math.Pow(2, -23)));
        var excess = (y.view(rows, n).to(ScalarType.Float64) - expected).abs() - bound;
        Assert.True(excess.max().item<double>() <= 0, $"an element is {excess.max().item<double>()} beyond float32 accumulation error");
    }

    public static TheoryData<string> Variants => new(Enum.GetNames<Float16GemvVariant>());

    /// <summary>The variants that multiply groups of weight rows (and so blocks of columns); the 128-bit one takes a row at a time.</summary>
    public static TheoryData<string> GroupedVariants => new(nameof(Float16GemvVariant.Avx512), nameof(Float16GemvVariant.Vector256));

    /// <summary>
    /// Every finite float16 value as a weight (subnormals, both zeros, the largest), against a float64 product: the exact
    /// widening must convert each one exactly, through libtorch's F16C conversion and in managed code alike, and give the
    /// scaled widening's bits, whose activations and sums carry the scale instead.
    /// </summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void BothWideningsConvertEveryFiniteFloat16ExactlyAndAgreeBitForBit(string variant)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var finite = Enumerable.Range(0, 1 << 16).Where(b => (b & 0x7C00) != 0x7C00).Select(b => (short)b).ToArray();
        Assert.Equal(63_488, finite.Length);
        const int K = 124; // not a multiple of any vector width, so the scalar tail converts some values too
        var weight = empty(finite.Length / K, K, ScalarType.Float16);
        weight.bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(finite.AsSpan());
        var x = (randn(3, K, generator: new Generator(3)) * 1e-3).to(ScalarType.Float32);

        var (exact, managed, scaled) = MultiplyEveryWidening(variant, x, weight);

        Assert.True(exact.equal(managed).all().item<bool>(), "libtorch's conversion and the managed exact widening should give the same bits");
        Assert.True(exact.equal(scaled).all().item<bool>(), "the two widenings should give the same bits");
        var w64 = weight.to(ScalarType.Float64);
        var x64 = x.to(ScalarType.Float64);
        var bound = x64.abs().matmul(w64.abs().t()).mul(K * Math.Pow(2, -24)).add(1e-300);
        var excess = (exact.to(ScalarType.Float64) - x64.matmul(w64.t())).abs() - bound;
        Assert.True(excess.max().item<double>() <= 0, $"an element is {excess.max().item<double>()} beyond float32 accumulation error");
    }

    /// <summary>
    /// Rows long enough that the exact widening multiplies them a block of columns at a time, its accumulators carried
    /// from block to block (a last block of a few columns, and one of none but the scalar tail, among them), give the bits
    /// of the scaled widening's single pass over each row: one and two passes of activation rows, and more, where whole
    /// rows are multiplied again.
    /// </summary>
    [Theory]
    [MemberData(nameof(GroupedVariants))]
    public void BlocksOfColumnsGiveTheBitsOfOnePassOverEachRow(string variant)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        foreach (var (n, k, rows) in new[] { (9, 2083, 2), (6, 1100, 5), (11, 2819, 8), (8, 1031, 8), (5, 1539, 3), (4, 1029, 4), (5, 1100, 24) })
        {
            var weight = (randn(n, k, generator: gen) * 0.05).to(ScalarType.Float16);
            var x = randn(rows, k, generator: gen);

            var (exact, managed, scaled) = MultiplyEveryWidening(variant, x, weight);

            Assert.True(exact.equal(scaled).all().item<bool>(), $"{n} × {k}, {rows} rows: the blocks should give the single pass's bits");
            Assert.True(managed.equal(scaled).all().item<bool>(), $"{n} × {k}, {rows} rows, managed widening: the blocks should give the single pass's bits");
        }
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void GeluAndResidualAreRoundedAsTheSeparateBFloat16OperationsWould(string variant)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator(11);
        const int N = 70, K = 130, Rows = 6;
        var weight = (randn(N, K, generator: gen) * 0.1).to(ScalarType.Float16);
        var bias = randn(N, generator: gen).to(ScalarType.BFloat16);
        var x = randn(Rows, 1, K, generator: gen).to(ScalarType.BFloat16);
        var residual = randn(Rows, 1, N, generator: gen).to(ScalarType.BFloat16);

        foreach (var widening in Enum.GetValues<Float16Widening>())
        {
            Assert.True(Multiply(variant, x, weight, bias, out var product, widening: widening));
            Assert.True(Multiply(variant, x, weight, bias, out var fused, gelu: true, residual: residual, widening: widening));

            Assert.Equal(ScalarType.BFloat16, fused.dtype);
            // libtorch's own GELU and sum on the kernel's rounded product: equal but for GELU's last bit now and then (its erf is
            // a different approximation), so within one bfloat16 unit of the result.
            var separate = F.gelu(product.to(ScalarType.Float32)).to(ScalarType.BFloat16).add(residual).to(ScalarType.Float32);
            var unit = separate.abs().mul(Math.Pow(2, -7)).add(1e-30);
            var excess = (fused.to(ScalarType.Float32) - separate).abs() - unit;
            Assert.True(excess.max().item<float>() <= 0, $"{widening}: an element is {excess.max().item<float>()} beyond one bfloat16 unit");
        }
    }

    /// <summary>
    /// The output stage (bias, rounding before the GELU, GELU, residual, rounding), which runs on a group's lanes at once,
    /// gives each output the bits of those steps done one value at a time on the kernel's own float32 product: for groups
    /// of weight rows, the rows left after them, and short last passes.
    /// </summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void OutputStageGivesEveryValueTheBitsOfItsStepsOneAtATime(string variant)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator(17);
        const int N = 70, K = 40;
        foreach (var weightType in new[] { ScalarType.Float16, ScalarType.Float32 })
            foreach (var rows in new[] { 2, 7 })
                foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
                {
                    if (weightType == ScalarType.Float32 && dtype == ScalarType.BFloat16) continue; // float32 weights take float32 rows only
                    var weight = (randn(N, K, generator: gen) * 0.3).to(weightType);
                    var x = randn(rows, 1, K, generator: gen).to(dtype);
                    var residual = randn(rows, 1, N, generator: gen).to(dtype);
                    // The float32 product itself: the activations as float32 (the kernel widens bfloat16 rows to the same values).
                    Assert.True(Multiply(variant, x.to(ScalarType.Float32), weight, null, out var product));
                    var sums = product.data<float>().ToArray();
                    foreach (var biasType in new ScalarType?[] { null, ScalarType.Float32, ScalarType.BFloat16 })
                    {
                        var bias = biasType is null ? null : randn(N, generator: gen).to(biasType.Value);
                        var biasValues = bias?.to(ScalarType.Float32).data<float>().ToArray();
                        var residualValues = residual.to(ScalarType.Float32).data<float>().ToArray();
                        foreach (var (gelu, withResidual) in new[] { (false, false), (true, false), (false, true), (true, true) })
                        {
                            Assert.True(Multiply(variant, x, weight, bias, out var fused, gelu, withResidual ? residual : null));
                            var actual = fused.to(ScalarType.Float32).data<float>().ToArray();
                            bool bfloat16 = dtype == ScalarType.BFloat16;
                            for (int at = 0; at < actual.Length; at++)
                            {
                                float value = sums[at];
                                if (biasValues is not null) value += biasValues[at % N];
                                if (gelu)
                                {
                                    Span<float> one = [Float16Gemv.ToOutput(value, bfloat16), 0, 0, 0];
                                    ExactGelu.Apply(one);
                                    value = one[0];
                                }
                                if (withResidual) value = Float16Gemv.ToOutput(value, bfloat16) + residualValues[at];
                                float expected = Float16Gemv.ToOutput(value, bfloat16);
                                Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(actual[at]),
                                    $"{weightType} weight, {rows} {dtype} rows, bias {biasType?.ToString() ?? "none"}, GELU {gelu}, residual {withResidual}: "
                                    + $"output {at} is {actual[at]:R}, its steps give {expected:R}");
                            }
                        }
                    }
                }
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void LeavesWhatItDoesNotTakeToTheCaller(string variant)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var weight = randn(4, 8).to(ScalarType.Float16);
        Assert.False(Multiply(variant, randn(1, 8), weight, null, out _));                                  // one row: Float16Gemv's
        Assert.False(Multiply(variant, randn(MultiRowGemv.MaxRows + 1, 8), weight, null, out _));          // a GEMM: libtorch's
        Assert.False(Multiply(variant, randn(8, 2).t(), randn(4, 2).to(ScalarType.Float16), null, out _)); // not contiguous
        Assert.False(Multiply(variant, randn(2, 8).to(ScalarType.BFloat16), randn(4, 8), null, out _));    // float32 weight, bfloat16 rows
        var poisoned = randn(3, 8);
        poisoned[1, 5] = float.NaN;
        Assert.False(Multiply(variant, poisoned, randn(4, 8), null, out _));
        Assert.False(Multiply(variant, poisoned, weight, null, out _));
        Assert.False(Multiply(variant, poisoned, weight, null, out _, widening: Float16Widening.Exact));
        var infinite = randn(2, 9);
        infinite[1, 8] = float.NegativeInfinity; // past the last whole vector
        Assert.False(Multiply(variant, infinite, randn(4, 9), null, out _));
        infinite[1, 8] = 0;
        infinite[0, 1] = float.PositiveInfinity;
        Assert.False(Multiply(variant, infinite, randn(4, 9), null, out _));
        Assert.False(Multiply(variant, infinite, randn(4, 9).to(ScalarType.Float16), null, out _, widening: Float16Widening.Exact));
    }

    [Fact]
    public void UsesTheWidestVariantTheCpuAccelerates()
    {
        var expected = Float16Gemv.IsAccelerated(Float16GemvVariant.Avx512) ? Float16GemvVariant.Avx512
            : Float16Gemv.IsAccelerated(Float16GemvVariant.Vector256) ? Float16GemvVariant.Vector256
            : Float16Gemv.IsAccelerated(Float16GemvVariant.Vector128) ? Float16GemvVariant.Vector128
            : (Float16GemvVariant?)null;
        Assert.Equal(expected, MultiRowGemv.DefaultVariant);
    }

    [Fact]
    public void DenseAndFloat16LayersTakeTheKernelForAFewRowsAndKeepLibTorchsResultsWithinRounding()
    {
        if (!MultiRowGemv.SupportsFloat32 || !MultiRowGemv.SupportsFloat16) Assert.Skip("the multi-row kernel does not run here (no vector hardware or no libtorch OpenMP runtime).");
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        var x = randn(8, 1, 96, generator: gen);
        var dense = new DenseLinear(new TorchSharp.Modules.Parameter(randn(40, 96, generator: gen), false),
            new TorchSharp.Modules.Parameter(randn(40, generator: gen), false));
        var viaLayer = dense.call(x);
        Assert.True(MultiRowGemv.TryMultiply(x, dense.Weight, dense.get_parameter("bias"), out var viaKernel));
        Assert.Equal(new long[] { 8, 1, 40 }, viaLayer.shape);
        Assert.True(viaLayer.equal(viaKernel).all().item<bool>(), "DenseLinear should take the multi-row kernel for 8 float32 rows");
        Assert.True(viaLayer.allclose(F.linear(x, dense.Weight, dense.get_parameter("bias")), rtol: 1e-5, atol: 1e-5));

        var half = new Float16Linear(new TorchSharp.Modules.Parameter((randn(40, 96, generator: gen) * 0.1).to(ScalarType.Float16), false), null);
        var rows = x.to(ScalarType.BFloat16);
        var viaHalfLayer = half.call(rows);
        Assert.True(MultiRowGemv.TryMultiply(rows, half.get_parameter("weight")!, null, out var viaHalfKernel));
        Assert.True(viaHalfLayer.equal(viaHalfKernel).all().item<bool>(), "Float16Linear should take the multi-row kernel for 8 rows");
    }

    private static void Require(string variant)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime was not found; the kernel runs on its threads.");
        if (!Float16Gemv.IsAccelerated(Enum.Parse<Float16GemvVariant>(variant))) Assert.Skip($"this CPU does not accelerate the {variant} variant.");
    }

    /// <summary>x · Wᵀ through the exact widening (libtorch's F16C conversion, then managed code) and the scaled one.</summary>
    private static (Tensor Exact, Tensor Managed, Tensor Scaled) MultiplyEveryWidening(string variant, Tensor x, Tensor weight)
    {
        Assert.True(Multiply(variant, x, weight, null, out var exact, widening: Float16Widening.Exact));
        Assert.True(Multiply(variant, x, weight, null, out var managed, widening: Float16Widening.Exact, libTorchWidening: false));
        Assert.True(Multiply(variant, x, weight, null, out var scaled, widening: Float16Widening.Scaled));
        return (exact, managed, scaled);
    }

    private static bool Multiply(string variant, Tensor x, Tensor weight, Tensor? bias, out Tensor result, bool gelu = false, Tensor? residual = null,
        Float16Widening widening = Float16Widening.Scaled, bool libTorchWidening = true) =>
        MultiRowGemv.TryMultiply(x, weight, bias, out result, gelu, residual, Enum.Parse<Float16GemvVariant>(variant), widening, libTorchWidening);
}
