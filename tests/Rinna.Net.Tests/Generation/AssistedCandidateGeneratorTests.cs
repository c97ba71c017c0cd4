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
            using var generator = new AssistedCandidateGenerator(assistant, mask, prompt.Length + 64, 1024, 5, AssistantTokensSchedule.HeuristicTransient);
            var counting = new Counting(generator);
            var config = model.GenerationConfig() with { MaxNewTokens = 32 };
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

        public void Update(int proposed, int accepted)
        {
            Proposed += proposed;
            Accepted += accepted;
            inner.Update(proposed, accepted);
        }
    }
}
