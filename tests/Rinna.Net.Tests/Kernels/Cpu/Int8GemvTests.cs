using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Kernels.Cpu;

/// <summary>
/// <see cref="Int8Gemv"/>, every variant on every machine where the CPU runs it, against ATen's <c>_int_mm</c> and
/// against int64 sums: integer products must be equal bit for bit.
/// </summary>
public class Int8GemvTests
{
    public Int8GemvTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<string, int, int> Cases
    {
        get
        {
            // N, K: K below, at and past the 16-, 32- and 64-wide steps, odd and prime sizes, rinna-4b's long rows.
            (int, int)[] shapes = [(1, 1), (3, 15), (17, 16), (5, 17), (9, 63), (33, 64), (2, 65), (100, 1031), (7, 11269), (1000, 256), (64, 2816)];
            var data = new TheoryData<string, int, int>();
            foreach (var variant in Enum.GetNames<Int8GemvVariant>())
                foreach (var (n, k) in shapes) data.Add(variant, n, k);
            return data;
        }
    }

    public static TheoryData<string, int, int, int> RowCases
    {
        get
        {
            // M, N, K: 2 to MaxRows activation rows (passes of four, a short last pass), K around each variant's step.
            (int, int, int)[] shapes = [(2, 3, 15), (3, 17, 16), (4, 5, 17), (5, 9, 63), (8, 33, 64), (13, 2, 65), (Int8Gemv.MaxRows, 100, 1031), (8, 7, 11269)];
            var data = new TheoryData<string, int, int, int>();
            foreach (var variant in Enum.GetNames<Int8GemvVariant>())
                foreach (var (m, n, k) in shapes) data.Add(variant, m, n, k);
            return data;
        }
    }

