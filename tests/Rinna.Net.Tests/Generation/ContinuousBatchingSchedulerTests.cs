using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Tests.Integration;
using Rinna.Net.Tokenization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>
/// Requests served together by the continuous batching scheduler get, token for token, what each gets from
/// <c>Generate</c> alone, whatever joins or leaves the batch around them. Admission points are fixed by submitting
/// requests from another request's step callback, so no test depends on timing.
/// </summary>
public sealed class ContinuousBatchingSchedulerTests
{
    internal static readonly int[][] Prompts =
    [
        [2, 17, 301, 45],
        [5, 900],
        [2, 44, 81, 12, 7, 660, 13, 99, 512, 3, 250, 18, 64],
        [7],
        [2, 31, 31, 31, 400, 8, 90],
    ];

    private static int[] Alone(GptNeoXForCausalLM model, int[] prompt, GenerationConfig config, PreTrainedTokenizer? tokenizer = null) =>
        model.Generate(prompt, config, tokenizer)[prompt.Length..];

    private static GeneratedSequence AloneRow(GptNeoXForCausalLM model, int[] prompt, GenerationConfig config, PreTrainedTokenizer? tokenizer)
    {
        using var ids = tensor(prompt.Select(i => (long)i).ToArray()).unsqueeze(0);
        var output = model.Generate(ids, config, tokenizer: tokenizer);
        output.Sequences.Dispose();
        return output.Rows[0];
    }

    /// <summary>Submits <paramref name="later"/> requests from the first request's step callback at the given steps.</summary>
    private static Task<GeneratedSequence>[] SubmitStaggered(ContinuousBatchingScheduler scheduler, int[][] prompts, GenerationConfig[] configs,
        int[] admitAtStep, PreTrainedTokenizer? tokenizer = null)
    {
        var tasks = new Task<GeneratedSequence>[prompts.Length];
        tasks[0] = scheduler.GenerateAsync(prompts[0], configs[0], tokenizer, onStep: tracker =>
        {
            for (int i = 1; i < prompts.Length; i++)
                if (tracker.Steps == admitAtStep[i]) tasks[i] = scheduler.GenerateAsync(prompts[i], configs[i], tokenizer);
        });
        return tasks;
    }

    /// <summary>
    /// A temporary copy of the tiny rinna fixture; with <paramref name="dynamicRopeFrom"/>, its context is that many
    /// positions and dynamic NTK scaling (factor 2) grows the rotary base past it. The caller deletes it.
    /// </summary>
    private static string RinnaFixtureCopy(int? dynamicRopeFrom)
    {
        var directory = Directory.CreateTempSubdirectory("rinna-batch-").FullName;
        foreach (var file in Directory.GetFiles(Fixtures.Model("tiny-neox-rinna")))
            File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
        if (dynamicRopeFrom is { } positions)
        {
            var configPath = Path.Combine(directory, "config.json");
            var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
            json["max_position_embeddings"] = positions;
            json["rope_scaling"] = new System.Text.Json.Nodes.JsonObject { ["type"] = "dynamic", ["factor"] = 2.0 };
            File.WriteAllText(configPath, json.ToJsonString());
        }
        return directory;
    }

    private static async Task<GeneratedSequence[]> WhenAll(Task<GeneratedSequence>[] tasks)
    {
        var results = new GeneratedSequence[tasks.Length];
        // Later tasks exist once the first request has run far enough; it runs longest in these tests.
        results[0] = await tasks[0];
        for (int i = 1; i < tasks.Length; i++) results[i] = await tasks[i];
        return results;
    }

