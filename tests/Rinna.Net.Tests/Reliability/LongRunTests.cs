using System.Text.Json.Nodes;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Tests.Integration;
using Rinna.Net.Tokenization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// A host runs one model for hours: long generations and many calls must keep native and managed memory flat,
/// cancellation at any step must leave the model producing exactly what a fresh call produces, and two threads sharing
/// the model must each get what they would get alone.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class LongRunTests(ITestOutputHelper output) : IAsyncLifetime
{
    // Allocator pools, the rotary tables and the JIT settle during the first runs; growth after that is what would
    // accumulate over hours. Live tensors are counted after full collections, so a tensor a finished call leaves
    // referenced (a cache, a list that grows per call) shows up one for one; RSS and the managed heap get a margin for
    // allocator noise.
    private const long ResidentMargin = 48L << 20;
    private const long ManagedMargin = 8L << 20;
    private const long LiveTensorMargin = 1;

    // tiny-neox-rinna with the bilingual look-alike tokenizer; max_position_embeddings raised from 256 so 2,000 tokens fit.
    private readonly TinyChatModel tiny = new();
    private GptNeoXForCausalLM model = null!;
    private PreTrainedTokenizer tokenizer = null!;

    public async ValueTask InitializeAsync()
    {
        var configPath = Path.Combine(tiny.Directory, "config.json");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        config["max_position_embeddings"] = 4096;
        File.WriteAllText(configPath, config.ToJsonString());
        model = await AutoModelForCausalLM.FromPretrainedAsync(tiny.Directory);
        tokenizer = await AutoTokenizer.FromPretrainedAsync(tiny.Directory);
    }

    public ValueTask DisposeAsync()
    {
        model.Dispose();
        tiny.Dispose();
        return ValueTask.CompletedTask;
    }

    private GenerationConfig Exactly(int tokens, long? seed = null) =>
        model.GenerationConfig() with { MaxNewTokens = tokens, MinNewTokens = tokens, DoSample = seed is not null, Seed = seed };

    private int[] GenerateIds(long[] prompt, GenerationConfig config, Action<GenerationTracker>? onStep = null, CancellationToken cancellationToken = default)
    {
        using var scope = NewDisposeScope();
        var result = model.Generate(tensor(prompt).unsqueeze(0), config, onStep: onStep, cancellationToken: cancellationToken);
        result.Sequences.Dispose();
        return [.. result.Rows[0].TokenIds];
    }

    private sealed record Memory(long Resident, long Managed, long LiveTensors)
    {
        public static Memory Measure()
        {
            for (int i = 0; i < 2; i++)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
            return new Memory(ProcessMemory.ResidentBytes, GC.GetTotalMemory(forceFullCollection: true), Tensor.TotalCount);
        }

        public override string ToString() => $"RSS {Resident >> 20} MiB, managed {Managed >> 10} KiB, live tensors {LiveTensors}";
    }

    private void AssertFlat(Memory settled, Memory after, string what)
    {
        output.WriteLine($"{what}: settled {settled}; after {after}");
        Assert.True(after.Resident - settled.Resident < ResidentMargin, $"{what}: resident memory grew by {(after.Resident - settled.Resident) >> 20} MiB");
        Assert.True(after.Managed - settled.Managed < ManagedMargin, $"{what}: managed memory grew by {(after.Managed - settled.Managed) >> 10} KiB");
        Assert.True(after.LiveTensors - settled.LiveTensors <= LiveTensorMargin, $"{what}: {after.LiveTensors - settled.LiveTensors} more live tensors");
    }

    [Fact]
    public void TwoThousandTokenGenerationsKeepMemoryFlat()
    {
        long[] prompt = [2, 15, 300, 41, 7];
        var config = Exactly(2000);
        var first = GenerateIds(prompt, config);
        var settled = Memory.Measure();
        var second = GenerateIds(prompt, config);
        var third = GenerateIds(prompt, config);
        var after = Memory.Measure();

        Assert.Equal(2000, first.Length);
        Assert.Equal(first, second);
        Assert.Equal(first, third);
        AssertFlat(settled, after, "2 × 2,000 tokens");
    }

    [Fact]
    public void TwoHundredConsecutiveCallsKeepMemoryFlat()
    {
        const string prompt = "吾輩は猫である。名前はまだ無い。";
        var config = Exactly(16);
        var reference = model.GenerateText(tokenizer, prompt, config);
        for (int i = 1; i < 20; i++) model.GenerateText(tokenizer, prompt, config);
        var settled = Memory.Measure();
        for (int i = 20; i < 200; i++)
        {
            var text = model.GenerateText(tokenizer, prompt, i % 2 == 0 ? config : Exactly(16, seed: i));
            if (i % 2 == 0) Assert.Equal(reference.TokenIds, text.TokenIds);
        }
        var after = Memory.Measure();

        AssertFlat(settled, after, "180 more calls");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(7)]
    [InlineData(16)]
    [InlineData(31)]
    [InlineData(47)]
    public void CancellationAfterAnyStepLeavesTheModelProducingWhatAFreshCallProduces(int cancelAfterSteps)
    {
        long[] prompt = [2, 99, 512, 7];
        var reference = GenerateIds(prompt, Exactly(48));
        using var cancellation = new CancellationTokenSource();
        if (cancelAfterSteps == 0) cancellation.Cancel();
        int steps = 0;

        var cancelled = GenerateIds(prompt, Exactly(48), _ => { if (++steps == cancelAfterSteps) cancellation.Cancel(); }, cancellation.Token);

        Assert.Equal(reference.Take(cancelAfterSteps), cancelled);
        Assert.Equal(reference, GenerateIds(prompt, Exactly(48)));
    }

    [Fact]
    public async Task CancellingFromAnotherThreadAtRandomMomentsNeverHurtsTheNextCall()
    {
        const string prompt = "ユーザー: 日本の首都は?\nシステム: ";
        var config = Exactly(64);
        var reference = model.GenerateText(tokenizer, prompt, config);
        var random = new Random(6);
        for (int round = 0; round < 12; round++)
        {
            using var cancellation = new CancellationTokenSource(TimeSpan.FromMilliseconds(random.Next(0, 40)));
            var pieces = new List<string>();
            try
            {
                await foreach (var piece in model.GenerateTextStreamingAsync(tokenizer, prompt, config, cancellation.Token))
                    pieces.Add(piece);
                Assert.Equal(reference.Text, string.Concat(pieces));
            }
            catch (OperationCanceledException)
            {
                Assert.StartsWith(string.Concat(pieces), reference.Text, StringComparison.Ordinal);
            }
            var next = model.GenerateText(tokenizer, prompt, config);
            Assert.Equal(reference.TokenIds, next.TokenIds);
        }
    }

    [Fact]
    public async Task TwoThreadsSharingOneModelGetWhatEachGetsAlone()
    {
        // Prompts of different lengths, so the threads need different rotary table sizes, one greedy and one sampled.
        long[] shortPrompt = [2, 5, 9];
        long[] longPrompt = [.. Enumerable.Range(0, 250).Select(i => (long)(i * 37 % 1000))];
        var greedy = Exactly(300);
        var sampled = Exactly(40, seed: 1234);
        var aloneShort = GenerateIds(shortPrompt, greedy);
        var aloneLong = GenerateIds(longPrompt, sampled);

        using var start = new Barrier(2);
        var errors = new List<Exception>();
        int[][] RunMany(long[] prompt, GenerationConfig config) =>
            [.. Enumerable.Range(0, 6).Select(_ =>
            {
                try
                {
                    return GenerateIds(prompt, config);
                }
                catch (Exception error)
                {
                    lock (errors) errors.Add(error);
                    return [];
                }
            })];
        var first = Task.Factory.StartNew(() => { start.SignalAndWait(); return RunMany(shortPrompt, greedy); }, TaskCreationOptions.LongRunning);
        var second = Task.Factory.StartNew(() => { start.SignalAndWait(); return RunMany(longPrompt, sampled); }, TaskCreationOptions.LongRunning);
        var results = await Task.WhenAll(first, second);

        Assert.True(errors.Count == 0, "concurrent generation failed: " + string.Join("\n", errors.Select(e => e.ToString())));
        Assert.All(results[0], ids => Assert.Equal(aloneShort, ids));
        Assert.All(results[1], ids => Assert.Equal(aloneLong, ids));
    }
}
