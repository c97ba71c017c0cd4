using Rinna.Net.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>What <see cref="GenerationLoop.Run"/> produced.</summary>
/// <param name="Sequences">
/// Prompt and generated ids of every row, <c>[batch, promptLength + steps]</c>, int64: Hugging Face's
/// <c>generate()</c> output, with pad ids after a row finished. The caller owns (and disposes) it.
/// </param>
/// <param name="Rows">Per row: the generated ids, why it stopped and, with a decode function, its text.</param>
public sealed record GenerationOutput(Tensor Sequences, IReadOnlyList<GeneratedSequence> Rows)
{
    /// <summary>
    /// HF's <c>sequences_scores</c> of beam search: per returned row, its summed log-probability (after the logits
    /// processors) divided by <c>generated_length ^ length_penalty</c>; <c>null</c> for greedy decoding and sampling.
    /// </summary>
    public IReadOnlyList<float>? SequencesScores { get; init; }

    /// <summary>How speculative decoding went (prompt lookup or an assistant model); <c>null</c> for other decoding modes.</summary>
    public SpeculationStatistics? Speculation { get; init; }
}

/// <summary>The work speculative decoding did for one generation.</summary>
/// <param name="ModelCalls">Forward passes of the model, one per round (the first round may be the prompt's own pass), each verifying that round's proposals.</param>
/// <param name="ProposedTokens">Tokens proposed (by prompt lookup or the assistant model) over all rounds.</param>
/// <param name="AcceptedTokens">Proposed tokens the model agreed with and kept.</param>
public sealed record SpeculationStatistics(int ModelCalls, int ProposedTokens, int AcceptedTokens)
{
    /// <summary>The share of proposed tokens kept; 0 when nothing was proposed.</summary>
    public double AcceptanceRate => ProposedTokens == 0 ? 0 : (double)AcceptedTokens / ProposedTokens;
}

/// <summary>
/// The decode loop of Hugging Face's <c>generate()</c> for greedy and multinomial sampling, independent of the model:
/// each step asks the model for the next-token logits, runs the logits pipeline, picks a token per row, and appends
/// it (pad for finished rows) until every row has finished.
/// </summary>
public static class GenerationLoop
{
    /// <summary>Generates from a (left-padded) batch of prompts.</summary>
    /// <param name="inputIds">The prompts, <c>[batch, length]</c>, int64, padded on the left; not modified or disposed.</param>
    /// <param name="nextTokenLogits">
    /// The model step: given the tokens to feed (the whole prompt batch on the first call, then the <c>[batch, 1]</c>
    /// tokens just appended), it runs the model with its own cache, attention mask and position ids and returns the
    /// logits of the last position, <c>[batch, vocab]</c>. It is called inside a dispose scope; the tokens it gets are
    /// valid only during the call (copy them to keep them).
    /// </param>
    /// <param name="config">The generation settings (validated).</param>
    /// <param name="createDecoder">Creates one incremental decoder per row (special tokens skipped): needed for stop strings and text.</param>
    /// <param name="onStep">
    /// Called after each step with the tracker, e.g. to stream <see cref="GenerationTracker.TakeText"/>; runs on the
    /// generating thread, between steps.
    /// </param>
    /// <param name="logitsProcessors">Extra processors, run after the built-in ones (see <see cref="LogitsProcessorList.Create"/>).</param>
    /// <param name="cancellationToken">
    /// Checked before every step: cancellation ends the loop within one step, and unfinished rows report
    /// <see cref="FinishReason.Cancelled"/> (no exception is thrown, so the partial output is kept).
    /// </param>
    /// <exception cref="ArgumentException">The prompt batch or the configuration is invalid.</exception>
    public static GenerationOutput Run(
        Tensor inputIds,
        Func<Tensor, Tensor> nextTokenLogits,
        GenerationConfig config,
        Func<StreamingDecoder>? createDecoder = null,
        Action<GenerationTracker>? onStep = null,
        IEnumerable<ILogitsProcessor>? logitsProcessors = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        ArgumentNullException.ThrowIfNull(nextTokenLogits);
        ArgumentNullException.ThrowIfNull(config);
        if (inputIds.dim() != 2 || inputIds.dtype != ScalarType.Int64)
            throw new ArgumentException($"inputIds must be [batch, length] int64, got {inputIds.dtype} [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        if (inputIds.shape[0] == 0 || inputIds.shape[1] == 0)
            throw new ArgumentException("The prompt batch is empty: generation needs at least one token per row.", nameof(inputIds));

        var batchSize = (int)inputIds.shape[0];
        var promptLength = (int)inputIds.shape[1];
        var tracker = new GenerationTracker(config, batchSize, promptLength, createDecoder);
        var pipeline = LogitsProcessorList.Create(config, promptLength, logitsProcessors);
        using var sampler = TokenSampler.Create(config);

        var sequences = inputIds.alias();
        Tensor? lastAppended = null;
        try
        {
            while (!tracker.IsDone)
            {
                if (cancellationToken.IsCancellationRequested)
                {
                    tracker.Cancel();
                    break;
                }
                using var scope = NewDisposeScope();
                // Processors and sampling run in float32 whatever the model's dtype, and on the device of the ids (the
                // head of a split model may sit elsewhere), as Hugging Face does.
                var logits = nextTokenLogits(lastAppended ?? inputIds).to(ScalarType.Float32, inputIds.device);
                var scores = pipeline.Process(sequences, logits);
                var appended = tracker.Advance(sampler.Next(scores)).unsqueeze(1);
                var grown = cat([sequences, appended], 1).MoveToOuterDisposeScope();
                sequences.Dispose();
                sequences = grown;
                lastAppended?.Dispose();
                lastAppended = appended.MoveToOuterDisposeScope();
                onStep?.Invoke(tracker);
            }
        }
        catch
        {
            sequences.Dispose();
            throw;
        }
        finally
        {
            lastAppended?.Dispose();
        }
        return new GenerationOutput(sequences, tracker.GetSequences());
    }
}