    [Theory]
    [InlineData("tiny-neox-rinna")]
    [InlineData("tiny-neox-pythia")]
    public async Task ConcurrentGreedyRequestsEqualEachRunAlone(string fixture)
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture));
        int[] budgets = [40, 12, 25, 30, 8];
        var configs = budgets.Select((n, i) => new GenerationConfig
        {
            MaxNewTokens = n, EosTokenId = null, RepetitionPenalty = i == 2 ? 1.3 : 1.0, NoRepeatNgramSize = i == 4 ? 2 : 0,
        }).ToArray();
        var expected = Prompts.Select((p, i) => Alone(model, p, configs[i])).ToArray();

        await using var scheduler = new ContinuousBatchingScheduler(model);
        // Two at once, the others joining at steps 3, 5 and 9 of the first, after the second may have left.
        var first = scheduler.GenerateAsync(Prompts[1], configs[1]);
        var results = await WhenAll(SubmitStaggered(scheduler, [Prompts[0], .. Prompts[2..]], [configs[0], .. configs[2..]], [0, 3, 5, 9]));

        Assert.Equal(expected[1], (await first).TokenIds);
        Assert.Equal(expected[0], results[0].TokenIds);
        for (int i = 1; i < results.Length; i++) Assert.Equal(expected[i + 1], results[i].TokenIds);
        Assert.All(results, r => Assert.Equal(FinishReason.Length, r.FinishReason));
        Assert.True(scheduler.LargestBatch >= 3, $"at most {scheduler.LargestBatch} rows were decoded together");
    }

    /// <summary>
    /// Greedy rows with the same repetition penalty (or none) pick their tokens in one pass over the batch: the tokens each
    /// picks alone, with rows of different lengths (padded ids) and a sampling row and a row with another processor beside them.
    /// </summary>
    [Theory]
    [InlineData("tiny-neox-rinna")]
    [InlineData("tiny-neox-pythia")]
    public async Task GreedyRowsWithTheSamePenaltyPickTogetherWhatEachPicksAlone(string fixture)
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture));
        double[] penalties = [1.3, 1.3, 1.0, 1.0, 1.3];
        var configs = penalties.Select((penalty, i) => new GenerationConfig { MaxNewTokens = 18 + 4 * i, EosTokenId = null, RepetitionPenalty = penalty })
            .ToArray();
        var sampling = new GenerationConfig { MaxNewTokens = 30, EosTokenId = null, DoSample = true, Seed = 5, RepetitionPenalty = 1.3 };
        var ngrams = new GenerationConfig { MaxNewTokens = 30, EosTokenId = null, RepetitionPenalty = 1.3, NoRepeatNgramSize = 2 };
        var expected = Prompts.Select((p, i) => Alone(model, p, configs[i])).ToArray();
        var expectedNgrams = Alone(model, Prompts[2], ngrams);

        await using var scheduler = new ContinuousBatchingScheduler(model);
        var tasks = Prompts.Select((p, i) => scheduler.GenerateAsync(p, configs[i]))
            .Append(scheduler.GenerateAsync(Prompts[0], sampling)).Append(scheduler.GenerateAsync(Prompts[2], ngrams)).ToArray();
        var results = await Task.WhenAll(tasks);

        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(expected[i], results[i].TokenIds);
        Assert.Equal(expectedNgrams, results[^1].TokenIds);
        // Three rows with 1.3 and two with none for 18 steps or more: far more rows than the sampling and n-gram rows' own picks.
        Assert.True(scheduler.RowsPickedTogether >= 5 * 18, $"only {scheduler.RowsPickedTogether} rows were picked together");
    }

    /// <summary>
    /// The batched pick equals each row's own repetition penalty and argmax, bit for bit in the scores it compares: rows of
    /// different lengths whose best token is one the penalty must not touch (it is in no history, so a padding id that is
    /// not the row's own would push it down), bfloat16 logits, and penalties above and below 1.
    /// </summary>
    [Theory]
    [InlineData(1.0)]
    [InlineData(2.0)]
    [InlineData(0.5)]
    public void PickingGreedyTokensTogetherEqualsEachRowsOwnPipeline(double penalty)
    {
        using var scope = NewDisposeScope();
        var gen = new TorchSharp.torch.Generator(3);
        const int Vocabulary = 64;
        IReadOnlyList<long>[] history = [[5, 9, 9, 17], [40], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 30], [63, 1]];
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            var logits = randn(history.Length, Vocabulary, generator: gen);
            // Token 0, in no history, scores highest in every row (no penalty may reach it), token 2 next; then each history's tokens.
            logits[.., 0] = 10f;
            logits[.., 2] = 8f;
            for (int row = 0; row < history.Length; row++)
                foreach (var token in history[row]) logits[row, token] = penalty < 1 ? -9f : 9.5f;
            logits = logits.to(dtype);

            var together = ContinuousBatchingScheduler.PickGreedy(logits, history, penalty);

            var pipeline = LogitsProcessorList.Create(new GenerationConfig { RepetitionPenalty = penalty, EosTokenId = null }, 1);
            for (int row = 0; row < history.Length; row++)
            {
                var ids = tensor(history[row].ToArray()).unsqueeze(0);
                long alone = pipeline.Process(ids, logits.narrow(0, row, 1).to(ScalarType.Float32)).argmax(-1).item<long>();
                Assert.Equal(alone, together[row]);
            }
            Assert.All(together, token => Assert.Equal(0, token));
        }
    }

    [Theory]
    [InlineData("tiny-neox-rinna")]
    [InlineData("tiny-neox-pythia")]
    public async Task ALongPromptIsPrefilledInChunksWhileTheRunningRowKeepsDecoding(string fixture)
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(fixture));
        var random = new Random(3);
        int[] longPrompt = [2, .. Enumerable.Range(0, 40).Select(_ => random.Next(4, model.Config.VocabSize))];
        var running = new GenerationConfig { MaxNewTokens = 30, EosTokenId = null };
        var joining = new GenerationConfig { MaxNewTokens = 10, EosTokenId = null };
        var expectedRunning = Alone(model, Prompts[0], running);
        var expectedJoining = Alone(model, longPrompt, joining);

        await using var scheduler = new ContinuousBatchingScheduler(model, prefillChunkTokens: 8);
        Task<GeneratedSequence>? joined = null;
        int joinedAtStep = -1, stepsBeforeItsFirstToken = -1;
        var first = scheduler.GenerateAsync(Prompts[0], running, onStep: tracker =>
        {
            if (tracker.Steps == 2)
            {
                joinedAtStep = tracker.Steps;
                joined = scheduler.GenerateAsync(longPrompt, joining, onStep: t =>
                {
                    if (t.Steps == 1) stepsBeforeItsFirstToken = tracker.Steps - joinedAtStep;
                });
            }
        });
        var result = await first;

        Assert.Equal(expectedRunning, result.TokenIds);
        Assert.Equal(expectedJoining, (await joined!).TokenIds);
        Assert.Equal(8, scheduler.LargestPrefillChunk);
        // 41 prompt tokens in chunks of 8 take six prefills, with the running row decoding a token after each of the first five.
        Assert.True(stepsBeforeItsFirstToken >= 5, $"the running row got {stepsBeforeItsFirstToken} tokens while the long prompt was prefilled");
    }

    [Fact]
    public async Task ShortPromptsThatArriveTogetherJoinInTheSameStep()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = new GenerationConfig { MaxNewTokens = 12, EosTokenId = null };
        int[][] later = [Prompts[2], Prompts[3], Prompts[4]];
        var expected = later.Select(p => Alone(model, p, config)).ToArray();

        await using var scheduler = new ContinuousBatchingScheduler(model);
        var joinedAt = new int[later.Length];
        var tasks = new Task<GeneratedSequence>[later.Length];
        var first = scheduler.GenerateAsync(Prompts[0], new GenerationConfig { MaxNewTokens = 20, EosTokenId = null }, onStep: tracker =>
        {
            if (tracker.Steps != 2) return;
            for (int i = 0; i < later.Length; i++)
            {
                int index = i;
                tasks[i] = scheduler.GenerateAsync(later[i], config, onStep: t =>
                {
                    if (t.Steps == 1) joinedAt[index] = tracker.Steps;
                });
            }
        });
        await first;

        for (int i = 0; i < later.Length; i++) Assert.Equal(expected[i], (await tasks[i]).TokenIds);
        // All three prompts fit one step's prefill budget, so they went through one pass and got their first tokens in the same step.
        Assert.All(joinedAt, step => Assert.Equal(joinedAt[0], step));
        Assert.Equal(later.Sum(p => p.Length), scheduler.LargestPrefillChunk);
        Assert.Equal(4, scheduler.LargestBatch);
    }

    [Fact]
    public async Task RowsPastTheContextWithDynamicRopeScalingKeepTheirOwnRotaryBase()
    {
        // Dynamic NTK scaling grows the rotary base with a sequence's own length once it passes max_position_embeddings,
        // so rows of different lengths need different tables in the same step.
        var directory = RinnaFixtureCopy(dynamicRopeFrom: 16);
        try
        {
            using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory);
            var configs = new[] { 30, 12, 20 }.Select(n => new GenerationConfig { MaxNewTokens = n, EosTokenId = null }).ToArray();
            int[][] prompts = [Prompts[2], Prompts[0], Prompts[3]];
            var expected = prompts.Select((p, i) => Alone(model, p, configs[i])).ToArray();

            await using var scheduler = new ContinuousBatchingScheduler(model);
            var results = await WhenAll(SubmitStaggered(scheduler, prompts, configs, [0, 2, 6]));
            for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[i].TokenIds);
            Assert.True(scheduler.LargestBatch >= 2);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task BatchedStepLogitsEqualEachRowsOwnStepWithinFloat32Rounding()
    {
        // Attention, masks and positions are each row's own, so the only difference left is the linear layers' rounding:
        // libtorch's float32 product over several rows (GEMM) does not sum in the order of its one-row product (GEMV),
        // which moves logits by a few float32 ulps; greedy tokens then differ only where two candidates tie that closely.
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        using var scope = NewDisposeScope();
        var steppers = Prompts.Select(p => new ModelStepper(model, ones(1, p.Length, ScalarType.Int64), p.Length + 4)).ToArray();
        var aloneSteppers = Prompts.Select(p => new ModelStepper(model, ones(1, p.Length, ScalarType.Int64), p.Length + 4)).ToArray();
        try
        {
            var next = new long[Prompts.Length];
            for (int i = 0; i < Prompts.Length; i++)
            {
                var ids = tensor(Prompts[i].Select(t => (long)t).ToArray()).unsqueeze(0);
                next[i] = steppers[i].Forward(ids).argmax(-1).item<long>();
                aloneSteppers[i].Forward(ids);
            }
            for (int step = 0; step < 3; step++)
            {
                var batched = ModelStepper.ForwardRows(steppers, tensor(next).unsqueeze(1));
                for (int i = 0; i < Prompts.Length; i++)
                {
                    var alone = aloneSteppers[i].Forward(tensor(new[] { next[i] }).unsqueeze(1));
                    TensorAssert.Close(alone, batched.narrow(0, i, 1), 1e-5, 1e-5, $"step {step}, row {i}");
                    Assert.Equal(alone.argmax(-1).item<long>(), batched.narrow(0, i, 1).argmax(-1).item<long>());
                    next[i] = alone.argmax(-1).item<long>();
                }
            }
            Assert.Equal(Prompts.Sum(p => p.Length) + 3 * Prompts.Length, steppers.Sum(s => s.CachedLength));
        }
        finally
        {
            foreach (var s in steppers.Concat(aloneSteppers)) s.Dispose();
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task PackedPrefillLogitsAndCachesEqualEachRowsOwnPrefillWithinFloat32Rounding(bool dynamicRope)
    {
        // Prompts admitted in the same step go through one pass: their tokens side by side through the linear layers,
        // attention prompt by prompt. Rows here start from different cache lengths (a new prompt, a chunk after an earlier
        // chunk, one token after a kept prefix), and with dynamic NTK scaling past the context each keeps its own base.
        var directory = RinnaFixtureCopy(dynamicRopeFrom: dynamicRope ? 8 : null);
        try
        {
            using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory);
            using var scope = NewDisposeScope();
            // (tokens already cached, tokens fed together) per row
            (int[] Before, int[] Fed)[] rows =
            [
                ([], Prompts[2]),
                (Prompts[0], Prompts[4]),
                (Prompts[2], [7]),
                ([], Prompts[1]),
            ];
            Tensor Ids(int[] ids) => tensor(ids.Select(t => (long)t).ToArray()).unsqueeze(0);
            ModelStepper Stepper((int[] Before, int[] Fed) row)
            {
                var stepper = new ModelStepper(model, ones(1, row.Before.Length + row.Fed.Length, ScalarType.Int64), 4);
                if (row.Before.Length > 0) stepper.Forward(Ids(row.Before));
                return stepper;
            }
            var packed = rows.Select(Stepper).ToArray();
            var alone = rows.Select(Stepper).ToArray();
            try
            {
                var logits = ModelStepper.ForwardPacked(packed, rows.Select(r => Ids(r.Fed)).ToArray());
                Assert.Equal([rows.Length, model.Config.VocabSize], logits.shape);
                var next = new long[rows.Length];
                for (int i = 0; i < rows.Length; i++)
                {
                    var expected = alone[i].Forward(Ids(rows[i].Fed));
                    TensorAssert.Close(expected, logits.narrow(0, i, 1), 1e-5, 1e-5, $"row {i}");
                    next[i] = expected.argmax(-1).item<long>();
                    Assert.Equal(alone[i].CachedLength, packed[i].CachedLength);
                }
                // What the pass wrote to each cache is what the row's own prefill wrote: the next step agrees too.
                var step = ModelStepper.ForwardRows(packed, tensor(next).unsqueeze(1));
                for (int i = 0; i < rows.Length; i++)
                    TensorAssert.Close(alone[i].Forward(tensor(new[] { next[i] }).unsqueeze(1)), step.narrow(0, i, 1), 1e-5, 1e-5, $"next step, row {i}");
            }
            finally
            {
                foreach (var s in packed.Concat(alone)) s.Dispose();
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task SeededSamplingIsReproducibleWhateverElseIsInTheBatch()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        GenerationConfig Sampled(long seed) => new() { MaxNewTokens = 24, EosTokenId = null, DoSample = true, Seed = seed, Temperature = 0.9, TopK = 40 };
        var greedy = new GenerationConfig { MaxNewTokens = 30, EosTokenId = null };
        var expected = Alone(model, Prompts[0], Sampled(42));

        await using var scheduler = new ContinuousBatchingScheduler(model);
        // The same seeded request beside different company each time: another sampler, a greedy row, nothing at all.
        var withSampler = await WhenAll(SubmitStaggered(scheduler, [Prompts[2], Prompts[0]], [Sampled(7) with { MaxNewTokens = 40 }, Sampled(42)], [0, 4]));
        var withGreedy = await WhenAll(SubmitStaggered(scheduler, [Prompts[3], Prompts[0], Prompts[1]], [greedy, Sampled(42), Sampled(9)], [0, 1, 2]));
        var byItself = await scheduler.GenerateAsync(Prompts[0], Sampled(42));

        Assert.Equal(expected, withSampler[1].TokenIds);
        Assert.Equal(expected, withGreedy[1].TokenIds);
        Assert.Equal(expected, byItself.TokenIds);
        Assert.Equal(Alone(model, Prompts[2], Sampled(7) with { MaxNewTokens = 40 }), withSampler[0].TokenIds);
        Assert.NotEqual(expected, (await scheduler.GenerateAsync(Prompts[0], Sampled(43))).TokenIds);
    }

    [Fact]
    public async Task CancellingOneRequestMidBatchLeavesTheOthersExact()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = new GenerationConfig { MaxNewTokens = 20, EosTokenId = null };
        await using var scheduler = new ContinuousBatchingScheduler(model);
        using var cancel = new CancellationTokenSource();
        var first = scheduler.GenerateAsync(Prompts[0], config);
        var cancelled = scheduler.GenerateAsync(Prompts[2], config, onStep: t =>
        {
            if (t.Steps == 3) cancel.Cancel();
        }, cancellationToken: cancel.Token);
        var third = scheduler.GenerateAsync(Prompts[4], config);

        var stopped = await cancelled;
        Assert.Equal(FinishReason.Cancelled, stopped.FinishReason);
        Assert.Equal(Alone(model, Prompts[2], config)[..3], stopped.TokenIds);
        Assert.Equal(Alone(model, Prompts[0], config), (await first).TokenIds);
        Assert.Equal(Alone(model, Prompts[4], config), (await third).TokenIds);

        // Cancelled before it was admitted: no tokens, as Generate with a cancelled token.
        var never = await scheduler.GenerateAsync(Prompts[1], config, cancellationToken: cancel.Token);
        Assert.Equal(FinishReason.Cancelled, never.FinishReason);
        Assert.Empty(never.TokenIds);
    }

    [Fact]
    public async Task ARowThatFinishesEarlyLeavesWhileTheOthersContinue()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var longConfig = new GenerationConfig { MaxNewTokens = 30, EosTokenId = null };
        var free = Alone(model, Prompts[2], new GenerationConfig { MaxNewTokens = 30, EosTokenId = null });
        // An end-of-sequence id the short request generates at its 5th token or later, seen for the first time there.
        int at = Enumerable.Range(4, free.Length - 4).First(i => !free[..i].Contains(free[i]));
        var eosConfig = new GenerationConfig { MaxNewTokens = 30, EosTokenId = [free[at]], PadTokenId = 0 };

        await using var scheduler = new ContinuousBatchingScheduler(model);
        Task<GeneratedSequence>? early = null;
        bool finishedWhileOthersRan = false;
        var running = scheduler.GenerateAsync(Prompts[0], longConfig, onStep: t =>
        {
            if (t.Steps == 1) early = scheduler.GenerateAsync(Prompts[2], eosConfig);
            if (t.Steps == 25) finishedWhileOthersRan = early!.IsCompleted && scheduler.ActiveRows == 1;
        });
        var result = await running;
        var finished = await early!;

        Assert.Equal(FinishReason.EndOfSequence, finished.FinishReason);
        Assert.Equal(free[..(at + 1)], finished.TokenIds);
        Assert.True(finishedWhileOthersRan, "the finished row was still in the batch");
        Assert.Equal(Alone(model, Prompts[0], longConfig), result.TokenIds);
    }

    [Fact]
    public async Task EachRowKeepsItsOwnStopStringsAndStream()
    {
        using var tiny = new TinyChatModel();
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(tiny.Directory);
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(tiny.Directory);
        var plain = new GenerationConfig { MaxNewTokens = 30, EosTokenId = null };
        var text = AloneRow(model, Prompts[0], plain, tokenizer).Text!;
        // A stop string from the middle of the request's own free-running text.
        var stop = text.Substring(text.Length / 2, 2);
        var stopping = plain with { StopStrings = [stop] };
        var expectedStopped = AloneRow(model, Prompts[0], stopping, tokenizer);
        var expectedOther = AloneRow(model, Prompts[2], plain, tokenizer);
        Assert.Equal(FinishReason.StopString, expectedStopped.FinishReason);

        await using var scheduler = new ContinuousBatchingScheduler(model);
        var streamed = new[] { "", "" };
        var other = scheduler.GenerateAsync(Prompts[2], plain, tokenizer, onStep: t => streamed[1] += t.TakeText(0));
        var stopped = await scheduler.GenerateAsync(Prompts[0], stopping, tokenizer, onStep: t => streamed[0] += t.TakeText(0));
        var continued = await other;

        Assert.Equal(expectedStopped.TokenIds, stopped.TokenIds);
        Assert.Equal(expectedStopped.Text, stopped.Text);
        Assert.Equal(FinishReason.StopString, stopped.FinishReason);
        Assert.Equal(stop, stopped.StopString);
        Assert.Equal(expectedOther.TokenIds, continued.TokenIds);
        Assert.Equal(FinishReason.Length, continued.FinishReason);
        Assert.Equal(new[] { stopped.Text!, continued.Text! }, streamed);
    }

    [Fact]
    public async Task AnExceptionInOneRequestFailsOnlyThatRequest()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = new GenerationConfig { MaxNewTokens = 15, EosTokenId = null };
        await using var scheduler = new ContinuousBatchingScheduler(model);
        var first = scheduler.GenerateAsync(Prompts[0], config);
        var failing = scheduler.GenerateAsync(Prompts[2], config, logitsProcessors: [new ThrowingProcessor(calls: 4)]);
        var callbackFails = scheduler.GenerateAsync(Prompts[3], config, onStep: t =>
        {
            if (t.Steps == 2) throw new InvalidOperationException("the caller's stream broke");
        });
        var outOfVocabulary = scheduler.GenerateAsync([5, 5000], config);
        var last = scheduler.GenerateAsync(Prompts[4], config);

        Assert.Equal("processor failed", (await Assert.ThrowsAsync<InvalidOperationException>(() => failing)).Message);
        Assert.Equal("the caller's stream broke", (await Assert.ThrowsAsync<InvalidOperationException>(() => callbackFails)).Message);
        Assert.Contains("outside the vocabulary", (await Assert.ThrowsAsync<ArgumentException>(() => outOfVocabulary)).Message);
        Assert.Equal(Alone(model, Prompts[0], config), (await first).TokenIds);
        Assert.Equal(Alone(model, Prompts[4], config), (await last).TokenIds);
    }

    [Fact]
    public async Task WaitingRequestsAreAdmittedInArrivalOrderUpToTheBound()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = new GenerationConfig { MaxNewTokens = 6, EosTokenId = null };
        await using var scheduler = new ContinuousBatchingScheduler(model, maxBatchSize: 2);
        var order = new List<int>();
        int queuedAtStep3 = -1;
        var tasks = new Task<GeneratedSequence>[5];
        tasks[0] = scheduler.GenerateAsync(Prompts[0], config, onStep: t =>
        {
            if (t.Steps == 1) order.Add(0);
            if (t.Steps == 2)
                for (int i = 1; i < 5; i++)
                {
                    int index = i;
                    tasks[i] = scheduler.GenerateAsync(Prompts[i], config, onStep: u =>
                    {
                        if (u.Steps == 1) order.Add(index);
                    });
                }
            if (t.Steps == 3) queuedAtStep3 = scheduler.QueuedRequests;
        });
        await tasks[0];
        for (int i = 1; i < 5; i++) Assert.Equal(Alone(model, Prompts[i], config), (await tasks[i]).TokenIds);

        Assert.Equal([0, 1, 2, 3, 4], order);
        Assert.Equal(3, queuedAtStep3);
        Assert.Equal(2, scheduler.LargestBatch);
    }

    [Fact]
    public async Task DisposingStopsTheLoopAndFailsWhatWasStillRunning()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = new GenerationConfig { MaxNewTokens = 200, EosTokenId = null };
        var scheduler = new ContinuousBatchingScheduler(model, maxBatchSize: 1);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = scheduler.GenerateAsync(Prompts[0], config, onStep: t =>
        {
            if (t.Steps == 2) started.TrySetResult();
        });
        var waiting = scheduler.GenerateAsync(Prompts[1], config);
        await started.Task;
        scheduler.Dispose();

        await Assert.ThrowsAsync<ObjectDisposedException>(() => running);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => waiting);
        Assert.Throws<ObjectDisposedException>(() => { _ = scheduler.GenerateAsync(Prompts[2], config); });
        Assert.Equal(0, scheduler.ActiveRows);
        // Disposed from a request's own callback (on the loop's thread), the loop ends after that step.
        var fromInside = new ContinuousBatchingScheduler(model);
        var self = fromInside.GenerateAsync(Prompts[0], config, onStep: t =>
        {
            if (t.Steps == 2) fromInside.Dispose();
        });
        await Assert.ThrowsAsync<ObjectDisposedException>(() => self);
    }

    [Fact]
    public async Task SettingsItCannotBatchAreRefusedUpFront()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        await using var scheduler = new ContinuousBatchingScheduler(model);
        Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateAsync(Prompts[0], new GenerationConfig { NumBeams = 2, MaxNewTokens = 3 }); });
        Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateAsync(Prompts[0], new GenerationConfig { PromptLookupNumTokens = 3, MaxNewTokens = 3 }); });
        Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateAsync([], new GenerationConfig { MaxNewTokens = 3 }); });
        Assert.Throws<ArgumentException>(() => { _ = scheduler.GenerateAsync(Prompts[0], new GenerationConfig { MaxNewTokens = 3, StopStrings = ["x"] }); });
        Assert.Throws<ArgumentOutOfRangeException>(() => new ContinuousBatchingScheduler(model, maxBatchSize: 0));
    }

    private sealed class ThrowingProcessor(int calls) : ILogitsProcessor
    {
        private int seen;

        public Tensor Process(Tensor inputIds, Tensor scores) =>
            ++seen == calls ? throw new InvalidOperationException("processor failed") : scores;
    }
}

