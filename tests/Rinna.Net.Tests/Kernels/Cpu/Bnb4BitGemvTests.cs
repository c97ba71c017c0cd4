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
            foreach (var variant in Enum.GetNames<Bnb4BitGemvVariant>().Where(name => !name.EndsWith("Int16", StringComparison.Ordinal)))
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
        if (n > 1) weight[n - 1] = weight[n - 1].abs(); // with positive activations nothing cancels, so a scale error would show
        var bias = k % 2 == 0 ? randn(n, generator: gen) : null;
        using var layer = new Bnb4BitLinear(weight, bias, quantType, doubleQuant);
        var dense = layer.DequantizeWeight().to(ScalarType.Float64);

        foreach (var (dtype, positive) in new[] { (ScalarType.Float32, false), (ScalarType.BFloat16, false), (ScalarType.Float16, false), (ScalarType.Float32, true) })
        {
            var x = randn(1, k, generator: gen);
            if (positive) x = x.abs();
            x = x.to(dtype);
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
            var tolerance = magnitude * (k * 1.2e-7 + (dtype == ScalarType.BFloat16 ? 8e-3 : dtype == ScalarType.Float16 ? 1e-3 : 0)) + 1e-6;
            var error = (y.to(ScalarType.Float64) - expected).abs();
            Assert.True((error <= tolerance).all().item<bool>(), $"{variant} {dtype}: max error {error.max().item<double>():E2}");
        }
    }

    private static readonly Bnb4BitGemvVariant[] Int16Variants =
        [Bnb4BitGemvVariant.Avx512Int16, Bnb4BitGemvVariant.Avx2Int16, Bnb4BitGemvVariant.AvxVnniInt16, Bnb4BitGemvVariant.Vector128Int16];

    /// <summary>Whether a test can force <paramref name="variant"/> here: the portable ones run on every CPU.</summary>
    private static bool RunsHere(Bnb4BitGemvVariant variant)
        => variant is Bnb4BitGemvVariant.Scalar or Bnb4BitGemvVariant.Vector128 or Bnb4BitGemvVariant.Vector256 or Bnb4BitGemvVariant.Vector128Int16
            || Bnb4BitGemv.IsAccelerated(variant);

    public static TheoryData<string, int, int, string, bool> Int16Cases
    {
        get
        {
            // AVX-512 reads 128 columns a step, AVX2 and the portable variant 64; 2816 and 11264 are rinna-4b's.
            (int, int)[] shapes = [(1, 128), (17, 256), (64, 2816), (5, 11264), (33, 1024)];
            var data = new TheoryData<string, int, int, string, bool>();
            foreach (var variant in Int16Variants.Select(v => v.ToString()))
                foreach (var (n, k) in variant == nameof(Bnb4BitGemvVariant.Avx512Int16) ? shapes : [.. shapes, (3, 64), (9, 192)])
                    foreach (var (type, dq) in new[] { (Bnb4BitQuantization.Nf4, false), (Bnb4BitQuantization.Fp4, true), (Bnb4BitQuantization.Nf4, true) })
                        data.Add(variant, n, k, type, dq);
            return data;
        }
    }

    /// <summary>
    /// The integer variants against the float64 product, within their stated error: 2⁻¹³ of a block's absmax per code
    /// and 2⁻¹⁴ of the block's largest activation per activation (margins of 2 included), plus float32 accumulation.
    /// </summary>
    [Theory]
    [MemberData(nameof(Int16Cases))]
    public void Int16VariantsStayWithinTheirStatedError(string variant, int n, int k, string quantType, bool doubleQuant)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        var chosen = Enum.Parse<Bnb4BitGemvVariant>(variant);
        if (!RunsHere(chosen)) Assert.Skip($"This CPU cannot run {chosen}.");
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(n * 100_000 + k + 7));
        var weight = randn(n, k, generator: gen) * 0.05;
        weight[0, 0] = tensor(1.5f);
        weight[n - 1] = weight[n - 1].abs(); // with positive activations nothing cancels, so a scale error would show
        var bias = randn(n, generator: gen);
        using var layer = new Bnb4BitLinear(weight, bias, quantType, doubleQuant);
        var dense = layer.DequantizeWeight().to(ScalarType.Float64);
        var blockMax = dense.abs().reshape(-1, 64).amax([1], keepdim: true).expand(-1, 64).reshape(n, k);
        var matrix = new Bnb4BitMatrix(layer.Weight, quantType == Bnb4BitQuantization.Nf4 ? Bnb4BitQuantization.Nf4Code : Bnb4BitQuantization.Fp4Code,
            layer.Absmax, layer.NestedAbsmax, layer.Offset, doubleQuant ? Bnb4BitQuantization.DynamicMap : null, n, k);

        foreach (var (dtype, positive) in new[] { (ScalarType.Float32, false), (ScalarType.BFloat16, false), (ScalarType.Float16, false), (ScalarType.Float32, true) })
        {
            var x = randn(1, k, generator: gen);
            if (positive) x = x.abs();
            x[0, 1] = tensor(40f);          // an outlier: its block's other activations keep fewer bits
            x[0, k - 1] = tensor(32767.9f / 16384f * 8f); // rounds to the top of the int16 range, where it is clamped
            if (k >= 128) x[0, TensorIndex.Slice(64, 128)] = tensor(0f); // an all-zero block
            x = x.to(dtype);
            Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, layer.Bias, out var y, chosen));
            Assert.Equal(dtype, y.dtype);

            var x64 = x.to(ScalarType.Float64);
            var expected = x64.matmul(dense.t()) + bias.to(ScalarType.Float64);
            var largest = x64.abs().reshape(-1, 64).amax([1]).repeat_interleave(64).reshape(1, k);
            var stated = (x64.abs() * Math.ScaleB(1, -12) + largest * Math.ScaleB(1, -14)).matmul(blockMax.t());
            var magnitude = x64.abs().matmul(dense.abs().t()) + bias.abs().to(ScalarType.Float64);
            // Each block's products are summed exactly as integers; only the k / 64 scaled block sums accumulate in float32.
            var tolerance = stated + magnitude * ((k / 64 + 2) * 1.2e-7 + (dtype == ScalarType.BFloat16 ? 8e-3 : dtype == ScalarType.Float16 ? 1e-3 : 0)) + 1e-6;
            var error = (y.to(ScalarType.Float64) - expected).abs();
            Assert.True((error <= tolerance).all().item<bool>(),
                $"{variant} {dtype}: max error {error.max().item<double>():E2}, max error / tolerance {(error / tolerance).max().item<double>():F2}");
        }
    }

    [Fact]
    public void Int16VariantsRefuseRowsTheyDoNotStepOverAndLayersFallBackToFloat()
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        using var scope = NewDisposeScope();
        using var layer = new Bnb4BitLinear(randn(8, 96) * 0.05, quantType: Bnb4BitQuantization.Nf4);
        var matrix = new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, null, 0, null, 8, 96);
        var x = randn(1, 96);
        foreach (var variant in Int16Variants) Assert.False(Bnb4BitGemv.TryMultiply(x, matrix, null, out _, variant));
        Assert.Null(Bnb4BitGemv.Int16VariantFor(matrix));
        Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, null, out var y, ScalarType.BFloat16));
        Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, null, out var exact, Bnb4BitGemv.DefaultVariant));
        Assert.True(exact.eq(y).all().item<bool>());
    }

    [Fact]
    public void Int16VariantsCarryNonFiniteActivationsThroughTheFloatArithmetic()
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        using var scope = NewDisposeScope();
        using var layer = new Bnb4BitLinear(randn(8, 128) * 0.05, quantType: Bnb4BitQuantization.Nf4);
        var matrix = new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, null, 0, null, 8, 128);
        foreach (var variant in Int16Variants.Where(RunsHere))
            foreach (float bad in new[] { float.NaN, float.PositiveInfinity })
            {
                var x = randn(1, 128);
                x[0, 77] = tensor(bad);
                Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, null, out var y, variant));
                Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, null, out var exact, Bnb4BitGemv.DefaultVariant));
                Assert.True(exact.isnan().eq(y.isnan()).all().item<bool>() && exact.isinf().eq(y.isinf()).all().item<bool>());
                Assert.False(isfinite(y).all().item<bool>());
            }
    }

    [Theory]
    [InlineData(384)]  // AVX-512's integer variant where the CPU has it
    [InlineData(320)]  // AVX2's (64 columns a step)
    public void DecodeInBFloat16ComputeAgreesWithThePromptPath(int k)
    {
        using var scope = NewDisposeScope();
        using var layer = new Bnb4BitLinear(randn(48, k) * 0.05, randn(48), Bnb4BitQuantization.Nf4, useDoubleQuant: true, computeDType: ScalarType.BFloat16);
        var x = randn(20, k);
        var rows = layer.DequantizingProduct(x);      // the prompt path (dequantize + GEMM)
        var single = layer.call(x[1].unsqueeze(0));   // the integer GEMV where libgomp is loaded
        var batch = layer.call(x.narrow(0, 0, 4));    // the same, four rows at once
        var scale = rows.narrow(0, 0, 4).abs().max().item<float>();
        Assert.True((rows[1] - single[0]).abs().max().item<float>() <= 2e-2f * scale);
        Assert.True((rows.narrow(0, 0, 4) - batch).abs().max().item<float>() <= 2e-2f * scale);
    }

    /// <summary>Several activation rows at once give each row exactly what that row alone gives (the same sums in the same order).</summary>
    [Theory]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx512Int16), 1024, false)]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx512Int16), 2816, true)]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx2Int16), 192, false)]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx2Int16), 2816, true)]
    [InlineData(nameof(Bnb4BitGemvVariant.AvxVnniInt16), 192, true)]
    [InlineData(nameof(Bnb4BitGemvVariant.AvxVnniInt16), 2816, false)]
    [InlineData(nameof(Bnb4BitGemvVariant.Vector128Int16), 192, true)]
    [InlineData(nameof(Bnb4BitGemvVariant.Vector128Int16), 2816, false)]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx512), 2816, true)]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx512), 96, false)]   // a last group of 32 alone
    [InlineData(nameof(Bnb4BitGemvVariant.Avx2), 2816, false)]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx2), 160, true)]
    public void SeveralRowsGiveEachRowWhatItGivesAlone(string variant, int k, bool doubleQuant)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        var chosen = Enum.Parse<Bnb4BitGemvVariant>(variant);
        if (!RunsHere(chosen)) Assert.Skip($"This CPU cannot run {chosen}.");
        using var scope = NewDisposeScope();
        const int n = 37;
        using var layer = new Bnb4BitLinear(randn(n, k) * 0.05, randn(n), Bnb4BitQuantization.Nf4, doubleQuant);
        var matrix = new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, layer.NestedAbsmax, layer.Offset,
            doubleQuant ? Bnb4BitQuantization.DynamicMap : null, n, k);
        bool integer = variant.EndsWith("Int16", StringComparison.Ordinal);
        // The integer variants take any number of rows a tile at a time: three tiles, the last one short.
        int[] counts = integer ? [2, 5, Bnb4BitGemv.MaxActivationRows, 2 * Bnb4BitGemv.TileRows(k) + 3] : [2, 5, Bnb4BitGemv.MaxActivationRows];
        foreach (int count in counts)
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
            {
                var x = (randn(count, k) * (arange(count).unsqueeze(1) + 1)).to(dtype); // rows of different scales
                Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, layer.Bias, out var y, chosen));
                Assert.Equal(new long[] { count, n }, y.shape);
                for (int r = 0; r < count; r++)
                {
                    Assert.True(Bnb4BitGemv.TryMultiply(x[r].unsqueeze(0), matrix, layer.Bias, out var alone, chosen));
                    Assert.True(alone[0].eq(y[r]).all().item<bool>(), $"{count} rows, row {r}, {dtype}");
                }
            }
        // More rows than a call takes, non-finite activations (integer variants, in any tile) and the portable variants go
        // back to the caller's path.
        if (!integer) Assert.False(Bnb4BitGemv.TryMultiply(randn(Bnb4BitGemv.MaxActivationRows + 1, k), matrix, null, out _, chosen));
        var bad = randn(3, k);
        bad[2, 5] = tensor(float.NaN);
        Assert.Equal(!integer, Bnb4BitGemv.TryMultiply(bad, matrix, null, out _, chosen));
        if (integer)
        {
            var late = randn(counts[^1], k);
            late[counts[^1] - 1, k - 1] = tensor(float.PositiveInfinity);
            Assert.False(Bnb4BitGemv.TryMultiply(late, matrix, null, out _, chosen));
        }
        Assert.False(Bnb4BitGemv.TryMultiply(randn(3, k), matrix, null, out _, Bnb4BitGemvVariant.Vector256));
    }

    /// <summary>
    /// The activations' 16-bit form on vectors equals the element-by-element one: ties to even (values exactly between
    /// two integers once scaled), the ±32767 clamp, blocks too small to scale (flushed to zero), the largest finite
    /// floats, zeros, and non-finite values anywhere in the block (refused).
    /// </summary>
    [Fact]
    public void ActivationsQuantizeOnVectorsAsElementByElement()
    {
        var random = new Random(31);
        var cases = new List<float[]>();
        for (int c = 0; c < 200; c++)
        {
            float scale = MathF.ScaleB(1f, random.Next(-140, 127));
            cases.Add(Enumerable.Range(0, 64).Select(_ => (float)(random.NextDouble() * 2 - 1) * scale).ToArray());
        }
        // Ties: the largest is 2¹⁴·2⁻¹⁰ (exponent 10), so k + 0.5 scaled by 2⁻¹⁰ lands exactly between two integers.
        cases.Add(Enumerable.Range(0, 64).Select(i => i == 0 ? 16f : (i - 32 + 0.5f) / 1024f).ToArray());
        cases.Add(Enumerable.Range(0, 64).Select(i => i == 0 ? -32767.5f / 2 : 0.5f * (i % 3)).ToArray()); // rounds past the clamp
        cases.Add(new float[64]);
        cases.Add(Enumerable.Range(0, 64).Select(i => i % 2 == 0 ? float.MaxValue : -float.Epsilon).ToArray());
        cases.Add(Enumerable.Range(0, 64).Select(i => 1e-40f * (i - 20)).ToArray()); // below 2⁻¹¹³: no finite factor
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
            foreach (int at in new[] { 0, 3, 37, 63 })
            {
                var block = Enumerable.Range(0, 64).Select(i => (float)i).ToArray();
                block[at] = bad;
                cases.Add(block);
            }
        foreach (var values in cases)
        {
            var vector = new short[64];
            var scalar = new short[64];
            bool vectorOk = Bnb4BitGemv.QuantizeBlock(values, vector, out int vectorExponent, vectors: true);
            bool scalarOk = Bnb4BitGemv.QuantizeBlock(values, scalar, out int scalarExponent, vectors: false);
            Assert.Equal(scalarOk, vectorOk);
            Assert.Equal(values.All(float.IsFinite), scalarOk);
            if (!scalarOk) continue;
            Assert.Equal(scalarExponent, vectorExponent);
            Assert.Equal(scalar, vector);
        }
    }

    /// <summary>Each integer variant's order of the activations is the same on vectors as element by element.</summary>
    [Theory]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx512Int16), 128)]
    [InlineData(nameof(Bnb4BitGemvVariant.Avx2Int16), 64)]
    [InlineData(nameof(Bnb4BitGemvVariant.AvxVnniInt16), 64)]
    [InlineData(nameof(Bnb4BitGemvVariant.Vector128Int16), 64)]
    public void ActivationsAreOrderedOnVectorsAsElementByElement(string variant, int chunk)
    {
        var chosen = Enum.Parse<Bnb4BitGemvVariant>(variant);
        var random = new Random(chunk);
        for (int c = 0; c < 20; c++)
        {
            var input = Enumerable.Range(0, chunk).Select(_ => (float)(random.NextDouble() * 2 - 1) * (c + 1)).ToArray();
            short[] vector = new short[chunk], scalar = new short[chunk];
            float[] vectorScales = new float[chunk / 64], scalarScales = new float[chunk / 64];
            Assert.True(Bnb4BitGemv.QuantizeChunk(input, vector, vectorScales, chosen, vectors: true));
            Assert.True(Bnb4BitGemv.QuantizeChunk(input, scalar, scalarScales, chosen, vectors: false));
            Assert.Equal(scalar, vector);
            Assert.Equal(scalarScales, vectorScales);
        }
    }

    /// <summary>AVX-VNNI's loops add the same integer products as AVX2's, so every output is the same float, one row or many.</summary>
    [Theory]
    [InlineData(192)]
    [InlineData(2816)]
    public void AvxVnniGivesWhatAvx2Gives(int k)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        if (!Bnb4BitGemv.IsAccelerated(Bnb4BitGemvVariant.AvxVnniInt16)) Assert.Skip("This CPU has no AVX-VNNI (or .NET was told not to use it).");
        using var scope = NewDisposeScope();
        const int n = 29;
        using var layer = new Bnb4BitLinear(randn(n, k) * 0.05, randn(n), Bnb4BitQuantization.Nf4, useDoubleQuant: true);
        var matrix = new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, layer.NestedAbsmax, layer.Offset,
            Bnb4BitQuantization.DynamicMap, n, k);
        foreach (int count in new[] { 1, 5, 2 * Bnb4BitGemv.TileRows(k) + 3 })
            foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float16 })
            {
                var x = (randn(count, k) * (arange(count).unsqueeze(1) + 1)).to(dtype);
                Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, layer.Bias, out var vnni, Bnb4BitGemvVariant.AvxVnniInt16));
                Assert.True(Bnb4BitGemv.TryMultiply(x, matrix, layer.Bias, out var avx2, Bnb4BitGemvVariant.Avx2Int16));
                Assert.True(vnni.eq(avx2).all().item<bool>(), $"{count} rows, {dtype}");
            }
    }

    [Fact]
    public void DecodeThroughTheLayerUsesTheKernelAndAgreesWithThePromptPath()
    {
        using var scope = NewDisposeScope();
        var weight = randn(48, 320) * 0.05;
        using var layer = new Bnb4BitLinear(weight, randn(48), Bnb4BitQuantization.Nf4, useDoubleQuant: true);
        var x = randn(20, 320);
        var rows = layer.DequantizingProduct(x);      // dequantize + matmul
        var single = layer.call(x[1].unsqueeze(0));   // GEMV where libgomp is loaded
        var batch = layer.call(x.narrow(0, 0, 3));    // the same, three rows at once
        Assert.True((rows[1] - single[0]).abs().max().item<float>() <= 1e-4f);
        Assert.True((rows.narrow(0, 0, 3) - batch).abs().max().item<float>() <= 1e-4f);
    }

    /// <summary>
    /// A prompt the GEMV takes (<see cref="Bnb4BitLinear.GemvRowsFor(ScalarType)"/>: every row for the integer variants
    /// where prompts multiply in float32, a few dozen otherwise) goes through it a tile or a group of rows at a time, so
    /// each row gets exactly what it gets alone in a decode step, and stays within the GEMV's error of the float64 product.
    /// </summary>
    [Theory]
    [InlineData(ScalarType.Float32, ScalarType.Float32)]
    [InlineData(ScalarType.Float16, ScalarType.Float32)]
    [InlineData(ScalarType.Float16, ScalarType.BFloat16)]   // rinna's float16 weights with bnb_4bit_compute_dtype=bfloat16
    [InlineData(ScalarType.BFloat16, ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16, ScalarType.Float16)]
    public void PromptsTheGemvTakesGiveEachRowWhatItGetsInADecodeStep(ScalarType dtype, ScalarType computeDType)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime is not loaded here, so the kernel cannot run.");
        using var scope = NewDisposeScope();
        const int n = 40, k = 384;
        var gen = new Generator(23);
        using var layer = new Bnb4BitLinear(randn(n, k, generator: gen) * 0.05, randn(n, generator: gen), Bnb4BitQuantization.Nf4,
            useDoubleQuant: true, computeDType: computeDType);
        // Groups of eight and a last, shorter group; or, for the integer variants, two tiles of 64 rows and a short one.
        int rows = Math.Min(layer.GemvRowsFor(computeDType), 2 * Bnb4BitGemv.TileRows(k) + 6) - 3;
        if (rows <= Bnb4BitGemv.MaxActivationRows)
            Assert.Skip("Without AVX2 the layer gives the GEMV one group of rows; more dequantize (the portable loops are unmeasured there).");
        var x = (randn(rows, k, generator: gen) * (arange(rows).unsqueeze(1) % 5 + 1)).to(dtype);
        var matrix = new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, layer.NestedAbsmax, layer.Offset,
            Bnb4BitQuantization.DynamicMap, n, k);
        if (!Bnb4BitGemv.TryMultiply(x.narrow(0, 0, 2), matrix, layer.Bias, out _, computeDType))
            Assert.Skip($"Here the GEMV takes one row at a time in {computeDType} (several need an integer variant, or AVX2 or AVX-512), so prompts dequantize.");
        var y = layer.call(x);
        Assert.Equal(dtype, y.dtype);
        for (int r = 0; r < rows; r++)
            Assert.True(layer.call(x[r].unsqueeze(0))[0].eq(y[r]).all().item<bool>(), $"row {r}");

        var x64 = x.to(ScalarType.Float64);
        var expected = x64.matmul(layer.DequantizeWeight().to(ScalarType.Float64).t()) + layer.Bias!.to(ScalarType.Float64);
        var magnitude = x64.abs().matmul(layer.DequantizeWeight().abs().to(ScalarType.Float64).t()) + layer.Bias!.abs().to(ScalarType.Float64);
        // The integer variants' stated error is at most about 2⁻¹¹ of the magnitude; then the output dtype's rounding.
        double relative = (computeDType == ScalarType.Float32 ? 1e-5 : 1e-3) + (dtype == ScalarType.BFloat16 ? 8e-3 : dtype == ScalarType.Float16 ? 1e-3 : 0);
        var error = (y.to(ScalarType.Float64) - expected).abs();
        Assert.True((error <= magnitude * relative + 1e-6).all().item<bool>(), $"max error {error.max().item<double>():E2}");
    }

    [Fact]
    public void RefusesOperandsThatDoNotFit()
    {
        using var scope = NewDisposeScope();
        using var layer = new Bnb4BitLinear(randn(4, 64));
        var matrix = new Bnb4BitMatrix(layer.Weight, Bnb4BitQuantization.Nf4Code, layer.Absmax, null, 0, null, 4, 64);
        Assert.False(Bnb4BitGemv.TryMultiply(randn(Bnb4BitGemv.MaxActivationRows + 1, 64), matrix, null, out _, ScalarType.Float32)); // too many rows
        Assert.False(Bnb4BitGemv.TryMultiply(randn(Bnb4BitGemv.MaxInt16ActivationRows + 1, 64), matrix, null, out _, Bnb4BitGemvVariant.Vector128Int16));
        Assert.False(Bnb4BitGemv.TryMultiply(randn(1, 64).to(ScalarType.Float64), matrix, null, out _, ScalarType.Float32));
        Assert.False(Bnb4BitGemv.TryMultiply(randn(1, 32), matrix, null, out _, ScalarType.BFloat16));
    }
}
