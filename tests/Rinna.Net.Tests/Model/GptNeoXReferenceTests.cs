using Rinna.Net.Model.Layers;
using System.Text.Json;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model;

/// <summary>The model against Hugging Face's own GPT-NeoX outputs (fixtures README: tolerances for float32 and bfloat16).</summary>
public class GptNeoXReferenceTests
{
    private const double LogitsAtol = 1e-3, LogitsRtol = 1e-4, HiddenAtol = 1e-4;

    private static async Task<GptNeoXForCausalLM> Load(string name, TorchDtype dtype = TorchDtype.Float32) =>
        await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(name), new ModelLoadOptions { TorchDtype = dtype });

    [Theory]
    [MemberData(nameof(ReferenceModel.All), MemberType = typeof(ReferenceModel))]
    public async Task LastPositionLogitsMatchFloat32Reference(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await Load(fixture);
        foreach (var prompt in reference.Prompts)
        {
            using var scope = NewDisposeScope();
            var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
            using var output = model.Forward(ids);
            var last = output.Logits[0, -1];
            var name = prompt.GetProperty("name").GetString();
            TensorAssert.Close(reference.Tensor(prompt.GetProperty("last_logits_tensor").GetString()!), last, LogitsAtol, LogitsRtol, $"{fixture} {name}");
            Assert.Equal(prompt.GetProperty("argmax").GetInt64(), last.argmax().item<long>());
        }
    }

    [Theory]
    [MemberData(nameof(ReferenceModel.All), MemberType = typeof(ReferenceModel))]
    public async Task AllPositionLogitsMatch(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await Load(fixture);
        var prompt = reference.Prompts.Single(p => p.GetProperty("name").GetString() == "len17");
        using var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
        using var output = model.Forward(ids);
        TensorAssert.Close(reference.Tensor("prompts.len17.logits"), output.Logits[0], LogitsAtol, LogitsRtol, fixture);
    }

    [Theory]
    [MemberData(nameof(ReferenceModel.Full), MemberType = typeof(ReferenceModel))]
    public async Task HiddenStatesAfterEveryLayerMatch(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await Load(fixture);
        var prompt = reference.Prompts.Single(p => p.GetProperty("name").GetString() == "len17");
        using var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
        using var output = model.Forward(ids, outputHiddenStates: true);
        Assert.Equal(model.Config.NumHiddenLayers + 1, output.HiddenStates!.Count);
        for (int i = 0; i <= model.Config.NumHiddenLayers; i++)
            TensorAssert.Close(reference.Tensor($"prompts.len17.hidden_states.{i}"), output.HiddenStates[i][0], HiddenAtol, 0, $"{fixture} hidden_states.{i}");
    }

    [Theory]
    [MemberData(nameof(ReferenceModel.Full), MemberType = typeof(ReferenceModel))]
    public void RotaryTablesMatch(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        var config = GptNeoXConfig.FromFile(Path.Combine(reference.Directory, "config.json"));
        var rotary = new RotaryEmbedding(config);
        using var positions = arange(17, ScalarType.Int64).unsqueeze(0);
        var (cos, sin) = rotary.Tables(positions, 17);
        TensorAssert.Close(reference.Tensor("prompts.len17.rotary_cos"), cos[0, 0], 1e-6, 0, "cos");
        TensorAssert.Close(reference.Tensor("prompts.len17.rotary_sin"), sin[0, 0], 1e-6, 0, "sin");
    }

    [Theory]
    [MemberData(nameof(ReferenceModel.All), MemberType = typeof(ReferenceModel))]
    public async Task GreedyContinuationsWithCacheAreTokenForTokenEqual(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await Load(fixture);
        foreach (var greedy in reference.Greedy)
        {
            var promptName = greedy.GetProperty("prompt").GetString();
            var prompt = ReferenceModel.Ids(reference.Prompts.Single(p => p.GetProperty("name").GetString() == promptName).GetProperty("input_ids"));
            var expected = ReferenceModel.Ids(greedy.GetProperty("new_tokens"));
            using var ids = tensor(prompt, ScalarType.Int64).unsqueeze(0);
            var result = model.Generate(ids, new GenerationConfig { MaxNewTokens = expected.Length, PadTokenId = 0 });
            using var sequences = result.Sequences;
            Assert.Equal(expected, result.Rows[0].TokenIds.Select(t => (long)t));
            Assert.Equal(prompt.Concat(expected), sequences[0].data<long>().ToArray());
            Assert.Equal(FinishReason.Length, result.Rows[0].FinishReason);
        }
    }

    [Theory]
    [MemberData(nameof(ReferenceModel.Full), MemberType = typeof(ReferenceModel))]
    public async Task StepLogitsWithCacheMatch(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await Load(fixture);
        var greedy = reference.Greedy.Single(g => g.GetProperty("prompt").GetString() == "len17");
        var prompt = ReferenceModel.Ids(reference.Prompts.Single(p => p.GetProperty("name").GetString() == "len17").GetProperty("input_ids"));
        var tokens = ReferenceModel.Ids(greedy.GetProperty("new_tokens"));
        using var expected = reference.Tensor("greedy.len17.step_logits");
        using var cache = new KeyValueCache(model.Config.NumHiddenLayers);
        var next = tensor(prompt, ScalarType.Int64).unsqueeze(0);
        for (int step = 0; step < tokens.Length; step++)
        {
            using var scope = NewDisposeScope();
            using var output = model.Forward(next, pastKeyValues: cache, useCache: true, lastPositionOnly: true);
            TensorAssert.Close(expected[step], output.Logits[0, 0], LogitsAtol, LogitsRtol, $"step {step}");
            next = tensor(new[] { tokens[step] }, ScalarType.Int64).unsqueeze(0).MoveToOuterDisposeScope();
        }
        Assert.Equal(prompt.Length + tokens.Length - 1, cache.Length);
    }

    [Theory]
    [MemberData(nameof(ReferenceModel.All), MemberType = typeof(ReferenceModel))]
    public async Task LeftPaddedBatchMatchesReference(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await Load(fixture);
        var batch = reference.Json.GetProperty("batch");
        using var ids = reference.Tensor("batch.input_ids");
        using var mask = reference.Tensor("batch.attention_mask");
        using var positions = reference.Tensor("batch.position_ids");
        using (var first = model.Forward(ids, mask, positions, lastPositionOnly: true))
            TensorAssert.Close(reference.Tensor("batch.first_step_logits"), first.Logits.select(1, 0), LogitsAtol, LogitsRtol, "first step");

        var result = model.Generate(ids, new GenerationConfig { MaxNewTokens = batch.GetProperty("max_new_tokens").GetInt32(), PadTokenId = 0 }, mask);
        result.Sequences.Dispose();
        var expected = batch.GetProperty("new_tokens").EnumerateArray().Select(ReferenceModel.Ids).ToArray();
        Assert.Equal(expected, result.Rows.Select(r => r.TokenIds.Select(t => (long)t).ToArray()).ToArray());
    }

    [Theory]
    [MemberData(nameof(ReferenceModel.Full), MemberType = typeof(ReferenceModel))]
    public async Task BatchedStepLogitsMatch(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await Load(fixture);
        using var stepLogits = reference.Tensor("batch.step_logits");
        var tokens = reference.Json.GetProperty("batch").GetProperty("new_tokens").EnumerateArray().Select(ReferenceModel.Ids).ToArray();
        var stepPositions = reference.Json.GetProperty("batch").GetProperty("step_position_ids").EnumerateArray().Select(ReferenceModel.Ids).ToArray();
        using var cache = new KeyValueCache(model.Config.NumHiddenLayers);
        var next = reference.Tensor("batch.input_ids");
        var mask = reference.Tensor("batch.attention_mask");
        var positions = reference.Tensor("batch.position_ids");
        for (int step = 0; step < tokens[0].Length; step++)
        {
            using var output = model.Forward(next, mask, positions, cache, useCache: true, lastPositionOnly: true);
            TensorAssert.Close(stepLogits[step], output.Logits.select(1, 0), LogitsAtol, LogitsRtol, $"step {step}");
            next = tensor(tokens.Select(t => t[step]).ToArray(), ScalarType.Int64).unsqueeze(1);
            mask = cat([mask, ones(tokens.Length, 1, ScalarType.Int64)], 1);
            if (step + 1 < tokens[0].Length) positions = tensor(stepPositions[step + 1], ScalarType.Int64).unsqueeze(1);
        }
    }

    [Theory]
    [MemberData(nameof(ReferenceModel.Full), MemberType = typeof(ReferenceModel))]
    public async Task BFloat16StaysWithinTheObservedHalfPrecisionError(string fixture)
    {
        using var model = await Load(fixture, TorchDtype.BFloat16);
        Assert.Equal(ScalarType.BFloat16, model.ComputeDType);
        Assert.All(model.named_parameters(), p => Assert.Equal(ScalarType.BFloat16, p.parameter.dtype));
        await AssertHalfPrecisionMatchesReference(fixture, model);
    }

    /// <summary>
    /// float16 on the CPU keeps every matrix in float16 (decoded by the managed GEMVs or libtorch's float16 GEMV, prompts of
    /// more than <see cref="Kernels.Cpu.MultiRowGemv.MaxRows"/> tokens converted block by block to bfloat16) and the rest in bfloat16;
    /// the prompts and greedy runs below go through both kernels.
    /// </summary>
    [Theory]
    [MemberData(nameof(ReferenceModel.Full), MemberType = typeof(ReferenceModel))]
    public async Task Float16OnCpuKeepsFloat16MatricesAndStaysWithinTheHalfPrecisionError(string fixture)
    {
        using var model = await Load(fixture, TorchDtype.Float16);
        Assert.Equal(ScalarType.BFloat16, model.ComputeDType);
        foreach (var (name, parameter) in model.named_parameters())
        {
            bool matrix = name.EndsWith(".weight", StringComparison.Ordinal) && (name.StartsWith("embed_out", StringComparison.Ordinal)
                || name.Contains(".attention.", StringComparison.Ordinal) || name.Contains(".mlp.", StringComparison.Ordinal));
            Assert.True((matrix ? ScalarType.Float16 : ScalarType.BFloat16) == parameter.dtype, $"{name} is {parameter.dtype}");
        }
        await AssertHalfPrecisionMatchesReference(fixture, model);
    }

    private static async Task AssertHalfPrecisionMatchesReference(string fixture, GptNeoXForCausalLM model)
    {
        using var reference = new ReferenceModel(fixture);
        using var exact = await Load(fixture);
        double worstFloat32 = 0, worstBFloat16 = 0;
        foreach (var prompt in reference.Prompts)
        {
            using var scope = NewDisposeScope();
            var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
            var expected = reference.Tensor(prompt.GetProperty("last_logits_tensor").GetString()!);
            using var half = model.Forward(ids, lastPositionOnly: true);
            using var full = exact.Forward(ids, lastPositionOnly: true);
            worstBFloat16 = Math.Max(worstBFloat16, TensorAssert.RelativeL2(expected, half.Logits[0, 0]));
            worstFloat32 = Math.Max(worstFloat32, TensorAssert.RelativeL2(expected, full.Logits[0, 0]));
            Assert.Equal(prompt.GetProperty("argmax").GetInt64(), half.Logits[0, 0].argmax().item<long>());
        }
        Assert.True(worstBFloat16 <= 0.05, $"bfloat16 relative L2 {worstBFloat16}");
        // float32 must be far tighter than bfloat16: the difference between the two runs is the dtype, nothing else.
        Assert.True(worstFloat32 < worstBFloat16 / 100, $"float32 {worstFloat32} vs bfloat16 {worstBFloat16}");

        foreach (var greedy in reference.Greedy)
        {
            var promptName = greedy.GetProperty("prompt").GetString();
            var prompt = ReferenceModel.Ids(reference.Prompts.Single(p => p.GetProperty("name").GetString() == promptName).GetProperty("input_ids"));
            var expected = ReferenceModel.Ids(greedy.GetProperty("new_tokens"));
            var gaps = greedy.GetProperty("gaps").EnumerateArray().Select(g => g.GetDouble()).ToArray();
            int reliable = Array.FindIndex(gaps, g => g < 1.0);
            if (reliable < 0) reliable = expected.Length;
            using var ids = tensor(prompt, ScalarType.Int64).unsqueeze(0);
            var result = model.Generate(ids, new GenerationConfig { MaxNewTokens = expected.Length });
            result.Sequences.Dispose();
            Assert.Equal(expected[..reliable], result.Rows[0].TokenIds.Select(t => (long)t).ToArray()[..reliable]);
        }
    }
}
