using Rinna.Net.Model.Layers;
using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model;
using Rinna.Net.Native;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Tests.Kernels.Cpu;

public class Float16GemvTests
{
    public Float16GemvTests() => TorchSharpNativeLoader.EnsureInstalled();

    [Fact]
    public void FindsLibTorchsOpenMpRuntimeOnLinux()
    {
        // Without it every decode silently falls back to libtorch's kernels; the Linux LibTorch always ships libgomp.
        if (!OperatingSystem.IsLinux()) Assert.Skip("libtorch's OpenMP runtime is looked up on Linux only.");
        Assert.True(LibTorchOpenMp.IsAvailable);
        // With a vector width and libgomp, decode takes the managed path whichever widening the CPU needs.
        Assert.Equal(Float16Gemv.DefaultVariant is not null, Float16Gemv.IsSupported);
    }

    [Fact]
    public void WidensExactlyWhereSubnormalOperandsAreSlow()
    {
        if (Float16Gemv.WidestAccelerated is null || !LibTorchOpenMp.IsAvailable)
        {
            Assert.Skip("the float16 kernels do not run here (no vector hardware or no libtorch OpenMP runtime).");
            return;
        }
        // A second run of the probe agrees with the one behind the widening where it is decisive (an assist costs about a
        // hundred cycles, so real machines are far from the threshold); one row and a few rows share the verdict. Timing on
        // a loaded machine can leave a run near the threshold, which decides nothing.
        double slowdown = Float16Gemv.SubnormalSlowdown();
        if (slowdown is > 1.5 and < 6) Assert.Skip($"the probe measured subnormal operands {slowdown:F1}× as slow as normal ones: too near its threshold (3×) to check its verdict.");
        Assert.Equal(slowdown > 3 ? Float16Widening.Exact : Float16Widening.Scaled, Float16Gemv.Widening);
    }

    /// <summary>Every variant with each widening, by name, on every machine: variants the CPU does not accelerate are reported as skipped.</summary>
    public static TheoryData<string, string> Variants
    {
        get
        {
            var data = new TheoryData<string, string>();
            foreach (var variant in Enum.GetNames<Float16GemvVariant>())
                foreach (var widening in Enum.GetNames<Float16Widening>()) data.Add(variant, widening);
            return data;
        }
    }

    public static TheoryData<string, string, int, int, bool> Shapes
    {
        get
        {
            // N, K, bias: K below, at and past the 4- to 64-wide steps, odd and prime sizes, rinna-4b's long rows.
            (int, int, bool)[] shapes =
            [
                (1, 1, false), (3, 15, true), (17, 16, false), (5, 17, true), (9, 63, true), (33, 64, false),
                (2, 65, true), (100, 1031, true), (7, 11269, false), (1000, 256, true),
            ];
            var data = new TheoryData<string, string, int, int, bool>();
            foreach (var variant in Enum.GetNames<Float16GemvVariant>())
                foreach (var widening in Enum.GetNames<Float16Widening>())
                    foreach (var (n, k, bias) in shapes) data.Add(variant, widening, n, k, bias);
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void MatchesAFloat64ProductWithinFloat32Accumulation(string variant, string widening, int n, int k, bool withBias)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(n * 100_000 + k));
        var weight = (randn(n, k, generator: gen) * 0.05).to(ScalarType.Float16);
        var x = randn(1, k, generator: gen);
        var bias = withBias ? randn(n, generator: gen) : null;

        Assert.True(Multiply(variant, widening, x, weight, bias, out var y));

        Assert.Equal(ScalarType.Float32, y.dtype);
        Assert.Equal(new long[] { 1, n }, y.shape);
        var w64 = weight.to(ScalarType.Float64);
        var x64 = x.to(ScalarType.Float64);
        var expected = x64.matmul(w64.t());
        if (bias is not null) expected = expected.add(bias.to(ScalarType.Float64));
        // float32 sums of k exact products: each element is within about k · 2⁻²⁴ of Σ|w·x| (plus the bias' own rounding).
        var bound = x64.abs().matmul(w64.abs().t()).mul(k * Math.Pow(2, -24)).add(1e-30);
        if (bias is not null) bound = bound.add(bias.to(ScalarType.Float64).abs().mul(Math.Pow(2, -23)));
        var excess = (y.to(ScalarType.Float64) - expected).abs() - bound;
        Assert.True(excess.max().item<double>() <= 0, $"an element is {excess.max().item<double>()} beyond float32 accumulation error");
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void WidensEveryKindOfFloat16ValueExactly(string variant, string widening)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        // zero, negative zero, the smallest and largest subnormals, the smallest normal, one, the largest finite value, of both signs
        short[] bits = [0x0000, unchecked((short)0x8000), 0x0001, unchecked((short)0x8001), 0x03FF, unchecked((short)0x83FF),
            0x0400, unchecked((short)0x8400), 0x3C00, unchecked((short)0xBC00), 0x7BFF, unchecked((short)0xFBFF), 0x3555, 0x1234, 0x5A5A, 0x2001, 0x4321];
        int n = bits.Length, k = 70; // past one 64-wide step, so each column goes through a different part of the loop
        var codes = new short[n * k];
        for (int row = 0; row < n; row++)
            for (int column = 0; column < k; column++)
                codes[row * k + column] = bits[(row + column) % n];
        var weight = empty(n, k, ScalarType.Float16);
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(codes.AsSpan()).CopyTo(weight.bytes);
        // A dot product that adds −0 to +0 gives +0, as any float32 sum does; adding zero does the same to the expected values.
        var expected = weight.to(ScalarType.Float32).add(0.0f);

        for (int column = 0; column < k; column++)
        {
            var unit = zeros(1, k);
            unit[0, column] = tensor(1.0f);
            Assert.True(Multiply(variant, widening, unit, weight, null, out var y));
            // bit for bit: subnormals and the largest values must come out exact, not merely close
            Assert.Equal(expected.select(1, column).contiguous().bytes.ToArray(), y.bytes.ToArray());
        }
    }

