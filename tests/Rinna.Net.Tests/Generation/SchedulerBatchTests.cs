using Rinna.Net.Generation;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>
/// A batch of prompts served by the continuous batching scheduler as one group (<c>GenerateBatchAsync</c>, and
/// <c>Generate</c> on a model a scheduler serves) gives what transformers' batched <c>generate()</c> gives: the
/// reference's left-padded greedy batch, and for sampling the tokens that the same seed draws in <c>Generate</c>'s own
/// loop, rows finishing at different times.
/// </summary>
public sealed class SchedulerBatchTests
{
    private static long[] Values(Tensor t) => t.contiguous().data<long>().ToArray();

    private static long[][] NewTokens(GenerationOutput output) => output.Rows.Select(r => r.TokenIds.Select(t => (long)t).ToArray()).ToArray();

    [Theory]
    [MemberData(nameof(ReferenceModel.All), MemberType = typeof(ReferenceModel))]
    public async Task LeftPaddedGreedyBatchMatchesTheReference(string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture));
        var batch = reference.Json.GetProperty("batch");
        var expected = batch.GetProperty("new_tokens").EnumerateArray().Select(ReferenceModel.Ids).ToArray();
        using var ids = reference.Tensor("batch.input_ids");
        using var mask = reference.Tensor("batch.attention_mask");
        var config = new GenerationConfig { MaxNewTokens = batch.GetProperty("max_new_tokens").GetInt32(), PadTokenId = 0 };

        await using var scheduler = new ContinuousBatchingScheduler(model);
        var output = await scheduler.GenerateBatchAsync(ids, config, mask, cancellationToken: TestContext.Current.CancellationToken);
        using (output.Sequences)
        {
            Assert.Equal(expected, NewTokens(output));
            // HF's sequences: the padded prompt batch, then the new tokens.
            Assert.Equal([ids.shape[0], ids.shape[1] + expected[0].Length], output.Sequences.shape);
            Assert.Equal(Values(ids), Values(output.Sequences.narrow(1, 0, ids.shape[1])));
        }
        Assert.Equal(expected.Length, scheduler.LargestBatch);
    }

    /// <summary>
    /// Sampling with a seed: the group draws from one generator over all its rows, as <c>Generate</c> does, so the same
    /// seed gives the same batch; end-of-sequence ids common enough that rows finish at different steps (a finished row
    /// leaves the decode steps but still takes its part of each draw), beside another request in the batch.
    /// </summary>
    [Theory]
    [InlineData("tiny-neox-rinna")]
    [InlineData("tiny-neox-pythia")]
    public async Task SeededBatchSamplingDrawsWhatGenerateDraws(string fixture)
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture));
        long[][] prompts = [[2, 17, 301, 45], [5, 900], [2, 44, 81, 12, 7, 660, 13, 99, 512, 3], [7, 8, 9]];
        int width = prompts.Max(p => p.Length);
        var padded = prompts.SelectMany(p => Enumerable.Repeat(0L, width - p.Length).Concat(p)).ToArray();
        var maskValues = prompts.SelectMany(p => Enumerable.Repeat(0L, width - p.Length).Concat(Enumerable.Repeat(1L, p.Length))).ToArray();
        using var ids = tensor(padded, [prompts.Length, width], ScalarType.Int64);
        using var mask = tensor(maskValues, [prompts.Length, width], ScalarType.Int64);
        var config = new GenerationConfig
        {
            MaxNewTokens = 40, DoSample = true, Seed = 11, Temperature = 1.3, TopK = 200, RepetitionPenalty = 1.2, PadTokenId = 0,
            EosTokenId = [.. Enumerable.Range(100, 40)], NumReturnSequences = 2,
        };
        var alone = model.Generate(ids, config, mask);
        using var expected = alone.Sequences;
        var lengths = alone.Rows.Select(r => r.TokenIds.Count).Distinct().Count();
        Assert.True(lengths >= 3, $"the rows should finish at different steps; they have {lengths} lengths");

        await using var scheduler = new ContinuousBatchingScheduler(model);
        var other = scheduler.GenerateAsync([3, 4, 5], new GenerationConfig { MaxNewTokens = 60, EosTokenId = null },
            cancellationToken: TestContext.Current.CancellationToken);
        var output = await scheduler.GenerateBatchAsync(ids, config, mask, cancellationToken: TestContext.Current.CancellationToken);
        using (output.Sequences)
        {
            Assert.Equal(NewTokens(alone), NewTokens(output));
            Assert.Equal(alone.Rows.Select(r => r.FinishReason), output.Rows.Select(r => r.FinishReason));
            Assert.Equal(expected.shape, output.Sequences.shape);
            Assert.Equal(Values(expected), Values(output.Sequences));
        }
        await other;
        // Rows that ended with their first token never decode; the others decoded beside the other request.
        Assert.True(scheduler.LargestBatch >= 5, $"at most {scheduler.LargestBatch} rows were decoded together");
    }

    /// <summary>
    /// On a model a scheduler serves (as a host's does), <c>Generate</c> with a batch runs as a group in the scheduler's
    /// loop, beside a request already running there, and returns what it returns alone; after the scheduler is disposed it
    /// runs on its own again.
    /// </summary>
    [Fact]
    public async Task GenerateOnAServedModelJoinsTheRunningBatch()
    {
        using var reference = new ReferenceModel("tiny-neox-rinna");
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var batch = reference.Json.GetProperty("batch");
        var expected = batch.GetProperty("new_tokens").EnumerateArray().Select(ReferenceModel.Ids).ToArray();
        using var ids = reference.Tensor("batch.input_ids");
        using var mask = reference.Tensor("batch.attention_mask");
        var config = new GenerationConfig { MaxNewTokens = batch.GetProperty("max_new_tokens").GetInt32(), PadTokenId = 0 };

        var scheduler = new ContinuousBatchingScheduler(model, servesGenerate: true);
        var joined = new TaskCompletionSource<GenerationOutput>(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = scheduler.GenerateAsync([2, 17, 301, 45], new GenerationConfig { MaxNewTokens = 40, EosTokenId = null }, onStep: tracker =>
        {
            // Started from the running request's second step, on a thread of its own, so that it joins a batch in progress.
            if (tracker.Steps == 2)
                new Thread(() =>
                {
                    try
                    {
                        joined.SetResult(model.Generate(ids, config, mask));
                    }
                    catch (Exception e)
                    {
                        joined.SetException(e);
                    }
                }).Start();
        }, cancellationToken: TestContext.Current.CancellationToken);
        var output = await joined.Task;
        output.Sequences.Dispose();
        await running;
        Assert.Equal(expected, NewTokens(output));
        Assert.Equal(expected.Length + 1, scheduler.LargestBatch);
        Assert.Equal(1, scheduler.BatchRequests);

        await scheduler.DisposeAsync();
        var afterwards = model.Generate(ids, config, mask);
        afterwards.Sequences.Dispose();
        Assert.Equal(expected, NewTokens(afterwards));
        Assert.Equal(1, scheduler.BatchRequests);
    }

    /// <summary>A group larger than the batch bound waits for the running rows to finish, then runs by itself; the request after it waits its turn.</summary>
    [Fact]
    public async Task AGroupLargerThanTheBoundRunsWhenNothingElseDoes()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        using var ids = tensor(new long[] { 2, 17, 301, 45, 5, 900, 3, 8, 7, 8, 9, 10 }, [3, 4], ScalarType.Int64);
        var config = new GenerationConfig { MaxNewTokens = 12, EosTokenId = null };
        var alone = model.Generate(ids, config);
        alone.Sequences.Dispose();

        await using var scheduler = new ContinuousBatchingScheduler(model, maxBatchSize: 2);
        var before = scheduler.GenerateAsync([7], config with { MaxNewTokens = 20 }, cancellationToken: TestContext.Current.CancellationToken);
        var group = scheduler.GenerateBatchAsync(ids, config, cancellationToken: TestContext.Current.CancellationToken);
        var after = scheduler.GenerateAsync([9], config, cancellationToken: TestContext.Current.CancellationToken);
        var output = await group;
        output.Sequences.Dispose();
        await Task.WhenAll(before, after);
        Assert.Equal(NewTokens(alone), NewTokens(output));
        Assert.Equal(3, scheduler.LargestBatch);
    }

    [Fact]
    public async Task CancellingAGroupEndsItsRowsWithWhatTheyHave()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        using var ids = tensor(new long[] { 2, 17, 301, 45, 5, 900, 3, 8 }, [2, 4], ScalarType.Int64);
        var config = new GenerationConfig { MaxNewTokens = 50, EosTokenId = null };
        var alone = model.Generate(ids, config);
        alone.Sequences.Dispose();

        await using var scheduler = new ContinuousBatchingScheduler(model);
        using var cancel = new CancellationTokenSource();
        var output = await scheduler.GenerateBatchAsync(ids, config, onStep: tracker =>
        {
            if (tracker.Steps == 5) cancel.Cancel();
        }, cancellationToken: cancel.Token);
        using (output.Sequences)
        {
            Assert.All(output.Rows, r => Assert.Equal(FinishReason.Cancelled, r.FinishReason));
            Assert.All(output.Rows, (r, i) => Assert.Equal(alone.Rows[i].TokenIds.Take(5), r.TokenIds));
            Assert.Equal([2L, 4 + 5], output.Sequences.shape);
        }
    }

    [Fact]
    public async Task BatchesItCannotServeAreRefusedUpFront()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        await using var scheduler = new ContinuousBatchingScheduler(model, servesGenerate: true);
        using var ids = tensor(new long[] { 2, 17, 301, 45, 5, 900, 3, 8 }, [2, 4], ScalarType.Int64);
        using var rightPadded = tensor(new long[] { 1, 1, 1, 1, 1, 1, 0, 0 }, [2, 4], ScalarType.Int64);
        using var allPadding = tensor(new long[] { 1, 1, 1, 1, 0, 0, 0, 0 }, [2, 4], ScalarType.Int64);
        using var wrongShape = ones(2, 3, ScalarType.Int64);
        var config = new GenerationConfig { MaxNewTokens = 4, EosTokenId = null };

        Assert.Contains("left padding", Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateBatchAsync(ids, config, rightPadded); }).Message);
        Assert.Contains("all padding", Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateBatchAsync(ids, config, allPadding); }).Message);
        Assert.Contains("shape", Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateBatchAsync(ids, config, wrongShape); }).Message);
        Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateBatchAsync(ids, config with { NumBeams = 2 }); });
        using (var empty = zeros(0, 4, ScalarType.Int64))
            Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateBatchAsync(empty, config); });

        // Generate itself still runs what the scheduler does not take: beam search, and padding on the right.
        model.Generate(ids, config with { NumBeams = 2 }).Sequences.Dispose();
        model.Generate(ids, config, rightPadded).Sequences.Dispose();
        Assert.Equal(0, scheduler.BatchRequests);
    }
}
