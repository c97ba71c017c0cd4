using Rinna.Net.Kernels;
using Rinna.Net.Model.Layers;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Native;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

public class Int8LinearTests
{
    public Int8LinearTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<int, int, int> OddShapes => new()
    {
        // M, K, N: single token, sizes below and around AVX-512 widths (16/32/64 bytes), primes, K above 2^24/127².
        { 1, 1, 1 }, { 1, 7, 5 }, { 3, 13, 9 }, { 1, 63, 65 }, { 5, 129, 31 }, { 17, 64, 24 }, { 2, 100, 67 }, { 1, 1031, 17 }, { 4, 1100, 33 },
    };

    [Theory]
    [MemberData(nameof(OddShapes))]
    public void WeightCodesAndScalesFollowPerRowAbsmax(int m, int k, int n)
    {
        using var scope = NewDisposeScope();
        _ = m;
        var gen = new Generator((ulong)(k * 1000 + n));
        var weight = randn(n, k, generator: gen) * 0.05;
        using var layer = new Int8Linear(weight);

        var (codes, scale) = Int8Reference.QuantizeWeightRows(weight);
        Assert.Equal(ScalarType.Int8, layer.Weight.dtype);
        Assert.Equal(ScalarType.Float32, layer.WeightScale.dtype);
        Assert.Equal(0.0, Int8Reference.MaxAbs(layer.Weight.to(ScalarType.Float64) - codes));
        Assert.Equal(0.0, Int8Reference.MaxAbs(layer.WeightScale.to(ScalarType.Float64) - scale.squeeze(1)));
        Assert.Equal(127.0, Int8Reference.MaxAbs(layer.Weight.to(ScalarType.Float64)));
        // Against the float16-rounded weight bitsandbytes quantizes, the error is half a step per element (the GPU's
        // reciprocal is within a unit of 127 / absmax, so a code is at most 127 · 2⁻²² off its exact value).
        var rounded = weight.to(ScalarType.Float16).to(ScalarType.Float64);
        var error = (layer.Weight.to(ScalarType.Float64) * scale - rounded).abs();
        Assert.True((error - scale * (0.5 + 1e-4)).max().item<double>() <= 1e-9);
    }