    [Theory]
    [InlineData("Vector128")]
    [InlineData("Vector256")]
    [InlineData("Avx512")]
    public void BothWideningsGiveTheSameBits(string variant)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator(11);
        // σ 2⁻¹⁴: about two thirds of the weights are float16 subnormals, mixed in every vector with normal values (and
        // zeros in the first 64 columns); activations of every magnitude from 10⁻³⁰ to 10¹⁴.
        var weight = (randn(67, 2816 + 5, generator: gen) * 6.1e-5).to(ScalarType.Float16);
        weight[.., ..64] = tensor(0f, ScalarType.Float16);
        var x = randn(1, 2816 + 5, generator: gen) * pow(10.0f, randint(-30, 15, [1, 2816 + 5], generator: gen).to(ScalarType.Float32));
        Assert.Equal(ScalarType.Float32, x.dtype);
        foreach (var input in new[] { x, x.to(ScalarType.BFloat16) })
        {
            Assert.True(Multiply(variant, nameof(Float16Widening.Scaled), input, weight, null, out var scaled));
            Assert.True(Multiply(variant, nameof(Float16Widening.Exact), input, weight, null, out var exact));
            Assert.Equal(scaled.bytes.ToArray(), exact.bytes.ToArray());
        }
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void BFloat16ResultIsTheFloat32ResultRoundedOnce(string variant, string widening)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator(3);
        var weight = (randn(301, 2816 + 5, generator: gen) * 0.05).to(ScalarType.Float16);
        var x = randn(1, 2816 + 5, generator: gen).to(ScalarType.BFloat16);
        var bias = randn(301, generator: gen).to(ScalarType.BFloat16);

        Assert.True(Multiply(variant, widening, x, weight, bias, out var y));
        Assert.True(Multiply(variant, widening, x.to(ScalarType.Float32), weight, bias.to(ScalarType.Float32), out var y32));

        Assert.Equal(ScalarType.BFloat16, y.dtype);
        Assert.Equal(y32.to(ScalarType.BFloat16).bytes.ToArray(), y.bytes.ToArray());
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void KeepsTheShapeOfASingleRowWithLeadingOnes(string variant, string widening)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator(6);
        var weight = (randn(37, 100, generator: gen) * 0.05).to(ScalarType.Float16);
        var x = randn(1, 100, generator: gen).to(ScalarType.BFloat16);

        Assert.True(Multiply(variant, widening, x, weight, null, out var flat));
        Assert.True(Multiply(variant, widening, x.view(1, 1, 100), weight, null, out var decodeShaped));

