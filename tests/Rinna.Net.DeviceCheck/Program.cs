// Checks Rinna.Net on one device against the Hugging Face fixtures and, given a checkpoint, times it there.
// CI has no GPU, so this is how the CUDA path gets verified on a machine that has one (run-on-pytorch-host.sh).
//   Rinna.Net.DeviceCheck --fixtures tests/fixtures/models [--device cuda:0] [--demo samples/models/rinna-demo]
//                         [--no-init] [--bench DIR --out DIR]
// --no-init leaves CUDA to come up the way it does in an application that never calls InitializeDeviceType.
// With --bench it only times the checkpoint. Prints one PASS/FAIL line per check and exits with 1 if any failed.
using System.Diagnostics;
using System.Text.Json;
using Rinna.Net;
using Rinna.Net.Checkpoint;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Model.DeviceMap;
using Rinna.Net.Model.Quantization;
using TorchSharp;
using static TorchSharp.torch;

string? Arg(string name) => Array.IndexOf(args, name) is var i && i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
var fixtures = Arg("--fixtures") ?? throw new ArgumentException("--fixtures DIR (the fixtures/models folder) is required");
var device = Arg("--device") ?? "cuda:0";
var bench = Arg("--bench");
var outDir = Arg("--out") ?? ".";
var demo = Arg("--demo");

if (device.StartsWith("cuda", StringComparison.Ordinal) && !args.Contains("--no-init"))
    torch.InitializeDeviceType(DeviceType.CUDA); // throws with TorchSharp's load trace when CUDA does not come up
// With --no-init nothing here touches CUDA before the first model load does.
void Describe() => Console.WriteLine($"TorchSharp {typeof(torch).Assembly.GetName().Version}, cuda available {torch.cuda.is_available()}, " +
    $"{(torch.cuda.is_available() ? torch.cuda.device_count() : 0)} GPU(s); libtorch loaded from {LoadedLibTorch()}");
if (!args.Contains("--no-init")) Describe();

int failures = 0;
void Check(string name, Func<string> run)
{
    try
    {
        Console.WriteLine($"PASS {name}: {run()}");
    }
    catch (Exception ex)
    {
        failures++;
        Console.WriteLine($"FAIL {name}: {ex.GetType().Name}: {ex.Message}");
    }
}

// Each way of loading a model, with the bound its last-position logits must keep from HF's float32 ones and the
// top-1/top-2 gap above which its greedy tokens must equal HF's (the same bounds as the CPU test suite).
var modes = new (string Name, Func<ModelLoadOptions> Options, double MaxRelativeL2, double ReliableGap)[]
{
    ("float32", () => new ModelLoadOptions { DeviceMap = device }, 1e-5, 0.0),
    ("float16", () => new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.Float16 }, 0.05, 1.0),
    ("bfloat16", () => new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.BFloat16 }, 0.05, 1.0),
    ("int8 (float16, as the model card loads it)", () => new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.Float16, LoadIn8Bit = true }, 0.04, 0.5),
    ("int8 threshold 0 (no outlier columns)", () => new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.Float16,
        QuantizationConfig = new QuantizationConfig { LoadIn8Bit = true, Int8Threshold = 0 } }, 0.04, 0.5),
};

if (bench is null) CheckFixtures();
else
{
    foreach (var (name, options) in new (string, ModelLoadOptions)[]
    {
        ("float16", new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.Float16 }),
        ("bfloat16", new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.BFloat16 }),
        ("int8", new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.Float16, LoadIn8Bit = true }),
        // Without the outlier search, which reads one value back from the GPU in every linear layer.
        ("int8-threshold0", new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.Float16,
            QuantizationConfig = new QuantizationConfig { LoadIn8Bit = true, Int8Threshold = 0 } }),
    })
        Check($"bench {name} on {device}", () => Timing.Run(bench, name, options, outDir));
}

if (args.Contains("--no-init")) Describe();
Console.WriteLine(failures == 0 ? "ALL CHECKS PASSED" : $"{failures} CHECK(S) FAILED");
return failures == 0 ? 0 : 1;

