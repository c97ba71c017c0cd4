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
/// Each measured request generates one token: its prefill and first step. Before each measured twentieth turn the
/// conversation is replayed from its first turn on a new scheduler, so the kept cache it finds is the one a real chat
/// would (grown turn by turn as the scheduler grows it), not one left by an earlier iteration.
/// </summary>
[InvocationCount(1)]
public class PrefixCacheBenchmarks
{
    private const int UserTokens = 40;
    private const int AnswerTokens = 32;
    private const int Turns = 20;
    private GptNeoXForCausalLM model = null!;
    private ContinuousBatchingScheduler? warm;
    private ContinuousBatchingScheduler cold = null!;
    private int[][] questions = null!;
    private int[] turnTwenty = null!;

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
        cold = new ContinuousBatchingScheduler(model);
        var random = new Random(11);
        questions = Enumerable.Range(0, Turns)
            .Select(_ => Enumerable.Range(0, UserTokens).Select(_ => random.Next(4, model.Config.VocabSize)).ToArray()).ToArray();
        ReplayNineteenTurns();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        PeakMemory.Record($"{nameof(PrefixCacheBenchmarks)}/{Shape}/{DType}");
        warm?.Dispose();
        cold.Dispose();
        model.Dispose();
    }

    /// <summary>
    /// A new scheduler with a prefix cache answers turns 1 to 19, each prompt the previous one, its answer and the next
    /// question, and leaves the twentieth turn's prompt.
    /// </summary>
    [IterationSetup(Target = nameof(TurnTwentyWithPrefixCache))]
    public void ReplayNineteenTurns()
    {
        warm?.Dispose();
        warm = new ContinuousBatchingScheduler(model, prefixCacheBytes: 1L << 30);
        int[] prompt = questions[0];
        for (int turn = 1; turn < Turns; turn++) prompt = [.. prompt, .. Ask(warm, prompt, AnswerTokens), .. questions[turn]];
        turnTwenty = prompt;
    }

    [Benchmark(Baseline = true)]
    public int TurnOne() => Ask(cold, questions[0], 1).Length;

    [Benchmark]
    public int TurnTwentyWithPrefixCache() => Ask(warm!, turnTwenty, 1).Length;

    [Benchmark]
    public int TurnTwentyWithoutPrefixCache() => Ask(cold, turnTwenty, 1).Length;

    private static int[] Ask(ContinuousBatchingScheduler scheduler, int[] prompt, int tokens) =>
        scheduler.GenerateAsync(prompt, new GenerationConfig { MaxNewTokens = tokens, MinNewTokens = tokens, EosTokenId = [3], PadTokenId = 0 })
            .GetAwaiter().GetResult().TokenIds.ToArray();
}
