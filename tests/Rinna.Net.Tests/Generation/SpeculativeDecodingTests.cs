using Rinna.Net.Generation;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>Prompt lookup decoding: token for token equal to plain greedy decoding (HF's fixtures), and its proposals.</summary>
public class SpeculativeDecodingTests
{
    public static TheoryData<string, int> ModelsAndLookups => new(ReferenceModel.All
        .SelectMany(m => new[] { 1, 4, 10 }.Select(k => ((string)m[0], k))));

    [Theory]
    [MemberData(nameof(ModelsAndLookups))]
    public async Task PromptLookupEqualsGreedyOnEveryFixturePrompt(string name, int lookup)
    {
        using var reference = new ReferenceModel(name);
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(reference.Directory, cancellationToken: TestContext.Current.CancellationToken);
        var prompts = reference.Prompts.ToDictionary(p => p.GetProperty("name").GetString()!, p => ReferenceModel.Ids(p.GetProperty("input_ids")));
        var config = model.GenerationConfig() with { PromptLookupNumTokens = lookup };
        foreach (var greedy in reference.Greedy)
        {
            var prompt = prompts[greedy.GetProperty("prompt").GetString()!];
            var expected = ReferenceModel.Ids(greedy.GetProperty("new_tokens"));
            var counting = new CountingGenerator(new PromptLookupCandidateGenerator(lookup));
            var output = Run(model, prompt, config with { MaxNewTokens = expected.Length }, counting);
            Assert.Equal(expected, output);
            // The plain loop gives the same tokens, so the comparison above is with greedy decoding itself.
            Assert.Equal(expected, model.Generate(List(prompt), config with { PromptLookupNumTokens = null, MaxNewTokens = expected.Length })
                .Skip(prompt.Length).Select(i => (long)i));
        }
    }

    [Fact]
    public async Task ProposalsFromARepeatedPromptAreVerifiedAndStayExact()
    {
        using var reference = new ReferenceModel("tiny-neox-rinna");
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(reference.Directory, cancellationToken: TestContext.Current.CancellationToken);
        var greedy = reference.Greedy.First(g => g.GetProperty("prompt").GetString() == "len17");
        var prompt = ReferenceModel.Ids(reference.Prompts.First(p => p.GetProperty("name").GetString() == "len17").GetProperty("input_ids"));
        var continuation = ReferenceModel.Ids(greedy.GetProperty("new_tokens"));
        // The prompt holds its own greedy continuation once, so lookups after the repeated prompt find n-gram matches.
        long[] quoting = [.. prompt, .. continuation, .. prompt];
        var config = model.GenerationConfig() with { MaxNewTokens = 40 };
        var plain = model.Generate(List(quoting), config).Skip(quoting.Length).Select(i => (long)i).ToArray();
        var counting = new CountingGenerator(new PromptLookupCandidateGenerator(5));
        var speculative = Run(model, quoting, config with { PromptLookupNumTokens = 5 }, counting);
        Assert.Equal(plain, speculative);
        // Proposals were accepted and others rejected, so the cache was both kept and cut back between calls.
        Assert.True(counting.Accepted > 0 && counting.Accepted < counting.Proposed, $"accepted {counting.Accepted} of {counting.Proposed} proposals");
    }

    [Fact]
    public async Task RepetitionPenaltyRunsAtEveryVerifiedPosition()
    {
        using var reference = new ReferenceModel("tiny-neox-rinna");
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(reference.Directory, cancellationToken: TestContext.Current.CancellationToken);
        var fixture = reference.Json.GetProperty("greedy_repetition_penalty");
        var prompt = ReferenceModel.Ids(fixture.GetProperty("input_ids"));
        var expected = ReferenceModel.Ids(fixture.GetProperty("new_tokens"));
        var config = model.GenerationConfig() with { RepetitionPenalty = 1.1, MaxNewTokens = expected.Length, PromptLookupNumTokens = 3 };
        Assert.Equal(expected, Run(model, prompt, config, new PromptLookupCandidateGenerator(3)));
    }

    [Fact]
    public async Task SamplingWithPromptLookupIsReproducibleAndEndsAtEos()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), cancellationToken: TestContext.Current.CancellationToken);
        var config = model.GenerationConfig() with { DoSample = true, Seed = 7, MaxNewTokens = 24, PromptLookupNumTokens = 3, TopK = 3 };
        int[] prompt = [587, 503, 105, 111, 747, 587, 503];
        var first = model.Generate((IReadOnlyList<int>)prompt, config);
        Assert.Equal(first, model.Generate((IReadOnlyList<int>)prompt, config));
        Assert.Equal(prompt.Length + 24, first.Length);
        // Greedy with a hot end-of-sequence id (96 follows this prompt in beam search) stops right after it.
        var stopped = model.Generate(List([587, 503, 105, 111, 747, 415, 165, 877]), model.GenerationConfig() with { EosTokenId = [96], PromptLookupNumTokens = 2, MaxNewTokens = 10 });
        var plain = model.Generate(List([587, 503, 105, 111, 747, 415, 165, 877]), model.GenerationConfig() with { EosTokenId = [96], MaxNewTokens = 10 });
        Assert.Equal(plain, stopped);
    }

    [Theory]
    [InlineData(new long[] { 1, 2, 3, 4, 1, 2 }, 3, new long[] { 3, 4, 1 })]
    [InlineData(new long[] { 1, 2, 3, 4, 5, 2 }, 3, new long[] { 3, 4, 5 })]
    [InlineData(new long[] { 7, 8, 9 }, 3, new long[0])]
    [InlineData(new long[] { 5, 6, 5, 6 }, 10, new long[] { 5, 6 })]
    [InlineData(new long[] { 1, 2, 3, 1, 2 }, 1, new long[] { 3 })]
    public void LookupProposesWhatFollowedTheEarliestMatch(long[] sequence, int count, long[] expected) =>
        Assert.Equal(expected, new PromptLookupCandidateGenerator(count).GetCandidates(sequence, 100));

    [Fact]
    public void LookupRespectsTheTokenBudget() =>
        Assert.Equal([3L], new PromptLookupCandidateGenerator(4).GetCandidates([1, 2, 3, 4, 1, 2], 1));

    private static IReadOnlyList<int> List(long[] ids) => ids.Select(i => (int)i).ToArray();

    private static long[] Run(GptNeoXForCausalLM model, long[] prompt, GenerationConfig config, ICandidateGenerator generator)
    {
        using var ids = tensor(prompt, [1, prompt.Length], ScalarType.Int64);
        using var mask = ones_like(ids);
        using var stepper = new ModelStepper(model, mask, prompt.Length + config.ResolveMaxNewTokens(prompt.Length) + 16);
        var output = SpeculativeDecoding.Run(ids, stepper, generator, config, null, null, null, default);
        using var sequences = output.Sequences;
        return sequences[0].data<long>().ToArray().Skip(prompt.Length).ToArray();
    }

    private sealed class CountingGenerator(ICandidateGenerator inner) : ICandidateGenerator
    {
        public int Proposed, Accepted, Calls;

        public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount)
        {
            Calls++;
            return inner.GetCandidates(sequence, maxCount);
        }

        public Tensor? CandidateScores => inner.CandidateScores;

        public void Update(int proposed, int accepted)
        {
            Proposed += proposed;
            Accepted += accepted;
            inner.Update(proposed, accepted);
        }
    }
}
