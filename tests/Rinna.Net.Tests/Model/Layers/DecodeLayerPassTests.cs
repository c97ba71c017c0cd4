using System.Runtime.Intrinsics;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Layers;

/// <summary>
/// Decode steps of float16 and LLM.int8() models with each layer as one managed pass (<see cref="DecodeLayerPass"/>,
/// the default) against the same model running the layer's separate operations, and against HF's float32 step logits.
/// </summary>
public class DecodeLayerPassTests
{
    public DecodeLayerPassTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<string, string> FixturesAndVariants() =>
        new(from fixture in new[] { "tiny-neox-rinna", "tiny-neox-pythia" }
            from variant in Enum.GetNames<Float16GemvVariant>()
            select (fixture, variant));

    [Theory]
    [MemberData(nameof(FixturesAndVariants))]
    public async Task DecodeStepsMatchTheSeparateOperationsAndTheReference(string fixture, string variant)
    {
        Require(variant);
        using var reference = new ReferenceModel(fixture);
        using var fused = await Load(fixture);
        using var separate = await Load(fixture);
        foreach (var pass in fused.DecodePasses) pass.Variant = Enum.Parse<Float16GemvVariant>(variant);
        separate.UsesDecodePass = false;
        Assert.Equal(fused.Config.NumHiddenLayers, fused.DecodePasses.Count);

        var greedy = reference.Greedy.Single(g => g.GetProperty("prompt").GetString() == "len17");
        var prompt = ReferenceModel.Ids(reference.Prompts.Single(p => p.GetProperty("name").GetString() == "len17").GetProperty("input_ids"));
        var tokens = ReferenceModel.Ids(greedy.GetProperty("new_tokens"));
        using var expected = reference.Tensor("greedy.len17.step_logits");
        using var fusedCache = new KeyValueCache(fused.Config.NumHiddenLayers);
        using var separateCache = new KeyValueCache(fused.Config.NumHiddenLayers);
        var next = tensor(prompt, ScalarType.Int64).unsqueeze(0);
        double worstApart = 0, worstFromReference = 0;
        for (int step = 0; step < tokens.Length; step++)
        {
            using var scope = NewDisposeScope();
            using var a = fused.Forward(next, pastKeyValues: fusedCache, useCache: true, lastPositionOnly: true);
            using var b = separate.Forward(next, pastKeyValues: separateCache, useCache: true, lastPositionOnly: true);
            worstApart = Math.Max(worstApart, TensorAssert.RelativeL2(b.Logits[0, 0], a.Logits[0, 0]));
            worstFromReference = Math.Max(worstFromReference, TensorAssert.RelativeL2(expected[step], a.Logits[0, 0]));
            next = tensor(new[] { tokens[step] }, ScalarType.Int64).unsqueeze(0).MoveToOuterDisposeScope();
        }

        // The first step is the prompt (separate operations in both); every later one ran the pass in every layer.
        Assert.All(fused.DecodePasses, pass => Assert.Equal(tokens.Length - 1, pass.Steps));
        Assert.All(separate.DecodePasses, pass => Assert.Equal(0, pass.Steps));
        // With the separate operations' GEMV width only LayerNorm's statistics round differently, which moves a bfloat16
        // value by its last bit now and then; another width sums each row in another order.
        double bound = variant == Float16Gemv.DefaultVariant?.ToString() ? 1e-3 : 2e-2;
        Assert.True(worstApart < bound, $"relative L2 between the pass and the separate operations {worstApart}");
        Assert.True(worstFromReference <= 0.05, $"relative L2 from HF's float32 step logits {worstFromReference}");
        for (int layer = 0; layer < fused.Config.NumHiddenLayers; layer++)
        {
            var (keys, values) = fusedCache.Storage(layer, 1, 1, 1, ScalarType.Float32, ScalarType.BFloat16, CPU, fusedCache.Length, fusedCache.Length);
            var (expectedKeys, expectedValues) = separateCache.Storage(layer, 1, 1, 1, ScalarType.Float32, ScalarType.BFloat16, CPU, separateCache.Length, separateCache.Length);
            Assert.True(keys.narrow(2, 0, fusedCache.Length).allclose(expectedKeys.narrow(2, 0, fusedCache.Length), rtol: 0.02, atol: 0.02), $"layer {layer} keys");
            Assert.True(values.to(ScalarType.Float32).narrow(2, 0, fusedCache.Length)
                .allclose(expectedValues.to(ScalarType.Float32).narrow(2, 0, fusedCache.Length), rtol: 0.02, atol: 0.02), $"layer {layer} values");
        }
    }

