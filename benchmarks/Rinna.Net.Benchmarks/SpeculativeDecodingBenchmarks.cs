using BenchmarkDotNet.Attributes;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;
using TorchSharp;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// Prompt lookup decoding (<c>PromptLookupNumTokens = 10</c>) against plain greedy decoding of the same prompts, whose
/// output it equals token for token, so the time ratio is the speed-up. <c>Quoting</c>: chat questions of the corpus
/// whose reference answer repeats part of the question; <c>Free</c>: continuations of prose paragraphs.
/// </summary>
/// <remarks>
/// The demo model's weights are trained, so its acceptance rates are real. rinna-4b's shape has random weights: its
/// text never quotes anything, so it measures what speculation costs where proposals fail (the fallback), and the
/// verification cost that turns an acceptance rate into a speed-up on a large model.
/// </remarks>
public class SpeculativeDecodingBenchmarks
{
    private const int NewTokens = 32;
    private const int PromptsPerText = 4;
    private const int LookupTokens = 10;
    private GptNeoXForCausalLM model = null!;
    private List<int[]> prompts = null!;

    [ParamsSource(nameof(Shapes))]
    public string Shape { get; set; } = ModelShapes.Demo;

    /// <summary>The demo model and rinna-4b's shape with 4 layers; <c>RINNA_BENCH_SHAPES</c> narrows them.</summary>
    public static IEnumerable<string> Shapes => BenchmarkSettings.Only(BenchmarkSettings.ShapesVariable, [ModelShapes.Demo, "rinna-4b-L4"]);

    [Params("Quoting", "Free")]
    public string Text { get; set; } = "Quoting";

    [GlobalSetup]
    public void Setup()
    {
        // The demo model as it ships; rinna-4b's shape as the model card loads it (int8 layers, float16 head).
        model = BenchmarkCheckpoints.Load(Shape, "Int8", Shape == ModelShapes.Demo ? new ModelLoadOptions() : null);
        prompts = SpeculationPrompts.Get(Text, AutoTokenizer.FromDirectory(ModelShapes.DemoDirectory()));
    }

    /// <summary>
    /// After the measurement, plain and prompt lookup operations in alternation, a few seconds apart, so that their
    /// ratio survives other processes' load, which moves BenchmarkDotNet's separate runs of each minutes apart; printed
    /// to the log as <c>paired speed-up</c> lines. The fallback keeps what it learned in the measurement.
    /// </summary>
    [GlobalCleanup(Target = nameof(PromptLookup))]
    public void CleanupPromptLookup()
    {
        var ratios = new List<double>();
        for (int pair = 0; pair < 5; pair++)
        {
            // Each goes first in alternate pairs, so a load change within a pair favours neither.
            double plain = 0, lookup = 0;
            foreach (bool isPlain in new[] { pair % 2 == 0, pair % 2 != 0 })
            {
                long started = System.Diagnostics.Stopwatch.GetTimestamp();
                if (isPlain) Plain(); else PromptLookup();
                double seconds = System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalSeconds;
                if (isPlain) plain = seconds; else lookup = seconds;
            }
            ratios.Add(plain / lookup);
        }
        Console.WriteLine($"paired speed-up {Shape} {Text}: median {ratios.Order().ElementAt(ratios.Count / 2):F3} of {string.Join(" ", ratios.Select(r => r.ToString("F3")))}");
        Cleanup();
    }

    [GlobalCleanup(Target = nameof(Plain))]
    public void Cleanup()
    {
        var runs = prompts.Select(RawPromptLookup).ToList();
        SpeculationReport.Record(Shape, Text, runs.Sum(r => r.NewTokens), runs.Sum(r => r.Speculation!.ModelCalls),
            runs.Sum(r => r.Speculation!.ProposedTokens), runs.Sum(r => r.Speculation!.AcceptedTokens));
        model.Dispose();
    }

    /// <summary>Plain greedy decoding of every prompt.</summary>
    [Benchmark(Baseline = true)]
    public int Plain() => prompts.Sum(p => Generate(p, null).NewTokens);

    /// <summary>The same with prompt lookup decoding (the same tokens, fewer model calls when proposals are accepted).</summary>
    [Benchmark]
    public int PromptLookup() => prompts.Sum(p => Generate(p, LookupTokens).NewTokens);