        Assert.Equal(new long[] { 1, 1, 37 }, decodeShaped.shape);
        Assert.Equal(flat.bytes.ToArray(), decodeShaped.bytes.ToArray());
        Assert.False(Multiply(variant, widening, randn(1, 2, 100), weight, null, out _)); // two rows
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void ResidualIsAddedAfterTheProductIsRoundedAsTwoLibTorchOperationsWould(string variant, string widening)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator(4);
        var weight = (randn(517, 2816, generator: gen) * 0.05).to(ScalarType.Float16);
        var bias = randn(517, generator: gen).to(ScalarType.BFloat16);
        foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float32 })
        {
            var x = randn(1, 2816, generator: gen).to(dtype);
            var residual = randn(1, 517, generator: gen).mul(3).to(dtype);
            Assert.True(Multiply(variant, widening, x, weight, bias, out var product));

            Assert.True(Multiply(variant, widening, x, weight, bias, out var fused, residual: residual));

            Assert.Equal(product.add(residual).bytes.ToArray(), fused.bytes.ToArray());
        }
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void GeluIsTheExactGeluOfTheRoundedProductWithinItsLastBit(string variant, string widening)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        var weight = (randn(4099, 1024, generator: gen) * 0.1).to(ScalarType.Float16);
        var x = randn(1, 1024, generator: gen).to(ScalarType.BFloat16);
        var residual = randn(1, 4099, generator: gen).to(ScalarType.BFloat16);
        Assert.True(Multiply(variant, widening, x, weight, null, out var product));
        var expected = F.gelu(product); // libtorch's bfloat16 GELU: float32 arithmetic, rounded once

        Assert.True(Multiply(variant, widening, x, weight, null, out var activated, gelu: true));
        Assert.True(Multiply(variant, widening, x, weight, null, out var both, gelu: true, residual: residual));

        // The two erf approximations differ by a few float32 units of 1 + erf, so a result may land on the other side of a
        // bfloat16 rounding boundary (one unit in the last place), or, in the negative tail where 1 + erf cancels, differ by
        // those few units times x / 2.
        var input = product.to(ScalarType.Float32);
        var excess = (activated.to(ScalarType.Float32) - expected.to(ScalarType.Float32)).abs()
            - expected.to(ScalarType.Float32).abs().mul(Math.Pow(2, -7)) - input.abs().mul(8 * Math.Pow(2, -24));
        Assert.True(excess.max().item<float>() <= 0, $"a GELU differs from libtorch's by {excess.max().item<float>()} more than allowed");
        // Away from the tail a different bfloat16 is a rare boundary case.
        var notTail = input.gt(-3);
        long differing = activated.not_equal(expected).logical_and(notTail).sum().item<long>(), counted = notTail.sum().item<long>();
        Assert.True(differing <= counted / 100, $"{differing} of {counted} GELUs above x = -3 differ from libtorch's");
        Assert.Equal(activated.add(residual).bytes.ToArray(), both.bytes.ToArray());
    }

    [Fact]
    public void GeluIsAccurateToTwoFloat32UnitsOfItsSumIncludingTheNegativeTail()
    {
        // x · ½ · (1 + erf(x · √½)) in float32, as libtorch computes it: relatively accurate where 1 + erf is near one or
        // two, accurate to units of 1 + erf (times x / 2) where it cancels for negative x. The reference is float64 erfc.
        var xs = Enumerable.Range(-1500, 3001).Select(i => i / 100f).Concat([0f, 1e-30f, -1e-30f, 3e4f, -3e4f, 1e-3f, -1e-3f, 0.5f]).ToArray();
        using var x64 = tensor(xs).to(ScalarType.Float64);
        var exact = x64.mul(0.5).mul(special.erfc(x64.neg().div(Math.Sqrt(2)))).data<double>().ToArray();
        // The kernels apply the vectorized form to blocks of outputs (the odd length leaves a scalar tail).
        var vectorized = xs.ToArray();
        ExactGelu.Apply(vectorized);
        for (int i = 0; i < xs.Length; i++)
        {
            double tolerance = 2.5e-7 * Math.Abs(exact[i]) + 2 * Math.Pow(2, -24) * Math.Abs(xs[i]) / 2;
            foreach (float actual in new[] { ExactGelu.Apply(xs[i]), vectorized[i] })
                Assert.True(Math.Abs(actual - exact[i]) <= tolerance, $"gelu({xs[i]}) = {actual}, exactly {exact[i]}");
        }
        // Both forms compute the same float64 operations: only exp's last bit may differ, which rarely moves a float32.
        Assert.True(xs.Where((x, i) => ExactGelu.Apply(x) != vectorized[i]).Count() <= xs.Length / 100);
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void LeavesRowsItCannotComputeExactlyToTheCaller(string variant, string widening)
    {
        Require(variant);
        using var scope = NewDisposeScope();
        var weight = ones(4, 40, ScalarType.Float16);
        Tensor Row(float value) { var x = ones(1, 40); x[0, 33] = tensor(value); return x; }

        Assert.False(Multiply(variant, widening, Row(float.NaN), weight, null, out _));
        Assert.False(Multiply(variant, widening, Row(float.PositiveInfinity), weight, null, out _));
        // beyond 2^64 the 2^56 scaling of the activations, which both widenings multiply, would overflow
        Assert.False(Multiply(variant, widening, Row(3e19f), weight, null, out _));
        Assert.True(Multiply(variant, widening, Row(1e19f), weight, null, out _));
        Assert.False(Multiply(variant, widening, ones(2, 40), weight, null, out _));
        Assert.False(Multiply(variant, widening, ones(1, 41), weight, null, out _));
        Assert.False(Multiply(variant, widening, ones(1, 40, ScalarType.Float16), weight, null, out _));
        Assert.False(Multiply(variant, widening, ones(40, 2).select(1, 0).unsqueeze(0), weight, null, out _)); // strided row
        Assert.False(Multiply(variant, widening, ones(1, 40), ones(40, 4, ScalarType.Float16).t(), null, out _)); // transposed weight
        Assert.False(Multiply(variant, widening, ones(1, 40), ones(4, 40, ScalarType.BFloat16), null, out _));
        Assert.False(Multiply(variant, widening, ones(1, 40), weight, ones(5), out _)); // bias of the wrong length
        Assert.False(Multiply(variant, widening, ones(1, 40), weight, null, out _, residual: ones(1, 5))); // residual of the wrong length
        Assert.False(Multiply(variant, widening, ones(1, 40), weight, null, out _, residual: ones(1, 4, ScalarType.BFloat16))); // another dtype
        Assert.False(Multiply(variant, widening, ones(1, 40), weight, null, out _, residual: ones(4, 2).select(1, 0))); // strided
    }

    [Theory]
    // 6 × 37 = 222 weights: row 4 puts the bad value inside the scan's 32-wide steps (element 184), row 5 in its scalar tail (221).
    [InlineData(float.PositiveInfinity, 4)]
    [InlineData(float.NaN, 4)]
    [InlineData(float.PositiveInfinity, 5)]
    [InlineData(float.NaN, 5)]
    public void AWeightWithNonFiniteValuesKeepsLibTorchsResult(float poison, int row)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(9);
        var values = (randn(6, 37, generator: gen) * 0.05).to(ScalarType.Float16);
        values[row, 36] = tensor(poison).to(ScalarType.Float16);
        Assert.False(Float16Gemv.IsFinite(values));
        var bias = randn(6, generator: gen).to(ScalarType.BFloat16);
        var x = randn(1, 37, generator: gen).to(ScalarType.BFloat16);
        var expected = F.linear(x.to(ScalarType.Float16), values).to(ScalarType.BFloat16).add(bias);

        using var weight = new Parameter(values, requires_grad: false);
        using var biasParameter = new Parameter(bias, requires_grad: false);
        var y = new Float16Linear(weight, biasParameter).call(x);

        Assert.True(y.isnan().equal(expected.isnan()).all().item<bool>());
        Assert.True(y.isinf().equal(expected.isinf()).all().item<bool>());
        Assert.True(y[0, row].isfinite().logical_not().item<bool>());
    }

    /// <summary>Skips, saying why, where this CPU does not run <paramref name="variant"/> in hardware.</summary>
    private static void Require(string variant)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime was not found; the kernel runs on its threads.");
        if (!Float16Gemv.IsAccelerated(Enum.Parse<Float16GemvVariant>(variant))) Assert.Skip($"this CPU does not accelerate the {variant} variant.");
    }

    private static bool Multiply(string variant, string widening, Tensor x, Tensor weight, Tensor? bias, out Tensor result, bool gelu = false, Tensor? residual = null) =>
        Float16Gemv.TryMultiply(x, weight, bias, out result, gelu, residual, Enum.Parse<Float16GemvVariant>(variant), Enum.Parse<Float16Widening>(widening));

    [Fact]
    public void DecodeUsesAvx512WhereTheCpuHasItAndTheVector256VariantOnAvx2()
    {
        var expected = Float16Gemv.IsAccelerated(Float16GemvVariant.Avx512) ? Float16GemvVariant.Avx512
            : System.Runtime.Intrinsics.X86.Avx2.IsSupported ? Float16GemvVariant.Vector256 : (Float16GemvVariant?)null;
        Assert.Equal(expected, Float16Gemv.DefaultVariant);
    }

    [Fact]
    public void RefusesEverythingWhereUnsupported()
    {
        if (Float16Gemv.IsSupported) Assert.Skip("Float16Gemv is supported here; the tests above run it.");
        using var scope = NewDisposeScope();
        Assert.False(Float16Gemv.TryMultiply(ones(1, 8), ones(2, 8, ScalarType.Float16), null, out _));
    }
}