    public static TheoryData<string, string> Int8FixturesAndVariants() =>
        new(from fixture in new[] { "tiny-neox-rinna", "tiny-neox-pythia" }
            from variant in new[] { nameof(Int8GemvVariant.Avx512), nameof(Int8GemvVariant.Avx2), nameof(Int8GemvVariant.Vector128) }
            select (fixture, variant));

    /// <summary>
    /// int8 with pure int8 products (threshold 0, so no step declines for an outlier): the integer sums are exact in any
    /// width and the quantization and rescale are the separate path's own, so only LayerNorm's statistics may differ.
    /// </summary>
    [Theory]
    [MemberData(nameof(Int8FixturesAndVariants))]
    public async Task Int8DecodeStepsMatchTheSeparateOperations(string fixture, string variant)
    {
        RequireInt8(variant);
        var options = new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float16, QuantizationConfig = new QuantizationConfig { LoadIn8Bit = true, Int8Threshold = 0 },
        };
        using var fused = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture), options);
        using var separate = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture), options);
        foreach (var pass in fused.DecodePasses) pass.Int8Variant = Enum.Parse<Int8GemvVariant>(variant);
        separate.UsesDecodePass = false;
        Assert.Equal(fused.Config.NumHiddenLayers, fused.DecodePasses.Count);

        const int steps = 24;
        double worstApart = WorstApart(fused, separate, steps);
        Assert.All(fused.DecodePasses, pass => Assert.Equal(steps - 1, pass.Steps));
        Assert.True(worstApart < 1e-3, $"relative L2 between the pass and the separate operations {worstApart}");
    }

    public static TheoryData<string, bool> Bnb4VariantsAndDoubleQuant() =>
        new(from variant in new[] { nameof(Bnb4BitGemvVariant.Avx2Int16), nameof(Bnb4BitGemvVariant.AvxVnniInt16), nameof(Bnb4BitGemvVariant.Vector128Int16) }
            from doubleQuant in new[] { false, true }
            select (variant, doubleQuant));

    /// <summary>
    /// NF4 computing in bfloat16 (the integer variants): each block's integer sum is exact and the activations are quantized
    /// as the separate product quantizes them, so only the order of the block sums (another variant) and LayerNorm's
    /// statistics may differ. tiny-neox-rinna's rows are 64 and 256 long; the AVX-512 variant takes multiples of 128 and
    /// is held to its separate product by Bnb4BitGemvTests.
    /// </summary>
    [Theory]
    [MemberData(nameof(Bnb4VariantsAndDoubleQuant))]
    public async Task Bnb4DecodeStepsMatchTheSeparateOperations(string variant, bool doubleQuant)
    {
        var chosen = Enum.Parse<Bnb4BitGemvVariant>(variant);
        RequirePass();
        if (!Bnb4BitGemv.IsAccelerated(chosen)) Assert.Skip($"this CPU does not accelerate the 4-bit {variant} variant.");
        var options = Bnb4Options(doubleQuant);
        using var fused = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), options);
        using var separate = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), options);
        foreach (var pass in fused.DecodePasses) pass.Bnb4Variant = chosen;
        separate.UsesDecodePass = false;
        Assert.Equal(fused.Config.NumHiddenLayers, fused.DecodePasses.Count);

        const int steps = 24;
        double worstApart = WorstApart(fused, separate, steps);
        Assert.All(fused.DecodePasses, pass => Assert.Equal(steps - 1, pass.Steps));
        Assert.All(separate.DecodePasses, pass => Assert.Equal(0, pass.Steps));
        double bound = chosen == Bnb4BitGemv.Int16VariantFor(64, Bnb4BitQuantization.Nf4Code) ? 1e-3 : 1e-2;
        Assert.True(worstApart < bound, $"relative L2 between the pass and the separate operations {worstApart}");
    }

    /// <summary>Rows no integer variant takes (tiny-neox-pythia's 96 columns): the layers keep their separate operations.</summary>
    [Fact]
    public async Task Bnb4LayersWithRowsNoIntegerVariantTakesRunTheSeparateOperations()
    {
        RequirePass();
        using var fused = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-pythia"), Bnb4Options(doubleQuant: false));
        using var separate = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-pythia"), Bnb4Options(doubleQuant: false));
        separate.UsesDecodePass = false;
        var (a, b) = StepAfterPrompt(fused, separate);
        using var fusedLogits = a;
        using var separateLogits = b;

        Assert.Equal(fused.Config.NumHiddenLayers, fused.DecodePasses.Count);
        Assert.All(fused.DecodePasses, pass => Assert.Equal(0, pass.Steps));
        Assert.True(a.allclose(b, rtol: 0, atol: 0), "the declined steps must equal the separate operations");
    }

    /// <summary>
    /// Greedy decode steps (the separate model's choices) after a 6-token prompt on both models, each on its own cache:
    /// the largest relative L2 between their step logits.
    /// </summary>
    private static double WorstApart(GptNeoXForCausalLM fused, GptNeoXForCausalLM separate, int steps)
    {
        using var fusedCache = new KeyValueCache(fused.Config.NumHiddenLayers);
        using var separateCache = new KeyValueCache(fused.Config.NumHiddenLayers);
        var next = tensor(new long[] { 5, 17, 3, 99, 42, 7 }, ScalarType.Int64).unsqueeze(0);
        double worstApart = 0;
        for (int step = 0; step < steps; step++)
        {
            using var scope = NewDisposeScope();
            using var a = fused.Forward(next, pastKeyValues: fusedCache, useCache: true, lastPositionOnly: true);
            using var b = separate.Forward(next, pastKeyValues: separateCache, useCache: true, lastPositionOnly: true);
            worstApart = Math.Max(worstApart, TensorAssert.RelativeL2(b.Logits[0, 0], a.Logits[0, 0]));
            next = b.Logits[0, 0].argmax().reshape(1, 1).MoveToOuterDisposeScope();
        }
        return worstApart;
    }

    /// <summary>Both models' logits for one decode step after a 4-token prompt, each on its own cache.</summary>
    private static (Tensor Fused, Tensor Separate) StepAfterPrompt(GptNeoXForCausalLM fused, GptNeoXForCausalLM separate)
    {
        using var fusedCache = new KeyValueCache(fused.Config.NumHiddenLayers);
        using var separateCache = new KeyValueCache(fused.Config.NumHiddenLayers);
        using var prompt = tensor(new long[] { 5, 6, 7, 8 }, ScalarType.Int64).unsqueeze(0);
        fused.Forward(prompt, pastKeyValues: fusedCache, useCache: true).Dispose();
        separate.Forward(prompt, pastKeyValues: separateCache, useCache: true).Dispose();
        using var next = tensor(new long[] { 9 }, ScalarType.Int64).unsqueeze(0);
        using var a = fused.Forward(next, pastKeyValues: fusedCache, useCache: true, lastPositionOnly: true);
        using var b = separate.Forward(next, pastKeyValues: separateCache, useCache: true, lastPositionOnly: true);
        return (a.Logits.clone(), b.Logits.clone());
    }

    private static ModelLoadOptions Bnb4Options(bool doubleQuant) => new()
    {
        TorchDtype = TorchDtype.Float16,
        QuantizationConfig = new QuantizationConfig
        {
            LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4, Bnb4BitComputeDtype = TorchDtype.BFloat16,
            Bnb4BitUseDoubleQuant = doubleQuant,
        },
    };

    [Fact]
    public async Task Int8ActivationsAboveTheOutlierThresholdTakeTheSeparateOperations()
    {
        RequireInt8(Int8Gemv.DefaultVariant?.ToString() ?? nameof(Int8GemvVariant.Vector128));
        // A threshold below every LayerNorm output's largest magnitude: each product needs the outlier decomposition.
        var options = new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float16, QuantizationConfig = new QuantizationConfig { LoadIn8Bit = true, Int8Threshold = 0.01 },
        };
        using var fused = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-pythia"), options);
        using var separate = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-pythia"), options);
        foreach (var pass in fused.DecodePasses) pass.Int8Variant = Int8Gemv.DefaultVariant;
        separate.UsesDecodePass = false;
        var (a, b) = StepAfterPrompt(fused, separate);
        using var fusedLogits = a;
        using var separateLogits = b;

        Assert.All(fused.DecodePasses, pass => Assert.Equal(0, pass.Steps));
        Assert.True(a.allclose(b, rtol: 0, atol: 0), "the declined steps must equal the separate operations");
    }

    [Fact]
    public async Task ALoneRowOfAContinuousBatchStepRunsThePass()
    {
        Require(Float16Gemv.DefaultVariant?.ToString() ?? nameof(Float16GemvVariant.Vector256));
        using var model = await Load("tiny-neox-rinna");
        using var rowCache = new KeyValueCache(model.Config.NumHiddenLayers);
        using var sequenceCache = new KeyValueCache(model.Config.NumHiddenLayers);
        using var prompt = tensor(new long[] { 5, 6, 7, 8 }, ScalarType.Int64).unsqueeze(0);
        model.Forward(prompt, pastKeyValues: rowCache, useCache: true).Dispose();
        model.Forward(prompt, pastKeyValues: sequenceCache, useCache: true).Dispose();

        using var next = tensor(new long[] { 9 }, ScalarType.Int64).unsqueeze(0);
        using var rows = model.ForwardRows(next, [rowCache], [null], tensor(new long[] { 4 }, ScalarType.Int64).unsqueeze(1));
        Assert.All(model.DecodePasses, pass => Assert.Equal(1, pass.Steps));
        using var alone = model.Forward(next, pastKeyValues: sequenceCache, useCache: true, lastPositionOnly: true);
        Assert.All(model.DecodePasses, pass => Assert.Equal(2, pass.Steps));
        Assert.True(rows.allclose(alone.Logits[0], rtol: 0, atol: 0), "a lone row must equal the sequence's own step");
    }

    [Fact]
    public async Task GenerationsOnTheirOwnCachesMayStepTheSameLayersFromTwoThreads()
    {
        Require(Float16Gemv.DefaultVariant?.ToString() ?? nameof(Float16GemvVariant.Vector256));
        using var model = await Load("tiny-neox-pythia");
        long[][] prompts = [[5, 6, 7, 8], [40, 41, 42]];
        static float[][] Decode(GptNeoXForCausalLM model, long[] prompt)
        {
            using var cache = new KeyValueCache(model.Config.NumHiddenLayers);
            var next = tensor(prompt, ScalarType.Int64).unsqueeze(0);
            var logits = new List<float[]>();
            for (int step = 0; step < 16; step++)
            {
                using var scope = NewDisposeScope();
                using var output = model.Forward(next, pastKeyValues: cache, useCache: true, lastPositionOnly: true);
                logits.Add(output.Logits[0, 0].data<float>().ToArray());
                next = output.Logits[0, 0].argmax().reshape(1, 1).MoveToOuterDisposeScope();
            }
            return logits.ToArray();
        }
        var alone = prompts.Select(p => Decode(model, p)).ToArray();
        // Both threads start on a fresh model, whose layers have not planned their passes: their first steps race to.
        using var fresh = await Load("tiny-neox-pythia");
        var together = await Task.WhenAll(prompts.Select(p => Task.Run(() => Decode(fresh, p))));

        Assert.Equal(alone, together);
        Assert.All(fresh.DecodePasses, pass => Assert.Equal(2 * 15, pass.Steps));
    }

    [Fact]
    public async Task ActivationsBeyondTheGemvsRangeTakeTheSeparateOperations()
    {
        Require(Float16Gemv.DefaultVariant?.ToString() ?? nameof(Float16GemvVariant.Vector256));
        using var fused = await Load("tiny-neox-pythia");
        using var separate = await Load("tiny-neox-pythia");
        separate.UsesDecodePass = false;
        // A LayerNorm gain of 2⁷⁰ puts the first layer's normalized row beyond the scaled GEMV's 2⁶⁴.
        foreach (var model in new[] { fused, separate })
            using (no_grad())
                model.get_parameter("gpt_neox.layers.0.input_layernorm.weight")!.fill_(Math.Pow(2, 70));
        using var fusedCache = new KeyValueCache(fused.Config.NumHiddenLayers);
        using var separateCache = new KeyValueCache(fused.Config.NumHiddenLayers);
        var prompt = tensor(new long[] { 5, 6, 7, 8 }, ScalarType.Int64).unsqueeze(0);
        fused.Forward(prompt, pastKeyValues: fusedCache, useCache: true).Dispose();
        separate.Forward(prompt, pastKeyValues: separateCache, useCache: true).Dispose();

        using var next = tensor(new long[] { 9 }, ScalarType.Int64).unsqueeze(0);
        using var a = fused.Forward(next, pastKeyValues: fusedCache, useCache: true, lastPositionOnly: true);
        using var b = separate.Forward(next, pastKeyValues: separateCache, useCache: true, lastPositionOnly: true);

        Assert.Equal(0, fused.DecodePasses[0].Steps);
        Assert.True(a.Logits.allclose(b.Logits, rtol: 0, atol: 0, equal_nan: true), "the declined step must equal the separate operations");
    }

    private static async Task<GptNeoXForCausalLM> Load(string name) =>
        await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(name), new ModelLoadOptions { TorchDtype = TorchDtype.Float16 });

    /// <summary>Skips, saying why, where this machine cannot run the pass with the int8 <paramref name="variant"/>.</summary>
    private static void RequireInt8(string variant)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime was not found; the pass runs on its threads.");
        if (!Vector256.IsHardwareAccelerated) Assert.Skip("the attention stage needs 256-bit vectors, as DecodeAttention does.");
        if (!Int8Gemv.IsAccelerated(Enum.Parse<Int8GemvVariant>(variant))) Assert.Skip($"this CPU does not accelerate the int8 {variant} variant.");
    }

    /// <summary>Skips, saying why, where this machine cannot run the pass at all.</summary>
    private static void RequirePass()
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime was not found; the pass runs on its threads.");
        if (!Vector256.IsHardwareAccelerated) Assert.Skip("the attention stage needs 256-bit vectors, as DecodeAttention does.");
    }

    /// <summary>Skips, saying why, where this machine cannot run the pass with <paramref name="variant"/>.</summary>
    private static void Require(string variant)
    {
        if (!LibTorchOpenMp.IsAvailable) Assert.Skip("libtorch's OpenMP runtime was not found; the pass runs on its threads.");
        if (!Vector256.IsHardwareAccelerated) Assert.Skip("the attention stage needs 256-bit vectors, as DecodeAttention does.");
        if (!Float16Gemv.IsAccelerated(Enum.Parse<Float16GemvVariant>(variant))) Assert.Skip($"this CPU does not accelerate the {variant} variant.");
    }
}
