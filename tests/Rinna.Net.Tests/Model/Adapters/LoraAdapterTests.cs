using System.Text.Json;
using Rinna.Net.Checkpoint;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Model.Adapters;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Adapters;

/// <summary>PEFT LoRA adapters against the float64 reference of the merged model (tests/fixtures/adapters).</summary>
public class LoraAdapterTests
{
    internal static readonly string AdapterDir = Fixtures.Path("adapters", "lora-tiny-rinna");
    private static readonly string BaseDir = Fixtures.Model("tiny-neox-rinna");

    private static IEnumerable<JsonElement> Expected() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(AdapterDir, "expected.json"))).RootElement.GetProperty("prompts").EnumerateArray().Select(p => p.Clone()).ToList();

    private static Task<GptNeoXForCausalLM> Load(ModelLoadOptions options) =>
        AutoModelForCausalLM.FromPretrainedAsync(BaseDir, options, TestContext.Current.CancellationToken);

    private static Tensor LastLogits(GptNeoXForCausalLM model, long[] ids)
    {
        using var input = tensor(ids, [1, ids.Length], ScalarType.Int64);
        using var output = model.Forward(input);
        return output.Logits[0, -1].clone();
    }

    private static long[] Greedy(GptNeoXForCausalLM model, long[] ids, int tokens) =>
        model.Generate(ids.Select(i => (int)i).ToArray() as IReadOnlyList<int>, model.GenerationConfig() with { MaxNewTokens = tokens })
            .Skip(ids.Length).Select(i => (long)i).ToArray();

    internal static void AssertMatchesFixture(GptNeoXForCausalLM model)
    {
        foreach (var prompt in Expected())
        {
            var ids = ReferenceModel.Ids(prompt.GetProperty("input_ids"));
            using var expected = tensor(prompt.GetProperty("last_logits").EnumerateArray().Select(e => e.GetDouble()).ToArray()).to(ScalarType.Float32);
            using var actual = LastLogits(model, ids);
            TensorAssert.Close(expected, actual, atol: 1e-3, rtol: 1e-4, $"{prompt.GetProperty("name")} last logits");
            using var diff = (expected - actual).abs().max();
            TestContext.Current.TestOutputHelper?.WriteLine($"{prompt.GetProperty("name")}: max |logit diff| {diff.item<float>():E2}");
            var tokens = ReferenceModel.Ids(prompt.GetProperty("greedy_new_tokens"));
            Assert.Equal(tokens, Greedy(model, ids, tokens.Length));
        }
    }

    [Fact]
    public async Task MergedAtLoadMatchesTheReference()
    {
        using var model = await Load(new ModelLoadOptions { Adapter = AdapterDir });
        AssertMatchesFixture(model);
    }

    [Fact]
    public async Task UnmergedMatchesTheReference()
    {
        using var model = await Load(new ModelLoadOptions { Adapter = AdapterDir, MergeAdapter = false });
        Assert.Equal("default", model.ActiveAdapter());
        AssertMatchesFixture(model);
    }

    [Fact]
    public async Task MergedAndUnmergedAgreeWithinFloat32()
    {
        using var merged = await Load(new ModelLoadOptions { Adapter = AdapterDir });
        using var unmerged = await Load(new ModelLoadOptions { Adapter = AdapterDir, MergeAdapter = false });
        foreach (var prompt in Expected())
        {
            var ids = ReferenceModel.Ids(prompt.GetProperty("input_ids"));
            using var a = LastLogits(merged, ids);
            using var b = LastLogits(unmerged, ids);
            TensorAssert.Close(a, b, atol: 1e-4, rtol: 1e-5, "merged vs unmerged");
        }
    }

    [Fact]
    public async Task AlternatingRequestsEachGetTheirOwnModel()
    {
        using var reference = new ReferenceModel("tiny-neox-rinna");
        using var model = await Load(new ModelLoadOptions { EnableAdapters = true });
        model.LoadAdapter("tuned", AdapterDir);
        Assert.Null(model.ActiveAdapter());
        var prompt = Expected().First(p => p.GetProperty("name").GetString() == "len17");
        var ids = ReferenceModel.Ids(prompt.GetProperty("input_ids"));
        var tuned = ReferenceModel.Ids(prompt.GetProperty("greedy_new_tokens"));
        var plain = ReferenceModel.Ids(reference.Greedy.First(g => g.GetProperty("prompt").GetString() == "len17").GetProperty("new_tokens")).Take(16).ToArray();
        Assert.NotEqual(tuned, plain);
        for (int round = 0; round < 2; round++)
        {
            model.SetAdapter("tuned");
            Assert.Equal(tuned, Greedy(model, ids, 16));
            model.SetAdapter(null);
            Assert.Equal(plain, Greedy(model, ids, 16));
        }

        // One batch mixing both: row 0 with the adapter, row 1 without, left-padded to the same width.
        var shortIds = ReferenceModel.Ids(Expected().First(p => p.GetProperty("name").GetString() == "len5").GetProperty("input_ids"));
        var shortTuned = ReferenceModel.Ids(Expected().First(p => p.GetProperty("name").GetString() == "len5").GetProperty("greedy_new_tokens"));
        long[] padded = [.. Enumerable.Repeat(0L, ids.Length - shortIds.Length), .. shortIds];
        using var batch = tensor(padded.Concat(ids).ToArray(), [2, ids.Length], ScalarType.Int64);
        using var mask = tensor(padded.Select((_, i) => i < ids.Length - shortIds.Length ? 0L : 1L).Concat(Enumerable.Repeat(1L, ids.Length)).ToArray(), [2, ids.Length], ScalarType.Int64);
        model.SetAdapters(["tuned", null]);
        var output = model.Generate(batch, model.GenerationConfig() with { MaxNewTokens = 16 }, mask);
        output.Sequences.Dispose();
        Assert.Equal(shortTuned, output.Rows[0].TokenIds.Select(t => (long)t));
        Assert.Equal(plain, output.Rows[1].TokenIds.Select(t => (long)t));

        model.DeleteAdapter("tuned");
        Assert.Empty(model.LoadedAdapters());
        Assert.Throws<ArgumentException>(() => model.SetAdapter("tuned"));
    }

    [Fact]
    public async Task AdaptersWorkWithFloat16StorageAndInt8Quantization()
    {
        foreach (var options in new[]
        {
            new ModelLoadOptions { Adapter = AdapterDir, TorchDtype = TorchDtype.Float16 },
            new ModelLoadOptions { Adapter = AdapterDir, LoadIn8Bit = true },
            // Unmerged around the float16 GEMV and int8 layers: their kernels run and the update is added after them.
            new ModelLoadOptions { Adapter = AdapterDir, MergeAdapter = false, TorchDtype = TorchDtype.Float16 },
            new ModelLoadOptions { Adapter = AdapterDir, MergeAdapter = false, LoadIn8Bit = true },
        })
        {
            using var model = await Load(options);
            using var plainModel = await Load(new ModelLoadOptions { TorchDtype = options.TorchDtype, LoadIn8Bit = options.LoadIn8Bit });
            foreach (var prompt in Expected())
            {
                var ids = ReferenceModel.Ids(prompt.GetProperty("input_ids"));
                using var expected = tensor(prompt.GetProperty("last_logits").EnumerateArray().Select(e => e.GetDouble()).ToArray()).to(ScalarType.Float32);
                using var actual = LastLogits(model, ids);
                using var withoutAdapter = LastLogits(plainModel, ids);
                double error = TensorAssert.RelativeL2(expected, actual);
                TestContext.Current.TestOutputHelper?.WriteLine($"{options.TorchDtype}/int8={options.LoadIn8Bit}/merged={options.MergeAdapter} {prompt.GetProperty("name")}: relative L2 {error:E2}");
                // The adapter moves the logits by 54-99 % (relative L2); what remains is the format's own rounding.
                Assert.True(error < 0.1, $"{options.TorchDtype}/int8={options.LoadIn8Bit} {prompt.GetProperty("name")}: relative L2 {error:F4}");
                Assert.True(TensorAssert.RelativeL2(expected, withoutAdapter) > 5 * error);
            }
        }
    }

    [Fact]
    public async Task OtherTargetsRanksAndRsLoraAgreeMergedAndUnmerged()
    {
        var dir = Directory.CreateTempSubdirectory("rinna-lora-").FullName;
        try
        {
            var generator = new TorchSharp.torch.Generator(5);
            var tensors = new Dictionary<string, Tensor>();
            foreach (var layer in new[] { 0, 1 })
            foreach (var (module, outF, inF) in new[] { ("mlp.dense_4h_to_h", 64L, 256L), ("attention.dense", 64L, 64L), ("mlp.dense_h_to_4h", 256L, 64L) })
            {
                tensors[$"base_model.model.gpt_neox.layers.{layer}.{module}.lora_A.weight"] = randn([4, inF], generator: generator) * 0.1;
                tensors[$"base_model.model.gpt_neox.layers.{layer}.{module}.lora_B.weight"] = randn([outF, 4], generator: generator) * 0.1;
            }
            SafetensorsWriter.Save(Path.Combine(dir, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            // A regex over the MLP and attention output layers, layer 1 only, rank-stabilised scaling.
            File.WriteAllText(Path.Combine(dir, "adapter_config.json"), """
                {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": true, "bias": "none", "fan_in_fan_out": false,
                 "target_modules": ["dense_4h_to_h", "dense"], "layers_to_transform": [1], "modules_to_save": null}
                """);
            using var merged = await Load(new ModelLoadOptions { Adapter = dir });
            using var unmerged = await Load(new ModelLoadOptions { Adapter = dir, MergeAdapter = false });
            using var plain = await Load(new ModelLoadOptions());
            var ids = new long[] { 587, 503, 105, 111, 747, 415, 165 };
            using var a = LastLogits(merged, ids);
            using var b = LastLogits(unmerged, ids);
            using var c = LastLogits(plain, ids);
            TensorAssert.Close(a, b, atol: 1e-4, rtol: 1e-5, "merged vs unmerged");
            Assert.True(TensorAssert.RelativeL2(c, a) > 1e-3, "the adapter changes the logits");

            // Expected by hand: W + (8 / √4) · B·A on layer 1's attention.dense and mlp.dense_4h_to_h only.
            using var checkpoint = SafetensorsFile.Open(Path.Combine(BaseDir, "model.safetensors"));
            var state = new Dictionary<string, Tensor>();
            foreach (var entry in checkpoint.Entries) state[entry.Name] = checkpoint.ReadTensor(entry.Name);
            foreach (var module in new[] { "attention.dense", "mlp.dense_4h_to_h" })
            {
                var key = $"gpt_neox.layers.1.{module}";
                state[key + ".weight"] = state[key + ".weight"] + 4.0 * tensors[$"base_model.model.{key}.lora_B.weight"].matmul(tensors[$"base_model.model.{key}.lora_A.weight"]);
            }
            var handDir = Directory.CreateTempSubdirectory("rinna-merged-").FullName;
            try
            {
                File.Copy(Path.Combine(BaseDir, "config.json"), Path.Combine(handDir, "config.json"));
                SafetensorsWriter.Save(Path.Combine(handDir, "model.safetensors"), state, new Dictionary<string, string> { ["format"] = "pt" });
                using var hand = await AutoModelForCausalLM.FromPretrainedAsync(handDir, cancellationToken: TestContext.Current.CancellationToken);
                using var d = LastLogits(hand, ids);
                TensorAssert.Close(d, a, atol: 1e-4, rtol: 1e-5, "merged vs hand-merged");
            }
            finally
            {
                Directory.Delete(handDir, recursive: true);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task RunTimeAdaptersNeedTheOption()
    {
        using var model = await Load(new ModelLoadOptions());
        Assert.Throws<InvalidOperationException>(() => model.LoadAdapter("x", AdapterDir));
    }
}
