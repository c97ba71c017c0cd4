using BenchmarkDotNet.Attributes;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using TorchSharp;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// Time to first token of a chat's first and twentieth turn through the continuous batching scheduler (issue goal: turn
/// 20 within 1.2× of turn 1 with the prefix cache), against turn 20 without it (the whole grown history prefilled). A
/// turn adds <see cref="UserTokens"/> tokens of question to the conversation so far, whose answers were
/// <see cref="AnswerTokens"/> greedy tokens each; the history is token ids, so random weights do as well as trained ones.
/// Each measured request generates one token: its prefill and first step.
/// </summary>
[InvocationCount(1)]
public class PrefixCacheBenchmarks
{
    private const int UserTokens = 40;
    private const int AnswerTokens = 32;
    private const int Turns = 20;
    private GptNeoXForCausalLM model = null!;
    private ContinuousBatchingScheduler warm = null!;
    private ContinuousBatchingScheduler cold = null!;
    private int[][] prompts = null!;

    [ParamsSource(nameof(Shapes))]
    public string Shape { get; set; } = "rinna-4b-L4";

    [ParamsSource(nameof(DTypes))]
    public string DType { get; set; } = "Int8";

    public static IEnumerable<string> Shapes => BenchmarkSettings.Only(BenchmarkSettings.ShapesVariable, ["rinna-4b-L4"]);

    public static IEnumerable<string> DTypes => BenchmarkSettings.Only(BenchmarkSettings.DTypesVariable, ["Int8"]);

    [GlobalSetup]
    public void Setup()
    {
        model = BenchmarkCheckpoints.Load(Shape, DType);
        warm = new ContinuousBatchingScheduler(model, prefixCacheBytes: 1L << 30);
        cold = new ContinuousBatchingScheduler(model);
        // The conversation's prompts, each the previous prompt, its greedy answer and a new question (answers computed once).
        var random = new Random(11);
        int[] Question() => Enumerable.Range(0, UserTokens).Select(_ => random.Next(4, model.Config.VocabSize)).ToArray();
        prompts = new int[Turns][];
        prompts[0] = Question();
        for (int turn = 1; turn < Turns; turn++)
        {
            var answer = Ask(warm, prompts[turn - 1], AnswerTokens);
            prompts[turn] = [.. prompts[turn - 1], .. answer, .. Question()];
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        PeakMemory.Record($"{nameof(PrefixCacheBenchmarks)}/{Shape}/{DType}");
        warm.Dispose();
        cold.Dispose();
        model.Dispose();
    }

    /// <summary>Turn 19 answered again, so that its cache (the history turn 20 extends) is the one kept.</summary>
    [IterationSetup(Target = nameof(TurnTwentyWithPrefixCache))]
    public void KeepTurnNineteen() => Ask(warm, prompts[Turns - 2], AnswerTokens);

    [Benchmark(Baseline = true)]
    public int TurnOne() => Ask(cold, prompts[0], 1).Length;

    [Benchmark]
    public int TurnTwentyWithPrefixCache() => Ask(warm, prompts[Turns - 1], 1).Length;

    [Benchmark]
    public int TurnTwentyWithoutPrefixCache() => Ask(cold, prompts[Turns - 1], 1).Length;

    private static int[] Ask(ContinuousBatchingScheduler scheduler, int[] prompt, int tokens) =>
        scheduler.GenerateAsync(prompt, new GenerationConfig { MaxNewTokens = tokens, MinNewTokens = tokens, EosTokenId = [3], PadTokenId = 0 })
            .GetAwaiter().GetResult().TokenIds.ToArray();
}