    /// <summary>
    /// Hugging Face's prompt lookup itself, without the fallback that pauses it (whose memory of earlier runs would
    /// hide the acceptance rate): what the model accepts of what prompt lookup proposes.
    /// </summary>
    private (int NewTokens, SpeculationStatistics? Speculation) RawPromptLookup(int[] prompt)
    {
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(prompt.Select(i => (long)i).ToArray(), [1, prompt.Length], torch.ScalarType.Int64);
        var config = model.GenerationConfig() with { DoSample = false, MaxNewTokens = NewTokens, PromptLookupNumTokens = LookupTokens };
        using var stepper = new ModelStepper(model, torch.ones_like(ids), prompt.Length + NewTokens);
        var output = SpeculativeDecoding.Run(ids, stepper, new PromptLookupCandidateGenerator(LookupTokens), config, null, null, null, CancellationToken.None);
        return ((int)output.Sequences.size(1) - prompt.Length, output.Speculation);
    }

    private (int NewTokens, SpeculationStatistics? Speculation) Generate(int[] prompt, int? lookup)
    {
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(prompt.Select(i => (long)i).ToArray(), [1, prompt.Length], torch.ScalarType.Int64);
        var config = model.GenerationConfig() with { DoSample = false, MaxNewTokens = NewTokens, PromptLookupNumTokens = lookup };
        var output = model.Generate(ids, config);
        return ((int)output.Sequences.size(1) - prompt.Length, output.Speculation);
    }
}

/// <summary>The prompts of <see cref="SpeculativeDecodingBenchmarks"/>, from tests/fixtures/corpus.</summary>
internal static class SpeculationPrompts
{
    public static List<int[]> Get(string text, PreTrainedTokenizer tokenizer)
    {
        var corpus = Path.Combine(TokenizerBenchmarkData.FixtureRoot, "corpus");
        if (text == "Quoting")
        {
            // Exchanges whose answer repeats at least three consecutive tokens of the question, as prompt lookup needs.
            var builder = RinnaChatPromptBuilder.ForModel(ModelShapes.DemoDirectory());
            return File.ReadAllText(Path.Combine(corpus, "chat", "dialogues.txt")).Split("\n\n", StringSplitOptions.RemoveEmptyEntries)
                .Select(block => block.Split('\n'))
                .Where(lines => lines.Length == 2 && lines[0].StartsWith("ユーザー: ", StringComparison.Ordinal) && lines[1].StartsWith("システム: ", StringComparison.Ordinal))
                .Select(lines => (Question: lines[0]["ユーザー: ".Length..], Answer: lines[1]["システム: ".Length..]))
                .Where(d => SharesTrigram(tokenizer.Encode(d.Question, false), tokenizer.Encode(d.Answer, false)))
                .Take(PromptsPerText)
                .Select(d => tokenizer.Encode(builder.BuildPrompt([new RinnaChatTurn(RinnaSpeaker.User, d.Question)]), false))
                .ToList();
        }
        // The first 48 tokens of long paragraphs, Japanese and English alternately.
        var ja = File.ReadLines(Directory.GetFiles(Path.Combine(corpus, "ja")).Order().First()).Where(l => l.Length > 200);
        var en = File.ReadLines(Directory.GetFiles(Path.Combine(corpus, "en")).Order().First()).Where(l => l.Length > 400);
        return ja.Take(PromptsPerText / 2).Concat(en.Take(PromptsPerText / 2)).Select(l => tokenizer.Encode(l, false)[..48]).ToList();
    }

    private const int PromptsPerText = 4;

    private static bool SharesTrigram(int[] question, int[] answer)
    {
        var grams = Enumerable.Range(0, Math.Max(0, question.Length - 2)).Select(i => (question[i], question[i + 1], question[i + 2])).ToHashSet();
        return Enumerable.Range(0, Math.Max(0, answer.Length - 2)).Any(i => grams.Contains((answer[i], answer[i + 1], answer[i + 2])));
    }
}

/// <summary>Acceptance of prompt lookup per case, gathered from the benchmark processes into the host's report.</summary>
public static class SpeculationReport
{
    // A fixed location: BenchmarkDotNet runs each case in its own process from its own build directory.
    public static string File => Path.Combine(Path.GetTempPath(), "rinna-net-bench-speculation.tsv");

    public static void Record(string shape, string text, int tokens, int calls, int proposed, int accepted) =>
        System.IO.File.AppendAllText(File, $"{shape}\t{text}\t{tokens}\t{calls}\t{proposed}\t{accepted}\n");
}
