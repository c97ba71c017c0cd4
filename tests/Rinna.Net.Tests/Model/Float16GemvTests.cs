using System.Runtime.Intrinsics.X86;
using Rinna.Net.Model;
using Rinna.Net.Native;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Tests.Model;

public class Float16GemvTests
{
    public Float16GemvTests() => TorchSharpNativeLoader.EnsureInstalled();

    [Fact]
    public void FindsLibTorchsOpenMpRuntimeOnLinux()
    {
        // Without it every decode silently falls back to libtorch's kernels; the Linux LibTorch always ships libgomp.
        if (!OperatingSystem.IsLinux()) return;
        Assert.True(LibTorchOpenMp.IsAvailable);
        if (Avx512F.IsSupported) Assert.True(Float16Gemv.IsSupported, "AVX-512 and libgomp are here, so only the subnormal probe can have refused.");
    }

    public static TheoryData<int, int, bool> Shapes => new()
    {
        // N, K, bias: K below, at and past the 16- and 64-wide steps, odd and prime sizes, rinna-4b's long rows.
        { 1, 1, false }, { 3, 15, true }, { 17, 16, false }, { 5, 17, true }, { 9, 63, true }, { 33, 64, false },
        { 2, 65, true }, { 100, 1031, true }, { 7, 11269, false }, { 1000, 256, true },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void MatchesAFloat64ProductWithinFloat32Accumulation(int n, int k, bool withBias)
    {
        if (!Float16Gemv.IsSupported) { AssertRefusesEverything(); return; }
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(n * 100_000 + k));
        var weight = (randn(n, k, generator: gen) * 0.05).to(ScalarType.Float16);
        var x = randn(1, k, generator: gen);
        var bias = withBias ? randn(n, generator: gen) : null;

        Assert.True(Float16Gemv.TryMultiply(x, weight, bias, out var y));

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

    [Fact]
    public void WidensEveryKindOfFloat16ValueExactly()
    {
        if (!Float16Gemv.IsSupported) { AssertRefusesEverything(); return; }
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
            Assert.True(Float16Gemv.TryMultiply(unit, weight, null, out var y));
            // bit for bit: subnormals and the largest values must come out exact, not merely close
            Assert.Equal(expected.select(1, column).contiguous().bytes.ToArray(), y.bytes.ToArray());
        }
    }

    [Fact]
    public void BFloat16ResultIsTheFloat32ResultRoundedOnce()
    {
        if (!Float16Gemv.IsSupported) { AssertRefusesEverything(); return; }
        using var scope = NewDisposeScope();
        var gen = new Generator(3);
        var weight = (randn(301, 2816 + 5, generator: gen) * 0.05).to(ScalarType.Float16);
        var x = randn(1, 2816 + 5, generator: gen).to(ScalarType.BFloat16);
        var bias = randn(301, generator: gen).to(ScalarType.BFloat16);

        Assert.True(Float16Gemv.TryMultiply(x, weight, bias, out var y));
        Assert.True(Float16Gemv.TryMultiply(x.to(ScalarType.Float32), weight, bias.to(ScalarType.Float32), out var y32));

        Assert.Equal(ScalarType.BFloat16, y.dtype);
        Assert.Equal(y32.to(ScalarType.BFloat16).bytes.ToArray(), y.bytes.ToArray());
    }

    [Fact]
    public void LeavesRowsItCannotComputeExactlyToTheCaller()
    {
        if (!Float16Gemv.IsSupported) { AssertRefusesEverything(); return; }
        using var scope = NewDisposeScope();
        var weight = ones(4, 40, ScalarType.Float16);
        Tensor Row(float value) { var x = ones(1, 40); x[0, 33] = tensor(value); return x; }

        Assert.False(Float16Gemv.TryMultiply(Row(float.NaN), weight, null, out _));
        Assert.False(Float16Gemv.TryMultiply(Row(float.PositiveInfinity), weight, null, out _));
        Assert.False(Float16Gemv.TryMultiply(Row(3e19f), weight, null, out _)); // beyond 2^64: the 2^56 scaling would overflow
        Assert.True(Float16Gemv.TryMultiply(Row(1e19f), weight, null, out _));
        Assert.False(Float16Gemv.TryMultiply(ones(2, 40), weight, null, out _));
        Assert.False(Float16Gemv.TryMultiply(ones(1, 41), weight, null, out _));
        Assert.False(Float16Gemv.TryMultiply(ones(1, 40, ScalarType.Float16), weight, null, out _));
        Assert.False(Float16Gemv.TryMultiply(ones(40, 2).select(1, 0).unsqueeze(0), weight, null, out _)); // strided row
        Assert.False(Float16Gemv.TryMultiply(ones(1, 40), ones(40, 4, ScalarType.Float16).t(), null, out _)); // transposed weight
        Assert.False(Float16Gemv.TryMultiply(ones(1, 40), ones(4, 40, ScalarType.BFloat16), null, out _));
        Assert.False(Float16Gemv.TryMultiply(ones(1, 40), weight, ones(5), out _)); // bias of the wrong length
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

    /// <summary>
    /// Machines without AVX-512 (or without libgomp) never take this path, and must say so by refusing;
    /// <see cref="FindsLibTorchsOpenMpRuntimeOnLinux"/> makes sure the numerical tests do run where they can.
    /// </summary>
    private static void AssertRefusesEverything()
    {
        using var scope = NewDisposeScope();
        Assert.False(Float16Gemv.TryMultiply(ones(1, 8), ones(2, 8, ScalarType.Float16), null, out _));
    }
}