void CheckFixtures()
{
    foreach (var fixture in new[] { "tiny-neox-rinna", "tiny-neox-rinna-fp16", "tiny-neox-rinna-bin", "tiny-neox-pythia" })
    {
        using var reference = new Reference(Path.Combine(fixtures, fixture));
        foreach (var mode in modes)
            Check($"{fixture} {mode.Name} on {device}", () =>
            {
                using var model = AutoModelForCausalLM.FromPretrainedAsync(reference.Directory, mode.Options()).GetAwaiter().GetResult();
                var placed = model.HfDeviceMap.Where(p => p.Value != device).Select(p => $"{p.Key}={p.Value}").ToList();
                if (placed.Count > 0) throw new InvalidOperationException($"not on {device}: {string.Join(", ", placed)}");
                return reference.Compare(model, mode.MaxRelativeL2, mode.ReliableGap);
            });
    }

    Check($"tiny-neox-pythia split across {device} and cpu (float32 and int8)", () =>
    {
        using var reference = new Reference(Path.Combine(fixtures, "tiny-neox-pythia"));
        var map = DeviceMapSpec.FromAssignments(new Dictionary<string, string>
        {
            ["gpt_neox.embed_in"] = device, ["gpt_neox.layers.0"] = device, ["gpt_neox.layers.1"] = "cpu", ["gpt_neox.layers.2"] = device,
            ["gpt_neox.final_layer_norm"] = "cpu", ["embed_out"] = device,
        });
        using var split = AutoModelForCausalLM.FromPretrainedAsync(reference.Directory, new ModelLoadOptions { DeviceMap = map }).GetAwaiter().GetResult();
        var placement = string.Join(", ", split.HfDeviceMap.Select(p => $"{p.Key.Replace("gpt_neox.", "")}={p.Value}"));
        if (split.HfDeviceMap["gpt_neox.layers.1"] != "cpu" || split.HfDeviceMap["gpt_neox.layers.2"] != device)
            throw new InvalidOperationException($"placement not as asked: {placement}");
        var exact = reference.Compare(split, 1e-5, 0.0);
        using var int8 = AutoModelForCausalLM.FromPretrainedAsync(reference.Directory,
            new ModelLoadOptions { DeviceMap = map, LoadIn8Bit = true }).GetAwaiter().GetResult();
        return $"{placement}; float32 {exact}; int8 {reference.Compare(int8, 0.04, 0.5)}";
    });

    Check("device_map auto puts every module on the GPU", () =>
    {
        using var model = AutoModelForCausalLM.FromPretrainedAsync(Path.Combine(fixtures, "tiny-neox-rinna"),
            new ModelLoadOptions { DeviceMap = "auto", TorchDtype = TorchDtype.Float16, LoadIn8Bit = true }).GetAwaiter().GetResult();
        var devices = model.HfDeviceMap.Values.Distinct().ToList();
        if (torch.cuda.is_available() && !devices.SequenceEqual(["cuda:0"])) throw new InvalidOperationException($"placed on {string.Join(", ", devices)}");
        return string.Join(", ", devices);
    });

    Check($"sampling on {device} (temperature 0.7, repetition penalty 1.1, seed 42) repeats itself", () =>
    {
        using var model = AutoModelForCausalLM.FromPretrainedAsync(Path.Combine(fixtures, "tiny-neox-rinna"),
            new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.Float16, LoadIn8Bit = true }).GetAwaiter().GetResult();
        var config = new GenerationConfig { DoSample = true, MaxNewTokens = 32, Temperature = 0.7, RepetitionPenalty = 1.1, Seed = 42 };
        int[] Sample()
        {
            using var ids = tensor(new long[] { 2, 587, 503, 105 }).unsqueeze(0);
            var output = model.Generate(ids, config);
            output.Sequences.Dispose();
            return [.. output.Rows[0].TokenIds];
        }
        var (first, second) = (Sample(), Sample());
        if (first.Length == 0 || !first.SequenceEqual(second)) throw new InvalidOperationException($"[{string.Join(",", first)}] vs [{string.Join(",", second)}]");
        return $"{first.Length} tokens, both runs [{string.Join(",", first.Take(12))}...]";
    });

    if (demo is not null)
        Check($"the QuickStart's lines on {device}: tokenizer, int8 + float16, sampled chat answer from {Path.GetFileName(demo)}", () =>
        {
            var tokenizer = AutoTokenizer.FromPretrainedAsync(demo).GetAwaiter().GetResult();
            using var model = AutoModelForCausalLM.FromPretrainedAsync(demo,
                new ModelLoadOptions { DeviceMap = device, TorchDtype = TorchDtype.Float16, LoadIn8Bit = true }).GetAwaiter().GetResult();
            var prompt = RinnaChatPromptBuilder.ForModel(demo, RinnaChatFormat.Bilingual).BuildPrompt([new RinnaChatTurn(RinnaSpeaker.User, "What is your favourite book?")]);
            using var ids = tensor(tokenizer.Encode(prompt, addSpecialTokens: false).Select(i => (long)i).ToArray()).unsqueeze(0);
            var output = model.Generate(ids, model.GenerationConfig() with
            {
                DoSample = true, MaxNewTokens = 48, Temperature = 0.7, RepetitionPenalty = 1.1, Seed = 42,
                EosTokenId = tokenizer.EosTokenId is int eos ? [eos] : null, PadTokenId = tokenizer.PadTokenId,
            }, tokenizer: tokenizer);
            output.Sequences.Dispose();
            var text = output.Rows[0].Text ?? tokenizer.Decode(output.Rows[0].TokenIds, skipSpecialTokens: true);
            if (string.IsNullOrWhiteSpace(text)) throw new InvalidOperationException("empty answer");
            return $"\"{text.ReplaceLineEndings(" ")}\"";
        });

}

