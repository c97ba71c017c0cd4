using Rinna.Net.Model.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

/// <summary>bitsandbytes' 4-bit numerics against <see cref="Bnb4BitReference"/>, bit for bit.</summary>
public class Bnb4BitQuantizationTests
{
    public static TheoryData<string, bool, int, int> Cases
    {
        get
        {
            // in-features not a multiple of 64 (blocks straddle rows), an odd element count, a partial last block,
            // and more than 256 blocks so double quantization has two absmax blocks.
            (int, int)[] shapes = [(7, 100), (3, 33), (5, 128), (300, 96)];
            var data = new TheoryData<string, bool, int, int>();
            foreach (var type in new[] { Bnb4BitQuantization.Nf4, Bnb4BitQuantization.Fp4 })
                foreach (var dq in new[] { false, true })
                    foreach (var (rows, columns) in shapes) data.Add(type, dq, rows, columns);
            return data;
        }
    }

    /// <summary>Random normal weights with a zero block, an all-negative block, outliers and exact zeros.</summary>
    private static float[] Weights(int rows, int columns, int seed)
    {
        var random = new Random(seed);
        var w = new float[rows * columns];
        for (int i = 0; i < w.Length; i++)
            w[i] = (float)(0.05 * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        for (int i = 0; i < Math.Min(64, w.Length); i++) w[i] = 0f;                       // block 0: absmax 0
        for (int i = 64; i < Math.Min(128, w.Length); i++) w[i] = -Math.Abs(w[i]) - 1e-3f; // block 1: all negative
        if (w.Length > 150) { w[150] = 8.5f; w[151] = -3.25f; w[152] = 0f; }              // outliers and a zero
        if (w.Length > 2) w[^1] = -w[^1] * 40f;                                            // an outlier in the last (partial) block
        return w;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void DequantizedWeightsEqualTheReferenceBitForBit(string quantType, bool doubleQuant, int rows, int columns)
    {
        var w = Weights(rows, columns, rows * 1000 + columns);
        bool nf4 = quantType == Bnb4BitQuantization.Nf4;
        var expected = Bnb4BitReference.Run(w, nf4, doubleQuant);

        using var weight = tensor(w).reshape(rows, columns);
        using var layer = new Bnb4BitLinear(weight, quantType: quantType, useDoubleQuant: doubleQuant);
        Assert.Equal(expected.Packed, layer.Weight.bytes.ToArray());
        Assert.Equal(expected.DequantizedAbsmax.Select(BitConverter.SingleToInt32Bits), layer.BlockScales().Select(BitConverter.SingleToInt32Bits));
        using var dense = layer.DequantizeWeight();
        Assert.Equal(new long[] { rows, columns }, dense.shape);
        var actual = dense.data<float>().ToArray();
        Assert.DoesNotContain(actual, float.IsNaN);
        for (int i = 0; i < actual.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected.Dequantized[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"element {i}: expected {expected.Dequantized[i]:R}, got {actual[i]:R}");
    }

    [Fact]
    public void AZeroBlockDequantizesToZeroWithoutDoubleQuant()
    {
        // 1/0 = inf and 0·inf = NaN: bitsandbytes' trees send NaN to code 0 (NF4 −1, FP4 +0), times absmax 0.
        using var weight = zeros(2, 64);
        foreach (var type in new[] { Bnb4BitQuantization.Nf4, Bnb4BitQuantization.Fp4 })
        {
            using var layer = new Bnb4BitLinear(weight, quantType: type);
            using var dense = layer.DequantizeWeight();
            Assert.All(dense.data<float>().ToArray(), v => Assert.Equal(0f, v));
            Assert.All(layer.Weight.bytes.ToArray(), b => Assert.Equal(0x00, b));
        }
    }

    [Fact]
    public void DynamicMapIsBitsandbytesCreateDynamicMap()
    {
        var expected = Bnb4BitReference.DynamicMap();
        Assert.Equal(256, expected.Length);
        Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), Bnb4BitQuantization.DynamicMap.Select(BitConverter.SingleToInt32Bits));
        Assert.Equal(1.0f, expected[^1]);
        Assert.Contains(0f, expected);
    }

    [Fact]
    public void LibTorchsOwnLinspaceIsTheFusedFormulaOnCpusWithFma()
    {
        // Where the map's fused multiply-adds come from: ATen's AVX2/AVX-512 linspace, contracted by the compiler.
        if (!System.Runtime.Intrinsics.X86.Fma.IsSupported) Assert.Skip("libtorch runs its non-FMA x64 kernels on this CPU.");
        using var points = linspace(0.1, 1.0, 65, dtype: ScalarType.Float32);
        float step = (1.0f - 0.1f) / 64;
        var fused = Enumerable.Range(0, 65).Select(k => k < 32 ? MathF.FusedMultiplyAdd(step, k, 0.1f) : MathF.FusedMultiplyAdd(-step, 64 - k, 1.0f));
        Assert.Equal(fused.Select(BitConverter.SingleToInt32Bits), points.data<float>().ToArray().Select(BitConverter.SingleToInt32Bits));
    }

    /// <summary>
    /// Whole blocks are coded and packed on vectors, and a partial last block one value at a time; every value must get
    /// the reference's code of <c>value · (1 / absmax)</c>, with NaN weights, signed zeros, values landing on the
    /// thresholds and an all-NaN block among them.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void WholeBlocksCodeAsTheReferenceDoes(bool nf4)
    {
        var random = new Random(nf4 ? 11 : 12);
        const int blocks = 400, tail = 37;
        var values = new float[blocks * Bnb4BitQuantization.BlockSize + tail];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * (1 + i % 7);
        var thresholds = nf4 ? Bnb4BitReference.Nf4Thresholds : Bnb4BitReference.Fp4Thresholds;
        // Block 1 has absmax 1 (its first value), so its values are the thresholds themselves and their neighbours.
        for (int i = 64; i < 128; i++) values[i] = (float)(random.NextDouble() - 0.5);
        values[64] = 1f;
        for (int k = 0; k < thresholds.Length; k++)
        {
            values[65 + 3 * k] = thresholds[k];
            values[66 + 3 * k] = MathF.BitIncrement(thresholds[k]);
            values[67 + 3 * k] = -thresholds[k];
        }
        values[130] = float.NaN; values[131] = 0f; values[132] = -0f;
        for (int i = 192; i < 256; i++) values[i] = float.NaN; // block 3: every comparison false

        var packed = new byte[(values.Length + 1) / 2];
        var absmax = new float[blocks + 1];
        Bnb4BitQuantization.QuantizeBlocks(values, nf4, packed, absmax);
        for (int b = 0; b <= blocks; b++)
        {
            var block = values.AsSpan(b * 64, b < blocks ? 64 : tail);
            float max = 0f;
            foreach (var v in block) if (MathF.Abs(v) > max) max = MathF.Abs(v);
            Assert.Equal(BitConverter.SingleToInt32Bits(max), BitConverter.SingleToInt32Bits(absmax[b]));
            float inverse = 1.0f / max;
            for (int i = 0; i < block.Length; i++)
            {
                int expected = Bnb4BitReference.CodeOf(block[i] * inverse, nf4);
                int actual = (packed[(b * 64 + i) / 2] >> (i % 2 == 0 ? 4 : 0)) & 0x0F;
                Assert.True(expected == actual, $"block {b}, element {i} ({block[i]:R}): expected code {expected}, got {actual}");
            }
        }
    }

    [Fact]
    public void CodeBooksAreBitsandbytesTablesAndTreesSplitAtTheirMidpoints()
    {
        Assert.Equal(Bnb4BitReference.Nf4, Bnb4BitQuantization.Nf4Code);
        Assert.Equal(Enumerable.Range(0, 16).Select(Bnb4BitReference.Fp4Value).Select(BitConverter.SingleToInt32Bits),
            Bnb4BitQuantization.Fp4Code.Select(BitConverter.SingleToInt32Bits));
        // functional.get_4bit_type("fp4") divides bitsandbytes' FP4 values by 12 in float32: the same floats as the kernel table.
        float[] fp4 = [0f, 0.0625f, 8f, 12f, 4f, 6f, 2f, 3f];
        Assert.Equal(fp4.Select(v => v / 12f), Bnb4BitReference.Fp4Magnitudes);
        // The trees' thresholds are the midpoints of neighbouring values (to float32 precision of the literals).
        var sortedNf4 = Bnb4BitReference.Nf4;
        for (int k = 0; k < 15; k++)
            Assert.Equal((sortedNf4[k] + (double)sortedNf4[k + 1]) / 2, Bnb4BitReference.Nf4Thresholds[k], 6);
        // Every normalized value decides as the reference's threshold count does, both trees, a dense sweep of [-1, 1].
        for (int i = -100_000; i <= 100_000; i++)
        {
            float x = i / 100_000f;
            Assert.Equal(Bnb4BitReference.CodeOf(x, nf4: true), Bnb4BitQuantization.QuantizeNf4(x));
            Assert.Equal(Bnb4BitReference.CodeOf(x, nf4: false), Bnb4BitQuantization.QuantizeFp4(x));
        }
        foreach (var t in Bnb4BitReference.Nf4Thresholds)
        {
            Assert.Equal(Bnb4BitReference.CodeOf(t, true), Bnb4BitQuantization.QuantizeNf4(t));
            Assert.Equal(Bnb4BitReference.CodeOf(MathF.BitIncrement(t), true), Bnb4BitQuantization.QuantizeNf4(MathF.BitIncrement(t)));
        }
        Assert.Equal(0, Bnb4BitQuantization.QuantizeNf4(float.NaN));
        Assert.Equal(0, Bnb4BitQuantization.QuantizeFp4(float.NaN));
    }

    [Fact]
    public void DynamicQuantizationPicksTheNearerNeighbour()
    {
        var map = Bnb4BitQuantization.DynamicMap;
        var random = new Random(7);
        for (int i = 0; i < 20_000; i++)
        {
            float x = (float)(random.NextDouble() * 2 - 1) * (i % 3 == 0 ? 1e-3f : 1f);
            Assert.Equal(Bnb4BitReference.DynamicCodeOf(map, x), Bnb4BitQuantization.QuantizeDynamic(map, x));
        }
        foreach (var v in map) Assert.Equal(v, map[Bnb4BitQuantization.QuantizeDynamic(map, v)]);
    }

    [Fact]
    public void StorageIsAboutHalfAByteAPerWeight()
    {
        using var weight = randn(256, 1000);
        using var plain = new Bnb4BitLinear(weight, quantType: Bnb4BitQuantization.Nf4);
        using var nested = new Bnb4BitLinear(weight, quantType: Bnb4BitQuantization.Nf4, useDoubleQuant: true);
        Assert.Equal(Bnb4BitLinear.StorageBytes(256, 1000, false, false), plain.WeightBytes);
        Assert.Equal(Bnb4BitLinear.StorageBytes(256, 1000, false, true), nested.WeightBytes);
        Assert.True(plain.WeightBytes <= 0.57 * 256_000, $"{plain.WeightBytes}");
        Assert.True(nested.WeightBytes <= 0.52 * 256_000, $"{nested.WeightBytes}");
    }

    [Theory]
    [InlineData(ScalarType.Float32, false)]
    [InlineData(ScalarType.Float32, true)]
    [InlineData(ScalarType.BFloat16, true)]
    [InlineData(ScalarType.Float16, false)]   // multiplied in float32 on float16-rounded operands
    public void PromptsMatchTheDequantizedWeightAcrossScratchBlocks(ScalarType computeDType, bool doubleQuant)
    {
        // 3000 × 1500 exceeds one 4 Mi-element scratch block; 1500 is not a multiple of 64, so blocks of rows must
        // start on the flattened weight's 64-element boundaries. 135 rows take the prompt path, not the GEMV (whose integer
        // loops, which take every row, need rows of a multiple of 64).
        using var scope = NewDisposeScope();
        var gen = new Generator(11);
        var weight = randn(3000, 1500, generator: gen) * 0.05;
        using var layer = new Bnb4BitLinear(weight, randn(3000, generator: gen), Bnb4BitQuantization.Nf4, doubleQuant, computeDType);
        var x = randn(5, 27, 1500, generator: gen);
        Assert.True(5 * 27 > layer.GemvRowsFor(computeDType));
        var actual = layer.call(x);
        Assert.Equal(new long[] { 5, 27, 3000 }, actual.shape);
        var expected = x.to(computeDType).matmul(layer.DequantizeWeight(computeDType).t()).to(ScalarType.Float32) + layer.Bias!;
        // Float32: accumulation order. Otherwise one unit of the 16-bit result (the bias is added before rounding here).
        var tolerance = computeDType == ScalarType.Float32 ? 1e-4 : expected.abs().max().item<float>() * Math.ScaleB(1, -7);
        Assert.True((actual - expected).abs().max().item<float>() <= tolerance, $"max {(actual - expected).abs().max().item<float>()} at magnitude {expected.abs().max().item<float>()}");
        if (computeDType != ScalarType.Float16) return;
        // Float16: the float16-rounded operands' exact product, accumulated in float32 and rounded to float16 once.
        AssertWithinOneRoundingOfTheRoundedOperandsProduct(actual, x, layer, ScalarType.Float16, significandBits: 11);
    }

    /// <summary>
    /// <paramref name="actual"/> is the product of <paramref name="x"/> and the layer's weight and bias, all rounded to
    /// <paramref name="rounding"/>, exact but for float32 accumulation and one rounding to a
    /// <paramref name="significandBits"/>-bit significand; returns the float64 magnitude of the sums' terms.
    /// </summary>
    private static Tensor AssertWithinOneRoundingOfTheRoundedOperandsProduct(Tensor actual, Tensor x, Bnb4BitLinear layer, ScalarType rounding, int significandBits)
    {
        var x64 = x.to(rounding).to(ScalarType.Float64);
        var w64 = layer.DequantizeWeight(rounding).to(ScalarType.Float64);
        var exact = x64.matmul(w64.t()) + layer.Bias!.to(rounding).to(ScalarType.Float64);
        var magnitude = x64.abs().matmul(w64.abs().t()) + layer.Bias!.abs().to(ScalarType.Float64);
        var error = (actual.to(ScalarType.Float64) - exact).abs();
        long terms = x.size(-1);
        Assert.True((error <= exact.abs() * Math.ScaleB(1, -significandBits) + magnitude * terms * 1.2e-7 + 1e-7).all().item<bool>(),
            $"max error {error.max().item<double>():E2}");
        return magnitude;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BFloat16PromptsMultiplyInFloat32WhereTheBFloat16GemmIsSlow(bool bfloat16Gemm)
    {
        // CPUs without bfloat16 instructions multiply the bfloat16-rounded operands in float32 (exact products) and
        // round once, as a bfloat16 GEMM accumulating in float32 does; both paths run here whatever this CPU has.
        using var scope = NewDisposeScope();
        var gen = new Generator(13);
        using var layer = new Bnb4BitLinear(randn(700, 1500, generator: gen) * 0.05, randn(700, generator: gen), Bnb4BitQuantization.Nf4, false, ScalarType.BFloat16);
        var x = randn(70, 1500, generator: gen).to(ScalarType.BFloat16);
        var actual = layer.DequantizingProduct(x, bfloat16Gemm);
        Assert.Equal(ScalarType.BFloat16, actual.dtype);
        // One rounding to bfloat16 (half a unit, 2⁻⁹ relative) beside float32 accumulation over 1500 terms.
        var magnitude = AssertWithinOneRoundingOfTheRoundedOperandsProduct(actual, x, layer, ScalarType.BFloat16, significandBits: 8);
        if (!bfloat16Gemm)
        {
            var rounded = layer.DequantizeWeight(ScalarType.BFloat16);
            // Float32 products of the rounded operands, rounded once: libtorch's float32 product of the same operands, but
            // for a few sums whose float32 order differs and whose rounding then falls a bfloat16 unit apart (more where
            // the terms cancel).
            var expected = (x.to(ScalarType.Float32).matmul(rounded.to(ScalarType.Float32).t()) + layer.Bias!.to(ScalarType.BFloat16).to(ScalarType.Float32)).to(ScalarType.BFloat16);
            var differ = actual.ne(expected);
            var unit = expected.to(ScalarType.Float32).abs() * Math.ScaleB(1, -7) + magnitude.to(ScalarType.Float32) * 1500 * Math.ScaleB(1, -24);
            Assert.True(differ.sum().item<long>() <= actual.numel() / 1000, $"{differ.sum().item<long>()} of {actual.numel()} differ");
            var bad = (actual.to(ScalarType.Float32) - expected.to(ScalarType.Float32)).abs().gt(unit);
            Assert.True(!bad.any().item<bool>(), $"{actual.masked_select(bad).to(ScalarType.Float32).str()} vs {expected.masked_select(bad).to(ScalarType.Float32).str()}");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PromptsCopyNoBlockScalesOntoTheManagedHeap(bool doubleQuant)
    {
        // Each prompt product copied all of the layer's scales into a new array: 256 KB here (65,536 blocks), 2 MB for
        // rinna-4b's MLP, hundreds of MB a prompt on the large-object heap.
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        using var layer = new Bnb4BitLinear(randn(2048, 2048, generator: gen) * 0.05, null, Bnb4BitQuantization.Nf4, doubleQuant, ScalarType.Float32);
        var x = randn(136, 2048, generator: gen);
        Assert.True(x.size(0) > layer.GemvRowsFor(ScalarType.Float32)); // the prompt path, not the GEMV
        layer.call(x).Dispose(); // the per-thread scratch buffers
        long before = GC.GetAllocatedBytesForCurrentThread();
        layer.call(x).Dispose();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < 64 * 1024, $"A {x.size(0)}-row product allocated {allocated} managed bytes.");
    }

    [Fact]
    public void ConvertingTheModuleKeepsTheCodes()
    {
        using var weight = randn(4, 64);
        using var layer = new Bnb4BitLinear(weight);
        var before = layer.Weight.bytes.ToArray();
        layer.to(ScalarType.BFloat16);
        Assert.Equal(ScalarType.Byte, layer.Weight.dtype);
        Assert.Equal(before, layer.Weight.bytes.ToArray());
    }

    [Fact]
    public void BadArgumentsAreRefused()
    {
        using var weight = randn(4, 64);
        var error = Assert.Throws<ArgumentException>(() => new Bnb4BitLinear(weight, quantType: "int4"));
        Assert.Contains("int4", error.Message);
        Assert.Throws<ArgumentException>(() => new Bnb4BitLinear(randn(4), quantType: Bnb4BitQuantization.Nf4));
        using var layer = new Bnb4BitLinear(weight);
        Assert.Throws<ArgumentException>(() => layer.call(randn(1, 63)));
    }
}