    private static (Tensor X, Tensor W) Operands(int n, int k, int seed, int m = 1)
    {
        var gen = new Generator((ulong)seed);
        // The full int8 range, extremes included, as quantized activations and weights reach ±127.
        var x = randint(-127, 128, [m, k], generator: gen).to(ScalarType.Int8);
        var w = randint(-127, 128, [n, k], generator: gen).to(ScalarType.Int8);
        return (x, w);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EqualsIntegerSumsExactly(string variantName, int n, int k)
    {
        var variant = Enum.Parse<Int8GemvVariant>(variantName);
        if (!Int8Gemv.IsAccelerated(variant)) Assert.Skip($"{variant} is not accelerated on this CPU.");
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime was not found.");
        using var scope = NewDisposeScope();
        var (x, w) = Operands(n, k, n * 7919 + k);
        Assert.True(Int8Gemv.TryMultiply(x, w, out var result, variant));
        var expected = x.to(ScalarType.Int64).matmul(w.to(ScalarType.Int64).t()).to(ScalarType.Int32);
        Assert.Equal(ScalarType.Int32, result.dtype);
        Assert.Equal(new long[] { 1, n }, result.shape);
        Assert.True(expected.eq(result).all().item<bool>(), $"{variant} {n}×{k} differs from the integer sums");
    }

    [Theory]
    [MemberData(nameof(RowCases))]
    public void EqualsIntegerSumsExactlyForSeveralRows(string variantName, int m, int n, int k)
    {
        var variant = Enum.Parse<Int8GemvVariant>(variantName);
        if (!Int8Gemv.IsAccelerated(variant)) Assert.Skip($"{variant} is not accelerated on this CPU.");
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime was not found.");
        using var scope = NewDisposeScope();
        var (x, w) = Operands(n, k, m * 31 + n * 7919 + k, m);
        // The extremes in every row, so that a sum on the wrong row or a lost short-pass row shows.
        x[.., 0] = tensor((sbyte)-127);
        // And int8's −128 on both sides, which the VNNI variant's weight offset maps to 0 (w + 128).
        x[.., 1] = tensor((sbyte)-128);
        w[.., 1] = tensor((sbyte)-128);
        Assert.True(Int8Gemv.TryMultiply(x, w, out var result, variant));
        var expected = x.to(ScalarType.Int64).matmul(w.to(ScalarType.Int64).t()).to(ScalarType.Int32);
        Assert.Equal(new long[] { m, n }, result.shape);
        Assert.True(expected.eq(result).all().item<bool>(), $"{variant} {m}×{n}×{k} differs from the integer sums");
    }

    [Fact]
    public void EqualsAtensIntMmOnRinna4bsShape()
    {
        if (Int8Gemv.DefaultVariant is not { } variant || !Int8Gemv.IsSupported) { Assert.Skip("no Int8Gemv variant runs on this CPU."); return; }
        if (!AtenInt8Kernels.IsScriptAvailable) Assert.Skip($"the TorchScript int8 product is unavailable: {AtenInt8Kernels.ScriptFailure}");
        if (!AtenInt8Kernels.IntMmIsExactOnCpu) Assert.Skip("oneDNN's _int_mm does not return exact sums on this CPU (no VNNI); the tests above compare with exact integer sums.");
        using var scope = NewDisposeScope();
        foreach (int rows in new[] { 1, 8 })
        {
            var (x, w) = Operands(2816, 11264, 3, rows);
            Assert.True(Int8Gemv.TryMultiply(x, w, out var managed, variant));
            var aten = AtenInt8Kernels.Product(x, w);
            Assert.True(aten.eq(managed).all().item<bool>(), $"{rows} row(s)");
        }
    }

    [Fact]
    public void RefusesWhatItDoesNotTake()
    {
        using var scope = NewDisposeScope();
        var (x, w) = Operands(4, 32, 1);
        Assert.False(Int8Gemv.TryMultiply(x.to(ScalarType.Float32), w, out _));
        Assert.False(Int8Gemv.TryMultiply(x.repeat(Int8Gemv.MaxRows + 1, 1), w, out _)); // a prompt: the GEMM's job
        Assert.False(Int8Gemv.TryMultiply(x[.., ..16], w, out _));              // K mismatch
        Assert.False(Int8Gemv.TryMultiply(x, w.t(), out _));                    // not contiguous
    }
}

/// <summary>The int8 layer's decode step (one row or a batch of rows) through <see cref="Int8Gemv"/> equals the step through <c>_int_mm</c> bit for bit.</summary>
[Collection(nameof(Int8GemvPreferenceCollection))]
public class Int8GemvDecodeTests
{
    [Theory]
    [InlineData(ScalarType.BFloat16, true, 1)]
    [InlineData(ScalarType.Float32, false, 1)]
    [InlineData(ScalarType.BFloat16, true, 8)]
    [InlineData(ScalarType.Float32, true, 3)]
    public void DecodeRowsThroughTheManagedProductEqualTheIntMmPath(ScalarType dtype, bool withBias, int rows)
    {
        TorchSharpNativeLoader.EnsureInstalled();
        if (!Int8Gemv.IsSupported) Assert.Skip("no Int8Gemv variant runs on this CPU.");
        if (!AtenInt8Kernels.IsScriptAvailable) Assert.Skip($"the TorchScript int8 product is unavailable: {AtenInt8Kernels.ScriptFailure}");
        if (!AtenInt8Kernels.IntMmIsExactOnCpu) Assert.Skip("oneDNN's _int_mm does not return exact sums on this CPU (no VNNI), so no decode step takes it.");
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        using var layer = new Rinna.Net.Model.Quantization.Int8Linear(randn(700, 2816, generator: gen) * 0.02, withBias ? randn(700, generator: gen) : null);
        var x = randn(rows, 2816, generator: gen).to(dtype);
        Assert.True(RowwiseInt8.TryQuantize(x, 6.0, out var quantized, new float[Int8Gemv.MaxRows]), "the rows hold an outlier: only the script would run");
        quantized.Dispose();
        bool preferred = Int8Gemv.IsPreferredForDecode;
        try
        {
            Int8Gemv.IsPreferredForDecode = false;
            var viaIntMm = layer.forward(x);
            Int8Gemv.IsPreferredForDecode = true;
            var viaManaged = layer.forward(x);
            Assert.True(viaIntMm.eq(viaManaged).all().item<bool>(), "the two int8 decode paths differ");
        }
        finally
        {
            Int8Gemv.IsPreferredForDecode = preferred;
        }
    }
}

/// <summary>Tests that switch <see cref="Int8Gemv.IsPreferredForDecode"/> run one at a time.</summary>
[CollectionDefinition(nameof(Int8GemvPreferenceCollection), DisableParallelization = true)]
public sealed class Int8GemvPreferenceCollection;