static string LoadedLibTorch() => File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
    .Where(f => f.Length >= 6 && (f[5].EndsWith("/libtorch_cuda.so", StringComparison.Ordinal) || f[5].EndsWith("/libtorch_cpu.so", StringComparison.Ordinal)))
    .Select(f => f[5]).Distinct().DefaultIfEmpty("(not mapped yet)").Aggregate((a, b) => $"{a}, {b}");

/// <summary>A model fixture: HF's float32 last-position logits and greedy continuations for its prompts.</summary>
internal sealed class Reference : IDisposable
{
    private readonly SafetensorsFile expected;
    private readonly JsonElement json;

    public Reference(string directory)
    {
        Directory = directory;
        json = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "expected.json"))).RootElement.Clone();
        expected = SafetensorsFile.Open(Path.Combine(directory, "expected.safetensors"));
    }

    public string Directory { get; }

    /// <summary>Worst relative L2 error of the last-position logits over all prompts, and how many greedy tokens matched.</summary>
    public string Compare(GptNeoXForCausalLM model, double maxRelativeL2, double reliableGap)
    {
        double worst = 0;
        foreach (var prompt in json.GetProperty("prompts").EnumerateArray())
        {
            using var scope = NewDisposeScope();
            var ids = tensor(Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
            using var output = model.Forward(ids, lastPositionOnly: true);
            var actual = output.Logits[0, 0].cpu().to(ScalarType.Float64);
            var wanted = expected.ReadTensor(prompt.GetProperty("last_logits_tensor").GetString()!).to(ScalarType.Float64);
            worst = Math.Max(worst, (actual - wanted).norm().item<double>() / wanted.norm().item<double>());
            if (prompt.GetProperty("top1_top2_gap").GetDouble() > reliableGap
                && actual.argmax().item<long>() != prompt.GetProperty("argmax").GetInt64())
                throw new InvalidOperationException($"prompt {prompt.GetProperty("name")}: argmax {actual.argmax().item<long>()}, HF {prompt.GetProperty("argmax")}");
        }
        if (worst > maxRelativeL2) throw new InvalidOperationException($"logits relative L2 {worst:E2} > {maxRelativeL2:E0}");

        int matched = 0;
        foreach (var greedy in json.GetProperty("greedy").EnumerateArray())
        {
            var name = greedy.GetProperty("prompt").GetString();
            var prompt = json.GetProperty("prompts").EnumerateArray().Single(p => p.GetProperty("name").GetString() == name);
            var gaps = greedy.GetProperty("gaps").EnumerateArray().Select(g => g.GetDouble()).ToArray();
            int reliable = Array.FindIndex(gaps, g => g <= reliableGap) is var i && i >= 0 ? i : gaps.Length;
            var wanted = Ids(greedy.GetProperty("new_tokens"))[..reliable];
            using var ids = tensor(Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
            var output = model.Generate(ids, new GenerationConfig { MaxNewTokens = Math.Max(reliable, 1) });
            output.Sequences.Dispose();
            var got = output.Rows[0].TokenIds.Take(reliable).Select(t => (long)t).ToArray();
            if (!got.SequenceEqual(wanted))
                throw new InvalidOperationException($"greedy after {name}: [{string.Join(",", got)}], HF [{string.Join(",", wanted)}]");
            matched += reliable;
        }
        return $"logits relative L2 {worst:E2} (bound {maxRelativeL2:E0}), {matched} greedy tokens equal to HF's";
    }

    private static long[] Ids(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt64()).ToArray();

    public void Dispose() => expected.Dispose();
}

/// <summary>Load time, prefill-512 and decode tokens/s, the way the CPU benchmarks measure them (greedy, argmax included).</summary>
internal static class Timing
{
    private const int Context = 64, DecodeSteps = 64, PrefillLength = 512, Repetitions = 3;

    public static string Run(string checkpoint, string name, ModelLoadOptions options, string outDir)
    {
        var clock = Stopwatch.StartNew();
        using var model = AutoModelForCausalLM.FromPretrainedAsync(checkpoint, options).GetAwaiter().GetResult();
        double loadSeconds = clock.Elapsed.TotalSeconds;
        // The same ids as hf_reference.py, so the logits written below can be compared with transformers' on this machine.
        Tensor Prompt(int n) => tensor(Enumerable.Range(0, n).Select(i => 4 + i * 7919L % (model.Config.VocabSize - 4)).ToArray()).unsqueeze(0);
        using var context = Prompt(Context);
        using var prefill = Prompt(PrefillLength);

        using (var output = model.Forward(context, lastPositionOnly: true))
        {
            var logits = output.Logits[0, 0].cpu().data<float>().ToArray();
            File.WriteAllBytes(Path.Combine(outDir, $"ours-{name}.f32"), System.Runtime.InteropServices.MemoryMarshal.AsBytes(logits.AsSpan()).ToArray());
        }

        var prefillSeconds = Median(() =>
        {
            using var output = model.Forward(prefill, lastPositionOnly: true);
            output.Logits.cpu().Dispose(); // waits for the GPU
        });
        var decodeSeconds = Median(() =>
        {
            using var cache = new KeyValueCache(model.Config.NumHiddenLayers, Context + DecodeSteps);
            long token;
            using (var first = model.Forward(context, pastKeyValues: cache, useCache: true, lastPositionOnly: true))
                token = first.Logits[0, 0].argmax().item<long>();
            var steps = Stopwatch.StartNew();
            for (int i = 0; i < DecodeSteps; i++)
            {
                using var scope = NewDisposeScope();
                using var output = model.Forward(tensor(new[] { token }).unsqueeze(0), pastKeyValues: cache, useCache: true, lastPositionOnly: true);
                token = output.Logits[0, 0].argmax().item<long>();
            }
            return steps.Elapsed.TotalSeconds;
        });
        return $"load {loadSeconds:F1} s, prefill-{PrefillLength} {PrefillLength / prefillSeconds:F0} tok/s, decode {DecodeSteps / decodeSeconds:F1} tok/s " +
            $"({decodeSeconds / DecodeSteps * 1000:F2} ms/token; medians of {Repetitions} after a warm-up)";
    }

    private static double Median(Action run) => Median(() => { var c = Stopwatch.StartNew(); run(); return c.Elapsed.TotalSeconds; });

    private static double Median(Func<double> run)
    {
        run();
        var times = Enumerable.Range(0, Repetitions).Select(_ => run()).Order().ToArray();
        return times[Repetitions / 2];
    }
}