    /// <summary>
    /// The managed row-by-row quantization gives libtorch's codes and scales bit for bit, for each weight dtype, with a
    /// zero row, values exactly half a step apart (ties), a row beyond float16's range, widths with and without a vector tail, and rows holding an
    /// infinity or NaN, which go back to libtorch's path.
    /// </summary>
    [Theory]
    [InlineData(ScalarType.Float16, 200, false)]
    [InlineData(ScalarType.BFloat16, 200, false)]
    [InlineData(ScalarType.Float32, 200, false)]
    [InlineData(ScalarType.Float32, 37, false)]
    [InlineData(ScalarType.Float16, 200, true)]
    public void ManagedQuantizationEqualsLibTorchs(ScalarType dtype, int columns, bool nonFinite)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(columns * 10 + (int)dtype));
        var weight = (randn(70, columns, generator: gen) * 0.05).to(dtype);
        weight[3] = zeros(columns, dtype: dtype);
        // Row 5: absmax 63.5 (scale 0.5) and values in steps of 0.25, so w · 127 / absmax lands near halves.
        weight[5] = (arange(columns, dtype: ScalarType.Float32) % 255 * 0.25 - 31.75).to(dtype);
        weight[5, 0] = 63.5f;
        if (nonFinite)
        {
            weight[7, 3] = float.PositiveInfinity;
            weight[9, 1] = float.NaN;
        }
        // A row float16 cannot hold keeps its own values (bitsandbytes would round it to infinities).
        if (dtype != ScalarType.Float16) weight[11, 2] = 70000f;
        Tensor Allocate(long[] shape, ScalarType type, Device device) => empty(shape, type, device);
        var (managedCodes, managedScale) = Int8Linear.QuantizeRows(weight, CPU, Allocate);
        var (torchCodes, torchScale) = Int8Linear.QuantizeRows(weight, CPU, Allocate, managed: false);
        using (managedCodes) using (managedScale) using (torchCodes) using (torchScale)
        {
            Assert.Equal(torchCodes.bytes.ToArray(), managedCodes.bytes.ToArray());
            Assert.Equal(torchScale.bytes.ToArray(), managedScale.bytes.ToArray());
            if (!nonFinite)
            {
                var (codes, scale) = Int8Reference.QuantizeWeightRows(weight);
                Assert.Equal(0.0, Int8Reference.MaxAbs(managedCodes.to(ScalarType.Float64) - codes));
                Assert.Equal(0.0, Int8Reference.MaxAbs(managedScale.to(ScalarType.Float64) - scale.squeeze(1)));
            }
        }
    }

    [Theory]
    [MemberData(nameof(OddShapes))]
    public void PureInt8MatchesExactIntegerArithmetic(int m, int k, int n)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(m * 7919 + k * 31 + n));
        var weight = randn(n, k, generator: gen) * 0.05;
        var x = randn(m, k, generator: gen);
        using var layer = new Int8Linear(weight, threshold: 0);

        var expected = Int8Reference.Linear(x, layer.Weight, layer.WeightScale, null, threshold: 0);
        var actual = layer.forward(x);

        Assert.Equal(ScalarType.Float32, actual.dtype);
        Assert.Equal(new long[] { m, n }, actual.shape);
        Assert.True(Int8Reference.MaxAbs(actual - expected) <= 1e-5 * Math.Max(1e-3, Int8Reference.MaxAbs(expected)),
            $"max error {Int8Reference.MaxAbs(actual - expected)} against max {Int8Reference.MaxAbs(expected)}");
        var fallback = AtenInt8Kernels.FallbackLinear(x, layer.Weight, layer.WeightScale, null, threshold: 0);
        Assert.True(Int8Reference.MaxAbs(fallback - expected) <= 1e-5 * Math.Max(1e-3, Int8Reference.MaxAbs(expected)),
            $"fallback max error {Int8Reference.MaxAbs(fallback - expected)} against max {Int8Reference.MaxAbs(expected)}");
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void StaysWithinOnePercentOfTheFloatProduct(ScalarType computeType)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(42);
        var weight = (randn(192, 320, generator: gen) * 0.02).to(computeType);
        var bias = (randn(192, generator: gen) * 0.1).to(computeType);
        var x = randn(8, 320, generator: gen).to(computeType);
        using var layer = new Int8Linear(weight, bias);

        var actual = layer.forward(x);
        var exact = nn.functional.linear(x.to(ScalarType.Float64), weight.to(ScalarType.Float64), bias.to(ScalarType.Float64));

        Assert.Equal(computeType, actual.dtype);
        // Gaussian rows of a few hundred elements have absmax ≈ 3σ, so each 8-bit rounding adds noise of
        // (3σ/127)/√12 ≈ 0.7 % of σ; activations and weights together ≈ 1 %. Measured 9.3e-3 (float32), 9.5e-3 (bfloat16).
        Assert.InRange(Int8Reference.RelativeL2(actual, exact), 5e-3, 1.2e-2);
    }

    [Fact]
    public void BFloat16InputMatchesTheReferenceToOutputRounding()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        var weight = randn(48, 77, generator: gen).to(ScalarType.BFloat16);
        var x = (randn(6, 77, generator: gen) * 2).to(ScalarType.BFloat16);
        using var layer = new Int8Linear(weight);

        var expected = Int8Reference.Linear(x, layer.Weight, layer.WeightScale, null, layer.Threshold);
        var actual = layer.forward(x);

        Assert.Equal(ScalarType.BFloat16, actual.dtype);
        var allowed = expected.abs() * Math.Pow(2, -8) + 1e-6;
        Assert.True((actual.to(ScalarType.Float64) - expected).abs().le(allowed).all().item<bool>());
    }

    [Fact]
    public void OutlierColumnsAreComputedInFloat()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(7);
        var weight = randn(64, 1024, generator: gen) * 0.02;
        var x = randn(12, 1024, generator: gen).clamp(-3, 3);
        // Planted outlier features as LLM.int8() describes them: one feature large in every token, and one large in
        // two tokens only (a column counts as outlier for the whole batch). Without decomposition each token's step
        // becomes ~0.4 and the ordinary features drown; with it, what is left is the int8 weight error on the outlier
        // columns, smaller by about sqrt(ordinary features) / (3 sqrt(outlier features)).
        x[.., 17] = randn(12, generator: gen).sign() * (30 + 30 * rand(12, generator: gen));
        x[3, 700] = tensor(45f);
        x[8, 700] = tensor(-52f);
        var exact = nn.functional.linear(x.to(ScalarType.Float64), weight.to(ScalarType.Float64));

        using var decomposed = new Int8Linear(weight, threshold: 6.0);
        using var pure = new Int8Linear(weight, threshold: 0);
        var withDecomposition = decomposed.forward(x);
        var withoutDecomposition = pure.forward(x);

        var expected = Int8Reference.Linear(x, decomposed.Weight, decomposed.WeightScale, null, 6.0);
        Assert.True(Int8Reference.MaxAbs(withDecomposition - expected) <= 1e-5 * Int8Reference.MaxAbs(expected));
        var errorWith = Int8Reference.RelativeL2(withDecomposition, exact);
        var errorWithout = Int8Reference.RelativeL2(withoutDecomposition, exact);
        // Measured: 9.6e-3 with decomposition, 6.0e-2 without.
        Assert.True(errorWith < 1.2e-2, $"with decomposition {errorWith}");
        Assert.True(errorWithout > 4 * errorWith, $"without {errorWithout}, with {errorWith}");
    }

    [Fact]
    public void NegativeThresholdMeansPureInt8()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(8);
        var weight = randn(16, 40, generator: gen);
        var x = randn(3, 40, generator: gen) * 10;
        using var negative = new Int8Linear(weight, threshold: -1);
        using var zero = new Int8Linear(weight, threshold: 0);
        using var decomposed = new Int8Linear(weight, threshold: 6);
        Assert.True(negative.forward(x).eq(zero.forward(x)).all().item<bool>());
        Assert.False(decomposed.forward(x).eq(zero.forward(x)).all().item<bool>());
    }

    [Fact]
    public void BiasIsAddedInFloat()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(9);
        var weight = randn(20, 30, generator: gen);
        var bias = randn(20, generator: gen).to(ScalarType.Float16);
        var x = randn(2, 3, 30, generator: gen);
        using var withBias = new Int8Linear(weight, bias);
        using var withoutBias = new Int8Linear(weight);

        var difference = withBias.forward(x) - withoutBias.forward(x);
        Assert.Equal(new long[] { 2, 3, 20 }, difference.shape);
        Assert.True(Int8Reference.MaxAbs(difference - bias.to(ScalarType.Float32)) <= 1e-5);
        Assert.Equal(ScalarType.Float32, withBias.Bias!.dtype);
    }

    [Fact]
    public void StoresAboutOneBytePerWeightAndNoFloatCopy()
    {
        using var scope = NewDisposeScope();
        var weight = randn(256, 512, dtype: ScalarType.Float16);
        using var layer = new Int8Linear(weight, randn(256, dtype: ScalarType.Float16));

        var storedBytes = layer.buffers().Concat(layer.parameters()).Sum(t => t.ElementSize * t.numel());
        var bytesPerWeight = (double)storedBytes / weight.numel();
        Assert.Equal(Int8Linear.StorageBytes(256, 512, hasBias: true), storedBytes);
        using var withoutBias = new Int8Linear(weight);
        Assert.Equal(Int8Linear.StorageBytes(256, 512, hasBias: false), withoutBias.buffers().Sum(t => t.ElementSize * t.numel()));
        Assert.InRange(bytesPerWeight, 1.0, 1.1);
        Assert.Empty(layer.parameters());
        Assert.DoesNotContain(layer.buffers(), t => t.is_floating_point() && t.numel() == weight.numel());
    }

    [Fact]
    public void ScriptAndFallbackPathsAgree()
    {
        using var scope = NewDisposeScope();
        Assert.True(AtenInt8Kernels.IsScriptAvailable, AtenInt8Kernels.ScriptFailure);
        var gen = new Generator(10);
        var weight = randn(45, 71, generator: gen);
        var x = randn(9, 71, generator: gen);
        x[4, 13] = tensor(30f);
        using var layer = new Int8Linear(weight, randn(45, generator: gen));
        foreach (var threshold in new[] { 0.0, 6.0 })
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                var input = x.to(dtype);
                var script = Int8Reference.ScriptWithExactSums(input, layer, threshold);
                var fallback = AtenInt8Kernels.FallbackLinear(input, layer.Weight, layer.WeightScale, layer.Bias, threshold);
                Assert.Equal(dtype, fallback.dtype);
                var tolerance = dtype == ScalarType.Float32 ? 1e-5 : 1e-2;
                Assert.True(Int8Reference.MaxAbs(script.to(ScalarType.Float32) - fallback.to(ScalarType.Float32)) <= tolerance * Int8Reference.MaxAbs(script),
                    $"threshold {threshold}, {dtype}");
            }
    }

    /// <summary>
    /// <see cref="AtenInt8Kernels.IntMmIsExactOnCpu"/> tells the truth: <c>_int_mm</c> of a prompt's rows of 127 with weight
    /// rows of 127 (what a saturating 16-bit pair sum clips) equals the exact sums exactly when it says so.
    /// </summary>
    [Fact]
    public void IntMmIsExactOnCpuSaysWhetherItsSumsAreExact()
    {
        if (!AtenInt8Kernels.IsScriptAvailable) Assert.Skip($"the TorchScript int8 product is unavailable: {AtenInt8Kernels.ScriptFailure}");
        using var scope = NewDisposeScope();
        var x = full(40, 1000, 127, dtype: ScalarType.Int8);
        var w = full(24, 1000, 127, dtype: ScalarType.Int8);
        var sums = AtenInt8Kernels.Product(x, w);
        Assert.Equal(AtenInt8Kernels.IntMmIsExactOnCpu, sums.eq(127 * 127 * 1000).all().item<bool>());
    }

    /// <summary>
    /// The reference the other tests use where <c>_int_mm</c> is not exact (the script's steps in TorchSharp around exact
    /// int64 sums) gives the script's bits wherever <c>_int_mm</c> is exact: prompts, outliers, both dtypes, a bias.
    /// </summary>
    [Fact]
    public void ScriptStepsAroundExactSumsGiveTheScriptsBits()
    {
        if (!AtenInt8Kernels.IsScriptAvailable) Assert.Skip($"the TorchScript int8 product is unavailable: {AtenInt8Kernels.ScriptFailure}");
        if (!AtenInt8Kernels.IntMmIsExactOnCpu) Assert.Skip("oneDNN's _int_mm does not return exact sums on this CPU (no VNNI), so the script is no reference here.");
        using var scope = NewDisposeScope();
        var gen = new Generator(21);
        using var layer = new Int8Linear(randn(300, 2816, generator: gen) * 0.02, randn(300, generator: gen));
        var x = randn(70, 2816, generator: gen).mul_(1.5);
        x[3, 100] = tensor(25f);
        foreach (var threshold in new[] { 0.0, 6.0 })
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                var input = x.to(dtype);
                var script = AtenInt8Kernels.ScriptLinear(input, layer.Weight, layer.WeightScale, layer.Bias, threshold);
                var stepwise = AtenInt8Kernels.LinearAround(input, layer.Weight, layer.WeightScale, layer.Bias, threshold, Int8Reference.ExactSums);
                Assert.True(stepwise.equal(script).all().item<bool>(), $"threshold {threshold}, {dtype}");
            }
    }

    /// <summary>
    /// The path that serves CPUs whose <c>_int_mm</c> saturates (the script's steps around <see cref="Int8Gemv"/>, any
    /// number of rows) gives the script's arithmetic with exact sums bit for bit, on every CPU Int8Gemv runs on: fewer
    /// rows than one call takes, several calls' worth with a short last one, outlier columns, K with a tail.
    /// </summary>
    [Theory]
    [InlineData(1, 2816, 700, ScalarType.BFloat16)]
    [InlineData(33, 2816, 300, ScalarType.Float32)]
    [InlineData(70, 1031, 129, ScalarType.BFloat16)]
    public void StepwisePathGivesTheScriptsArithmeticWithExactSums(int rows, int k, int n, ScalarType dtype)
    {
        if (!Int8Gemv.IsSupported) Assert.Skip("no Int8Gemv variant runs on this CPU.");
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(rows * 7 + k));
        using var layer = new Int8Linear(randn(n, k, generator: gen) * 0.02, randn(n, generator: gen));
        var x = randn(rows, k, generator: gen).mul_(1.5);
        x[rows / 2, k / 3] = tensor(25f);
        foreach (var threshold in new[] { 0.0, 6.0 })
        {
            var input = x.to(dtype);
            var stepwise = AtenInt8Kernels.StepwiseLinear(input, layer.Weight, layer.WeightScale, layer.Bias, threshold);
            var reference = AtenInt8Kernels.LinearAround(input, layer.Weight, layer.WeightScale, layer.Bias, threshold, Int8Reference.ExactSums);
            Assert.Equal(dtype, stepwise.dtype);
            Assert.True(stepwise.equal(reference).all().item<bool>(),
                $"threshold {threshold}: max diff {Int8Reference.MaxAbs(stepwise.to(ScalarType.Float32) - reference.to(ScalarType.Float32))}");
        }
    }

    /// <summary>
    /// A prompt whose activations and weights are all at the int8 limit (every pair of byte products past what a 16-bit
    /// lane holds) gets exact sums from the layer on this CPU, whichever product it takes: oneDNN's <c>_int_mm</c>
    /// clipped these without VNNI.
    /// </summary>
    [Fact]
    public void PromptRowsAtTheInt8LimitGetExactSums()
    {
        using var scope = NewDisposeScope();
        using var layer = new Int8Linear(full(48, 2816, 0.01f), threshold: 6.0);
        foreach (int rows in new[] { 1, 40 })
        {
            var x = full(rows, 2816, 0.5f);
            var output = layer.forward(x);
            var exact = AtenInt8Kernels.LinearAround(x, layer.Weight, layer.WeightScale, null, 6.0, Int8Reference.ExactSums);
            Assert.True(output.equal(exact).all().item<bool>(), $"{rows} row(s): {output[0, 0].item<float>()} against {exact[0, 0].item<float>()}");
            Assert.Equal(0.5 * 0.01 * 2816, output[0, 0].item<float>(), 0.05);
        }
    }

    /// <summary>
    /// A decode step's rows take the managed steps around the product (<see cref="RowwiseInt8"/>); they must give
    /// exactly the script's bits, for rows read at an offset inside a larger tensor too, and for several rows at once.
    /// </summary>
    [Theory]
    [InlineData(1, 1, ScalarType.Float32, true)]
    [InlineData(7, 5, ScalarType.BFloat16, true)]
    [InlineData(63, 65, ScalarType.BFloat16, false)]
    [InlineData(1031, 17, ScalarType.Float32, false)]
    [InlineData(2816, 8448, ScalarType.BFloat16, true)]
    [InlineData(640, 2816, ScalarType.Float32, true)]
    public void RowwisePathGivesTheScriptsBits(int k, int n, ScalarType dtype, bool withBias)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(k * 31 + n));
        using var layer = new Int8Linear(randn(n, k, generator: gen) * 0.05, withBias ? randn(n, generator: gen) : null);
        var rows = randn(3, k, generator: gen).mul_(2.0).to(dtype);
        foreach (var threshold in new[] { 0.0, 6.0, 100.0 })
            for (int r = 0; r < 3; r++)
            {
                var row = rows.narrow(0, r, 1); // rows 1 and 2 start at an offset in the storage
                Assert.True(RowwiseInt8.TryQuantize(row, threshold, out var quantized, new float[Int8Gemv.MaxRows]) || threshold == 6.0,
                    $"row {r} threshold {threshold} was not taken");
                quantized?.Dispose();
                var managed = AtenInt8Kernels.Linear(row, layer.Weight, layer.WeightScale, layer.Bias, threshold);
                var script = Int8Reference.ScriptWithExactSums(row, layer, threshold);
                Assert.Equal(dtype, managed.dtype);
                Assert.True(managed.equal(script).all().item<bool>(), $"row {r}, threshold {threshold}: max diff {Int8Reference.MaxAbs(managed.to(ScalarType.Float32) - script.to(ScalarType.Float32))}");
            }
        // The three rows as one continuous-batching step: each row on its own scale, as the script quantizes them.
        foreach (var threshold in new[] { 0.0, 100.0 })
        {
            var scales = new float[Int8Gemv.MaxRows];
            Assert.True(RowwiseInt8.TryQuantize(rows, threshold, out var quantized, scales));
            quantized.Dispose();
            var absMax = rows.to(ScalarType.Float32).abs().amax([1]).data<float>().ToArray();
            Assert.Equal(absMax.Select(m => m / 127f), scales.Take(3)); // each row on its own scale
            var managed = AtenInt8Kernels.Linear(rows, layer.Weight, layer.WeightScale, layer.Bias, threshold);
            var script = Int8Reference.ScriptWithExactSums(rows, layer, threshold);
            Assert.True(managed.equal(script).all().item<bool>(), $"three rows, threshold {threshold}");
        }
    }

    public static TheoryData<string, int, int, ScalarType> WidthCases
    {
        get
        {
            var data = new TheoryData<string, int, int, ScalarType>();
            foreach (var width in Enum.GetNames<LaneWidth>())
                foreach (var (k, n, dtype) in new[] { (1, 1, ScalarType.Float32), (63, 65, ScalarType.BFloat16), (130, 37, ScalarType.Float32), (2816, 300, ScalarType.BFloat16) })
                    data.Add(width, k, n, dtype);
            return data;
        }
    }

    /// <summary>
    /// The row steps in each vector width (the 128-bit one is what Arm64 runs; x64 runs it too, so it is tested on every
    /// machine): quantization, the product's rescale with bias, and a residual, each bit for bit the script's result
    /// (the residual added by libtorch in the dtype), for rows whose lengths leave every kind of tail.
    /// </summary>
    [Theory]
    [MemberData(nameof(WidthCases))]
    public void RowStepsGiveTheScriptsBitsInEveryVectorWidth(string widthName, int k, int n, ScalarType dtype)
    {
        var width = Enum.Parse<LaneWidth>(widthName);
        if (!LaneWidths.IsAccelerated(width)) Assert.Skip($"this CPU does not run {width} vectors in hardware.");
        if (!AtenInt8Kernels.IsScriptAvailable) Assert.Skip("the TorchScript int8 kernels, the reference here, are unavailable.");
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(k * 131 + n));
        using var layer = new Int8Linear(randn(n, k, generator: gen) * 0.05, randn(n, generator: gen));
        var rows = randn(3, k, generator: gen).mul_(2.0).to(dtype);
        var residual = randn(3, n, generator: gen).to(dtype);
        var scales = new float[Int8Gemv.MaxRows];
        Assert.True(RowwiseInt8.TryQuantize(rows, 0.0, out var quantized, scales, width));
        using (quantized)
        using (var accumulator = Int8Reference.ExactIntSums(quantized, layer.Weight))
        {
            var script = Int8Reference.ScriptWithExactSums(rows, layer, 0.0);
            var rescaled = RowwiseInt8.Rescale(accumulator, scales.AsSpan(0, 3), layer.WeightScale, layer.Bias, dtype, width: width);
            Assert.True(rescaled.equal(script).all().item<bool>(), $"max diff {Int8Reference.MaxAbs(rescaled.to(ScalarType.Float32) - script.to(ScalarType.Float32))}");
            var added = RowwiseInt8.Rescale(accumulator, scales.AsSpan(0, 3), layer.WeightScale, layer.Bias, dtype, residual: residual, width: width);
            Assert.True(added.equal(script + residual).all().item<bool>(), "the residual changed bits");
        }
        // A non-finite value anywhere in a row, in the vector part or the tail, leaves the rows to the script.
        foreach (int at in new[] { 0, k - 1 })
            foreach (var bad in new[] { float.NaN, float.PositiveInfinity })
            {
                var spoiled = rows.clone();
                spoiled[1, at] = tensor(bad).to(dtype);
                Assert.False(RowwiseInt8.TryQuantize(spoiled, 0.0, out _, scales, width), $"{bad} at column {at} was quantized");
            }
    }

    /// <summary>
    /// A decode step's GELU and residual applied in the rescale's pass equal libtorch's separate operations: the residual
    /// bit for bit, the GELU within its last bit (its erf is another approximation), in bfloat16 and float32, one row and several.
    /// </summary>
    [Theory]
    [InlineData(1, ScalarType.BFloat16)]
    [InlineData(3, ScalarType.BFloat16)]
    [InlineData(1, ScalarType.Float32)]
    [InlineData(5, ScalarType.Float32)]
    public void GeluAndResidualInTheRescaleEqualTheSeparateOperations(int rows, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(rows * 7 + (int)dtype));
        using var layer = new Int8Linear(randn(600, 320, generator: gen) * 0.05, randn(600, generator: gen));
        var x = randn(rows, 320, generator: gen).mul_(2.0).to(dtype);
        var residual = randn(rows, 600, generator: gen).to(dtype);
        var product = layer.call(x);

        var added = layer.Forward(x, Activation.Identity, residual);
        Assert.True(added.equal(product + residual).all().item<bool>(), "the residual changed bits");

        var expected = TorchSharp.torch.nn.functional.gelu(product).to(ScalarType.Float32);
        var activated = layer.Forward(x, Activation.Gelu).to(ScalarType.Float32);
        // As for Float16Gemv: one unit in the dtype's last place, or a few float32 units of 1 + erf times x / 2 in the tail.
        double unit = dtype == ScalarType.BFloat16 ? Math.Pow(2, -7) : Math.Pow(2, -22);
        var excess = (activated - expected).abs() - expected.abs().mul(unit) - product.to(ScalarType.Float32).abs().mul(8 * Math.Pow(2, -24));
        Assert.True(excess.max().item<float>() <= 0, $"a GELU differs from libtorch's by {excess.max().item<float>()} more than allowed");
        // In bfloat16 the rounding hides the approximations' difference almost always (in float32 it shows in the last bits).
        if (dtype == ScalarType.BFloat16)
            Assert.True(activated.ne(expected).sum().item<long>() <= rows * 600 / 20, "more than one GELU in twenty differs from libtorch's");

        var both = layer.Forward(x, Activation.Gelu, residual).to(ScalarType.Float32);
        var separate = (layer.Forward(x, Activation.Gelu) + residual).to(ScalarType.Float32);
        Assert.True(both.equal(separate).all().item<bool>(), "GELU then residual is not the two steps one after the other");
    }

    [Fact]
    public void RowwisePathLeavesOutliersAndOtherInputsToTheScript()
    {
        using var scope = NewDisposeScope();
        var row = randn(1, 64, generator: new Generator(3));
        row[0, 5] = tensor(9f);
        Assert.False(RowwiseInt8.TryQuantize(row, 6.0, out _, new float[Int8Gemv.MaxRows])); // an outlier feature: the decomposition is the script's
        Assert.True(RowwiseInt8.TryQuantize(row, 0.0, out var pure, new float[Int8Gemv.MaxRows])); // threshold 0: pure int8 takes the row
        pure.Dispose();
        Assert.False(RowwiseInt8.TryQuantize(randn(Int8Gemv.MaxRows + 1, 64), 6.0, out _, new float[Int8Gemv.MaxRows])); // a prompt
        Assert.False(RowwiseInt8.TryQuantize(cat([randn(2, 64), row], 0), 6.0, out _, new float[Int8Gemv.MaxRows])); // one row's outlier is every row's column
        Assert.False(RowwiseInt8.TryQuantize(randn(1, 64).to(ScalarType.Float16), 6.0, out _, new float[Int8Gemv.MaxRows]));
        Assert.False(RowwiseInt8.TryQuantize(randn(1, 128).slice(1, 0, 128, 2), 6.0, out _, new float[Int8Gemv.MaxRows])); // not contiguous
        var nan = randn(1, 64);
        nan[0, 40] = tensor(float.NaN);
        Assert.False(RowwiseInt8.TryQuantize(nan, 0.0, out _, new float[Int8Gemv.MaxRows]));
    }

    [Fact]
    public void ModelDtypeConversionKeepsStorageAndResult()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(11);
        var weight = randn(24, 40, generator: gen);
        var x = randn(2, 40, generator: gen);
        using var layer = new Int8Linear(weight, randn(24, generator: gen));
        var before = layer.forward(x);

        layer.to(ScalarType.BFloat16);
        layer.to(CPU);

        Assert.Equal(ScalarType.Int8, layer.Weight.dtype);
        Assert.Equal(ScalarType.Float32, layer.WeightScale.dtype);
        Assert.Equal(ScalarType.Float32, layer.Bias!.dtype);
        Assert.True(layer.forward(x).eq(before).all().item<bool>());
    }

    [Fact]
    public void DeviceMovesKeepOneCopyOfEachBufferAndTheirDtypes()
    {
        using var scope = NewDisposeScope();
        using var layer = new Int8Linear(randn(8, 16), randn(8));

        layer.to(new Device(DeviceType.META));

        var buffers = layer.named_buffers().ToDictionary(b => b.name, b => b.buffer);
        Assert.Equal(["weight", "weight_scale", "bias"], buffers.Keys);
        Assert.All(buffers.Values, b => Assert.Equal(DeviceType.META, b.device_type));
        Assert.Same(buffers["weight"], layer.Weight);
        Assert.Same(buffers["weight_scale"], layer.WeightScale);
        Assert.Same(buffers["bias"], layer.Bias);
        Assert.Equal(ScalarType.Int8, layer.Weight.dtype);
        Assert.Equal(ScalarType.Float32, layer.WeightScale.dtype);
    }

    [Fact]
    public void EmptyBatchGivesEmptyOutput()
    {
        using var scope = NewDisposeScope();
        using var layer = new Int8Linear(randn(8, 16));
        var output = layer.forward(zeros(1, 0, 16, dtype: ScalarType.BFloat16));
        Assert.Equal(new long[] { 1, 0, 8 }, output.shape);
        Assert.Equal(ScalarType.BFloat16, output.dtype);
    }

    [Fact]
    public void RejectsBadWeightsAndInputs()
    {
        using var scope = NewDisposeScope();
        Assert.Throws<ArgumentException>(() => new Int8Linear(randn(4)));
        Assert.Throws<ArgumentException>(() => new Int8Linear(ones(4, 4, dtype: ScalarType.Int8)));
        Assert.Throws<ArgumentException>(() => new Int8Linear(randn(4, 4), randn(5)));
        Assert.Throws<ArgumentException>(() => new Int8Linear(randn(4, 4), threshold: double.NaN));
        using var layer = new Int8Linear(randn(4, 6));
        var wrongWidth = Assert.Throws<ArgumentException>(() => layer.forward(randn(2, 5)));
        Assert.Contains("6", wrongWidth.Message);
        Assert.Throws<ArgumentException>(() => layer.forward(ones(2, 6, dtype: ScalarType.Int32)));
    }

    [Fact]
    public async Task ScriptArgumentsSurviveGarbageCollectionDuringTheCall()
    {
        // TorchSharp's invoke() passes a double as the handle of a temporary Scalar; a collection at the wrong moment
        // freed it and the call read garbage ("Expected false to be true" in Scalar::toLong). Force collections throughout.
        using var stop = new CancellationTokenSource();
        var collector = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        });
        try
        {
            RepeatForwardAndCompare(4_000);
        }
        finally
        {
            await stop.CancelAsync();
            await collector;
        }
    }

    private static void RepeatForwardAndCompare(int times)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(12);
        using var layer = new Int8Linear(randn(8, 16, generator: gen));
        var x = randn(2, 16, generator: gen);
        var expected = layer.forward(x);
        for (var i = 0; i < times; i++)
        {
            using var step = NewDisposeScope();
            Assert.True(layer.forward(x).eq(expected).all().item<bool>(), $"call {i}");
        }
    }
}
