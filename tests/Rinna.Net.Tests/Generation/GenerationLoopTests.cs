using System.Text.Json;
using Rinna.Net.Generation;
using Rinna.Net.Native;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>
/// The decode loop replayed on the logits Hugging Face's GPT-NeoX produced for the tiny-neox-rinna left-padded batch
/// (expected.safetensors batch.step_logits): the loop must feed the same tokens and pick the same ones.
/// </summary>
public class GenerationLoopTests
{
    private static readonly Lazy<Reference> Batch = new(LoadBatch);

    private sealed record Reference(Tensor InputIds, Tensor StepLogits, long[][] NewTokens);

    private static Reference LoadBatch()
    {
        TorchSharpNativeLoader.EnsureInstalled();
        var dir = Fixtures.Model("tiny-neox-rinna");
        var batch = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "expected.json"))).RootElement.GetProperty("batch");
        var tensors = Safetensors.LoadStateDict(Path.Combine(dir, "expected.safetensors"));
        var newTokens = batch.GetProperty("new_tokens").EnumerateArray()
            .Select(row => row.EnumerateArray().Select(t => t.GetInt64()).ToArray()).ToArray();
        return new Reference(tensors["batch.input_ids"], tensors["batch.step_logits"], newTokens);
    }

    /// <summary>A stand-in for the model: checks what the loop feeds and answers with Hugging Face's logits of that step.</summary>
    private sealed class ReplayModel(Reference reference, int? eosTokenId = null)
    {
        public int Calls { get; private set; }
        private readonly bool[] finished = new bool[reference.NewTokens.Length];

        public Tensor NextTokenLogits(Tensor fed)
        {
            var step = Calls++;
            if (step == 0)
                Assert.True(fed.eq(reference.InputIds).all().item<bool>(), "the first call must feed the whole prompt batch");
            else
            {
                Assert.Equal([reference.NewTokens.Length, 1L], fed.shape);
                var fedTokens = fed.squeeze(1).data<long>().ToArray();
                for (var row = 0; row < fedTokens.Length; row++)
                {
                    var expected = finished[row] ? 0 : reference.NewTokens[row][step - 1];
                    Assert.Equal(expected, fedTokens[row]);
                    if (reference.NewTokens[row][step - 1] == eosTokenId) finished[row] = true;
                }
            }
            return reference.StepLogits[step].clone();
        }
    }

    [Fact]
    public void GreedyBatchReproducesHuggingFacesTokens()
    {
        var reference = Batch.Value;
        var model = new ReplayModel(reference);
        var config = new GenerationConfig { MaxNewTokens = 16, EosTokenId = [3], PadTokenId = 0 };

        var output = GenerationLoop.Run(reference.InputIds, model.NextTokenLogits, config);
        using var sequences = output.Sequences;

        Assert.Equal(16, model.Calls);
        for (var row = 0; row < 3; row++)
        {
            Assert.Equal(reference.NewTokens[row], output.Rows[row].TokenIds.Select(t => (long)t));
            Assert.Equal(FinishReason.Length, output.Rows[row].FinishReason);
        }
        Assert.Equal([3L, 11 + 16], sequences.shape);
        Assert.True(sequences.narrow(1, 0, 11).eq(reference.InputIds).all().item<bool>());
        Assert.Equal(reference.NewTokens[2], sequences[2].narrow(0, 11, 16).data<long>().ToArray());
    }

    [Fact]
    public void ARowThatEmitsEosIsPaddedWhileTheOthersContinue()
    {
        // Pretend 224 is the end-of-sequence id: row 0 emits it at step 5 and row 1 at step 8; row 2 never does.
        var reference = Batch.Value;
        var model = new ReplayModel(reference, eosTokenId: 224);
        var config = new GenerationConfig { MaxNewTokens = 16, EosTokenId = [224], PadTokenId = 0 };

        var output = GenerationLoop.Run(reference.InputIds, model.NextTokenLogits, config);
        using var sequences = output.Sequences;

        Assert.Equal(reference.NewTokens[0].Take(5), output.Rows[0].TokenIds.Select(t => (long)t));
        Assert.Equal(reference.NewTokens[1].Take(8), output.Rows[1].TokenIds.Select(t => (long)t));
        Assert.Equal(reference.NewTokens[2], output.Rows[2].TokenIds.Select(t => (long)t));
        Assert.Equal([FinishReason.EndOfSequence, FinishReason.EndOfSequence, FinishReason.Length], output.Rows.Select(r => r.FinishReason));
        Assert.Equal(Enumerable.Repeat(0L, 11), sequences[0].narrow(0, 11 + 5, 11).data<long>().ToArray());
    }

    [Fact]
    public void EveryRowFinishedEndsTheLoopEarly()
    {
        // Row 0 alone, with its first token (905) as the end-of-sequence id: one step and done.
        var reference = Batch.Value;
        var single = reference.InputIds.narrow(0, 0, 1);
        var model = new ReplayModel(new Reference(single, reference.StepLogits.narrow(1, 0, 1), [reference.NewTokens[0]]), 905);
        var output = GenerationLoop.Run(single, model.NextTokenLogits, new GenerationConfig { MaxNewTokens = 16, EosTokenId = [905] });
        using var sequences = output.Sequences;
        Assert.Equal([1L, 12], sequences.shape);
        Assert.Equal(FinishReason.EndOfSequence, Assert.Single(output.Rows).FinishReason);
        Assert.Equal(1, model.Calls);
    }

    [Fact]
    public void CancellationStopsWithinOneStepAndKeepsThePartialOutput()
    {
        var reference = Batch.Value;
        var model = new ReplayModel(reference);
        using var cancellation = new CancellationTokenSource();
        var streamed = new List<int>();

        var output = GenerationLoop.Run(reference.InputIds, model.NextTokenLogits, new GenerationConfig { MaxNewTokens = 16 },
            onStep: tracker =>
            {
                streamed.Add(tracker.Steps);
                if (tracker.Steps == 3) cancellation.Cancel();
            },
            cancellationToken: cancellation.Token);
        using var sequences = output.Sequences;

        Assert.Equal([1, 2, 3], streamed);
        Assert.Equal(3, model.Calls);
        Assert.Equal([3L, 14], sequences.shape);
        Assert.All(output.Rows, r => Assert.Equal(FinishReason.Cancelled, r.FinishReason));
        Assert.Equal(reference.NewTokens[1].Take(3), output.Rows[1].TokenIds.Select(t => (long)t));
    }

    [Fact]
    public void SeededSamplingIsReproducibleAndRowsFollowTheirOwnLogits()
    {
        var reference = Batch.Value;
        var config = new GenerationConfig { DoSample = true, MaxNewTokens = 16, Temperature = 0.7, TopK = 5, Seed = 99 };
        long[][] Run()
        {
            var replay = reference.StepLogits;
            var step = 0;
            var output = GenerationLoop.Run(reference.InputIds, _ => replay[step++].clone(), config);
            output.Sequences.Dispose();
            return output.Rows.Select(r => r.TokenIds.Select(t => (long)t).ToArray()).ToArray();
        }
        var first = Run();
        Assert.Equal(first, Run());
        // Each sampled token is among the 5 best of its row's logits at that step.
        for (var step = 0; step < 16; step++)
            for (var row = 0; row < 3; row++)
            {
                var top5 = reference.StepLogits[step][row].topk(5).indexes.data<long>().ToArray();
                Assert.Contains(first[row][step], top5);
            }
    }

    [Fact]
    public void AnEmptyPromptIsRejected()
    {
        TorchSharpNativeLoader.EnsureInstalled();
        using var empty = zeros(1, 0, dtype: ScalarType.Int64);
        Assert.Throws<ArgumentException>(() => GenerationLoop.Run(empty, _ => throw new InvalidOperationException(), new GenerationConfig()));
        using var floats = zeros(1, 3);
        Assert.Throws<ArgumentException>(() => GenerationLoop.Run(floats, _ => throw new InvalidOperationException(), new GenerationConfig()));
    }
}
