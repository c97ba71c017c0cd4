using Rinna.Net.Generation;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>Assisted decoding: a second fixture model with the same vocabulary proposes, the target's greedy output stays exact.</summary>
public class AssistedCandidateGeneratorTests
{
    private static Task<GptNeoXForCausalLM> Load(string name) =>
        AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(name), cancellationToken: TestContext.Current.CancellationToken);

    [Theory]
    [InlineData("tiny-neox-rinna", "tiny-neox-rinna-fp16")]
    [InlineData("tiny-neox-rinna", "tiny-neox-pythia")]
    [InlineData("tiny-neox-pythia", "tiny-neox-rinna")]
    [InlineData("tiny-neox-rinna-fp16", "tiny-neox-rinna-bin")]
    public async Task GreedyWithAnAssistantEqualsPlainGreedy(string target, string assistant)
    {
        using var reference = new ReferenceModel(target);
        using var model = await Load(target);
        using var helper = await Load(assistant);
        var prompts = reference.Prompts.ToDictionary(p => p.GetProperty("name").GetString()!, p => ReferenceModel.Ids(p.GetProperty("input_ids")));
        foreach (var greedy in reference.Greedy)
        {
            var prompt = prompts[greedy.GetProperty("prompt").GetString()!];
            var expected = ReferenceModel.Ids(greedy.GetProperty("new_tokens"));
            var output = model.Generate(prompt.Select(i => (int)i).ToArray() as IReadOnlyList<int>,
                model.GenerationConfig() with { MaxNewTokens = expected.Length, NumAssistantTokensSchedule = AssistantTokensSchedule.HeuristicTransient },
                assistantModel: helper);
            Assert.Equal(expected, output.Skip(prompt.Length).Select(i => (long)i));
        }
    }

    [Fact]
    public async Task TheHeuristicGrowsWithAcceptedRoundsAndShrinksWithRejectedOnes()
    {
        using var reference = new ReferenceModel("tiny-neox-rinna");
        using var model = await Load("tiny-neox-rinna");
        using var near = await Load("tiny-neox-rinna-fp16");
        using var far = await Load("tiny-neox-pythia");
        var prompt = ReferenceModel.Ids(reference.Prompts.First(p => p.GetProperty("name").GetString() == "len17").GetProperty("input_ids"));

        double Run(GptNeoXForCausalLM assistant, out int accepted, out int proposed)
        {
            using var ids = tensor(prompt, [1, prompt.Length], ScalarType.Int64);
            using var mask = ones_like(ids);
            using var stepper = new ModelStepper(model, mask, prompt.Length + 64);
            var config = model.GenerationConfig() with { MaxNewTokens = 32, NumAssistantTokensSchedule = AssistantTokensSchedule.HeuristicTransient };
            using var generator = new AssistedCandidateGenerator(assistant, mask, prompt.Length + 64, 1024, config);
            var counting = new Counting(generator);
            SpeculativeDecoding.Run(ids, stepper, counting, config, null, null, null, default).Sequences.Dispose();
            (accepted, proposed) = (counting.Accepted, counting.Proposed);
            return generator.NumAssistantTokens;
        }

        // float16-rounded weights agree with the target on (nearly) every token, so rounds are fully accepted and grow.
        Assert.True(Run(near, out var nearAccepted, out var nearProposed) > 5, $"near: {nearAccepted}/{nearProposed}");
        Assert.True(nearAccepted >= 0.9 * nearProposed, $"near: {nearAccepted}/{nearProposed}");
        // A different model is mostly rejected, so the count falls to 1.
        Assert.Equal(1, Run(far, out var farAccepted, out var farProposed));
        Assert.True(farAccepted < farProposed / 2, $"far: {farAccepted}/{farProposed}");
    }

    [Fact]
    public async Task SpeculativeSamplingDrawsFromTheTargetsDistribution()
    {
        using var model = await Load("tiny-neox-rinna");
        using var assistant = await Load("tiny-neox-pythia");
        long[] prompt = [587, 503, 105, 111, 747];
        var config = model.GenerationConfig() with
        {
            DoSample = true, TopK = 4, Temperature = 2.0, MaxNewTokens = 3, NumAssistantTokens = 2,
            NumAssistantTokensSchedule = AssistantTokensSchedule.Constant,
        };
        // The target's own distribution of the first new token, after the same warpers.
        using var ids = tensor(prompt, [1, prompt.Length], ScalarType.Int64);
        using var forward = model.Forward(ids);
        using var p = LogitsProcessorList.Create(config, prompt.Length).Process(ids, forward.Logits[.., -1, ..]).softmax(-1)[0];
        using var assistantForward = assistant.Forward(ids);
        using var q = LogitsProcessorList.Create(config, prompt.Length).Process(ids, assistantForward.Logits[.., -1, ..]).softmax(-1)[0];
        // The assistant's proposals follow a clearly different distribution, so keeping them unchecked would show.
        using var distance = (p - q).abs().sum();
        Assert.True(distance.item<float>() > 0.5, $"total variation × 2 = {distance.item<float>():F3}");
        const int runs = 300;
        var counts = new Dictionary<long, int>();
        for (int seed = 0; seed < runs; seed++)
        {
            var output = model.Generate(prompt.Select(i => (int)i).ToArray() as IReadOnlyList<int>, config with { Seed = seed }, assistantModel: assistant);
            Assert.Equal(prompt.Length + 3, output.Length);
            counts[output[prompt.Length]] = counts.GetValueOrDefault(output[prompt.Length]) + 1;
        }
        foreach (var (token, count) in counts)
        {
            double expected = p[token].item<float>();
            // Four binomial standard deviations are at most 0.116 for 300 draws.
            Assert.True(Math.Abs((double)count / runs - expected) < 0.116, $"token {token}: {count}/{runs} drawn, p = {expected:F3}");
        }
        Assert.True(counts.Count > 1, "the warped distribution has several tokens");
    }

    [Fact]
    public async Task AssistedDecodingRejectsBeamsAndBatches()
    {
        using var model = await Load("tiny-neox-rinna");
        using var helper = await Load("tiny-neox-rinna-fp16");
        using var ids = tensor(new long[] { 5, 6, 7, 8 }, [2, 2], ScalarType.Int64);
        Assert.Throws<ArgumentException>(() => model.Generate(ids, model.GenerationConfig() with { NumBeams = 2, MaxNewTokens = 2 }, assistantModel: helper));
        Assert.Throws<ArgumentException>(() => model.Generate(ids, model.GenerationConfig() with { MaxNewTokens = 2 }, assistantModel: helper));
    }

    private sealed class Counting(ICandidateGenerator inner) : ICandidateGenerator
    {
        public int Proposed, Accepted;

        public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount) => inner.GetCandidates(sequence, maxCount);

        public Tensor? CandidateScores => inner.CandidateScores;

        public void Update(int proposed, int accepted)
        {
            Proposed += proposed;
            Accepted += accepted;
            inner.Update(proposed, accepted);
        }
    }
}