/// <summary>Rows that join and leave keep native and managed memory flat: each row's cache and sequence go with it.</summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class ContinuousBatchingMemoryTests(ITestOutputHelper output)
{
    private static (long Resident, long LiveTensors) Measure()
    {
        for (int i = 0; i < 2; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        return (ProcessMemory.ResidentBytes, Tensor.TotalCount);
    }

    [Fact]
    public async Task ManyAdmittedAndFinishedRowsKeepMemoryFlat()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        await using var scheduler = new ContinuousBatchingScheduler(model, maxBatchSize: 4);
        var prompts = ContinuousBatchingSchedulerTests.Prompts;
        async Task Round(int round)
        {
            var tasks = Enumerable.Range(0, 12).Select(i => scheduler.GenerateAsync(prompts[i % prompts.Length],
                new GenerationConfig { MaxNewTokens = 5 + (i * 7 + round) % 30, EosTokenId = null, DoSample = i % 3 == 0, Seed = i })).ToArray();
            await Task.WhenAll(tasks);
        }
        for (int round = 0; round < 2; round++) await Round(round);
        var settled = Measure();
        for (int round = 2; round < 10; round++) await Round(round);
        var after = Measure();

        output.WriteLine($"settled: RSS {settled.Resident >> 20} MiB, {settled.LiveTensors} tensors; after 96 more requests: RSS {after.Resident >> 20} MiB, {after.LiveTensors} tensors");
        Assert.True(after.LiveTensors <= settled.LiveTensors, $"{after.LiveTensors - settled.LiveTensors} more live tensors after 96 requests");
        Assert.True(after.Resident - settled.Resident < 32L << 20, $"resident memory grew by {(after.Resident - settled.Resident) >> 20} MiB");
        Assert.Equal(4, scheduler.LargestBatch);
    }
}
