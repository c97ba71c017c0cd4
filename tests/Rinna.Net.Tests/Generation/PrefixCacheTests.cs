using Rinna.Net.Generation;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>
/// KV reuse across requests: a request that repeats a finished request's tokens (a chat's next turn) prefills only the
/// new tokens, and its greedy answer equals a cold run's, token for token.
/// </summary>
public sealed class PrefixCacheTests
{
    [Theory]
    [InlineData("tiny-neox-rinna")]
    [InlineData("tiny-neox-pythia")]
    public async Task AConversationsNextTurnsPrefillOnlyTheirNewTokensAndAnswerAsColdRuns(string fixture)
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture));
        var config = new GenerationConfig { MaxNewTokens = 12, EosTokenId = null };
        await using var warm = new ContinuousBatchingScheduler(model, prefixCacheBytes: 64L << 20);
        await using var cold = new ContinuousBatchingScheduler(model);
        var random = new Random(3);
        var conversation = new List<int> { 2 };
        long prefilled = 0;
        for (int turn = 0; turn < 6; turn++)
        {
            // The user's turn, then the model's answer appended as the next prompt's history.
            conversation.AddRange(Enumerable.Range(0, 9).Select(_ => random.Next(5, 900)));
            var prompt = conversation.ToArray();
            var expected = model.Generate(prompt, config)[prompt.Length..];
            var coldAnswer = await cold.GenerateAsync(prompt, config);
            var warmAnswer = await warm.GenerateAsync(prompt, config);
            Assert.Equal(expected, coldAnswer.TokenIds);
            Assert.Equal(expected, warmAnswer.TokenIds);
            long newlyPrefilled = warm.PrefilledPromptTokens - prefilled;
            prefilled = warm.PrefilledPromptTokens;
            // From the second turn on, only this turn's 9 tokens (and the previous answer's last token, never fed) are prefilled.
            if (turn > 0) Assert.InRange(newlyPrefilled, 1, 10);
            conversation.AddRange(warmAnswer.TokenIds);
        }
        Assert.True(warm.ReusedPromptTokens > 100, $"{warm.ReusedPromptTokens} prompt tokens came from kept caches");
        Assert.Equal(0, cold.ReusedPromptTokens);
    }

    [Fact]
    public async Task AKeptCacheGrowsAheadOfTheConversationSoItsNextTurnsAreNotCopiedEachTime()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = new GenerationConfig { MaxNewTokens = 12, MinNewTokens = 12, EosTokenId = null };
        await using var scheduler = new ContinuousBatchingScheduler(model, prefixCacheBytes: 64L << 20);
        var conversation = Enumerable.Range(10, 100).ToList();
        var sizes = new List<long>();
        for (int turn = 0; turn < 6; turn++)
        {
            var prompt = conversation.ToArray();
            var answer = await scheduler.GenerateAsync(prompt, config);
            Assert.Equal(model.Generate(prompt, config)[prompt.Length..], answer.TokenIds);
            sizes.Add(scheduler.PrefixCacheSize);
            conversation.AddRange([.. answer.TokenIds, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        }
        // Each turn adds 21 tokens to a history of 100-200: sized to each request alone, the kept cache grew (and copied
        // the history) on every turn; grown ahead, turns fit in what an earlier one left.
        int grew = sizes.Zip(sizes.Skip(1)).Count(pair => pair.Second > pair.First);
        Assert.InRange(grew, 1, 2);
        Assert.True(scheduler.ReusedPromptTokens > 500, $"{scheduler.ReusedPromptTokens} prompt tokens came from kept caches");
    }

    [Fact]
    public async Task TwoConversationsEachReuseTheirOwnHistoryAndTheBoundEvictsTheOldest()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = new GenerationConfig { MaxNewTokens = 6, EosTokenId = null };
        int[] a = [.. Enumerable.Range(10, 30)], b = [.. Enumerable.Range(500, 30)];
        await using (var scheduler = new ContinuousBatchingScheduler(model, prefixCacheBytes: 64L << 20))
        {
            var answerA = await scheduler.GenerateAsync(a, config);
            var answerB = await scheduler.GenerateAsync(b, config);
            int[] nextA = [.. a, .. answerA.TokenIds, 7, 8, 9], nextB = [.. b, .. answerB.TokenIds, 7, 8, 9];
            Assert.Equal(model.Generate(nextB, config)[nextB.Length..], (await scheduler.GenerateAsync(nextB, config)).TokenIds);
            Assert.Equal(model.Generate(nextA, config)[nextA.Length..], (await scheduler.GenerateAsync(nextA, config)).TokenIds);
            // Each continuation found its own conversation: 30 prompt tokens and 5 fed answer tokens each.
            Assert.Equal(2 * 35, scheduler.ReusedPromptTokens);
        }

        // Room for one conversation's cache only: the older one is evicted, so only the newer is reused.
        await using (var small = new ContinuousBatchingScheduler(model, prefixCacheBytes: 1))
        {
            await small.GenerateAsync(a, config);
            Assert.Equal(0, small.PrefixCacheSize);   // larger than the bound: not kept at all
        }
        long oneCache;
        await using (var probe = new ContinuousBatchingScheduler(model, prefixCacheBytes: 64L << 20))
        {
            await probe.GenerateAsync(a, config);
            oneCache = probe.PrefixCacheSize;
        }
        await using (var bounded = new ContinuousBatchingScheduler(model, prefixCacheBytes: oneCache + oneCache / 2))
        {
            var answerA = await bounded.GenerateAsync(a, config);
            await bounded.GenerateAsync(b, config);
            Assert.InRange(bounded.PrefixCacheSize, 1, oneCache + oneCache / 2);
            await bounded.GenerateAsync([.. a, .. answerA.TokenIds, 7], config);
            Assert.Equal(0, bounded.ReusedPromptTokens);
        }
    }

    [Fact]
    public async Task ShortSharedPrefixesAreNotWorthTakingAnotherConversationsCache()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = new GenerationConfig { MaxNewTokens = 4, EosTokenId = null };
        await using var scheduler = new ContinuousBatchingScheduler(model, prefixCacheBytes: 64L << 20);
        await scheduler.GenerateAsync([.. Enumerable.Range(10, 40)], config);
        // The same first 10 tokens, then something else: below the minimum, so a cold prefill.
        int[] other = [.. Enumerable.Range(10, 10), .. Enumerable.Range(700, 20)];
        Assert.Equal(model.Generate(other, config)[other.Length..], (await scheduler.GenerateAsync(other, config)).TokenIds);
        Assert.Equal(0, scheduler.ReusedPromptTokens);
    }
}
