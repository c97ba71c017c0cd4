using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>Why a sequence stopped growing.</summary>
public enum FinishReason
{
    /// <summary>It reached the maximum number of tokens.</summary>
    Length,
    /// <summary>It produced an end-of-sequence token.</summary>
    EndOfSequence,
}

/// <summary>The result of <see cref="CausalLMGeneration.Generate"/>.</summary>
/// <param name="Sequences">Prompt and new tokens per row, <c>[batch, prompt + new]</c>, as HF's <c>generate</c> returns; finished rows are filled with the pad id.</param>
/// <param name="FinishReasons">Why each row stopped.</param>
public sealed record GenerateOutput(long[][] Sequences, IReadOnlyList<FinishReason> FinishReasons)
{
    /// <summary>Only the generated part of each row (what follows the prompt).</summary>
    public long[][] NewTokens(int promptLength) => Sequences.Select(s => s[promptLength..]).ToArray();
}

/// <summary><c>model.generate(...)</c> for causal language models.</summary>
public static class CausalLMGeneration
{
    /// <summary>
    /// Continues each row of <paramref name="inputIds"/>: HF's <c>model.generate(input_ids, attention_mask=..., ...)</c>.
    /// Left-padded batches need <paramref name="attentionMask"/> (0 on pads); each row then matches its unpadded run.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="inputIds">Prompt ids <c>[batch, seq]</c> (int64).</param>
    /// <param name="config">Decoding settings; <c>null</c> means greedy with HF's defaults.</param>
    /// <param name="attentionMask">1 for tokens, 0 for left padding; <c>null</c> means no padding.</param>
    /// <param name="cancellationToken">Checked before every step.</param>
    public static GenerateOutput Generate(this GptNeoXForCausalLM model, Tensor inputIds, GenerationConfig? config = null,
        Tensor? attentionMask = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(inputIds);
        config ??= new GenerationConfig();
        if (inputIds.dim() != 2 || inputIds.shape[1] == 0)
            throw new ArgumentException($"input ids must be [batch, seq] with seq > 0; got [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        int batch = (int)inputIds.shape[0], promptLength = (int)inputIds.shape[1];
        int maxNew = config.MaxNewTokens ?? config.MaxLength - promptLength;
        if (maxNew <= 0)
            throw new ArgumentException($"nothing to generate: the prompt has {promptLength} tokens and max_length is {config.MaxLength}; set MaxNewTokens.", nameof(config));
        var eos = config.EosTokenId ?? [];
        long pad = config.PadTokenId ?? (eos.Count > 0 ? eos[0] : 0);

        var rows = Enumerable.Range(0, batch).Select(_ => new List<long>(promptLength + maxNew)).ToArray();
        Tensor prompt, mask;
        using (NewDisposeScope())
        {
            prompt = inputIds.to(ScalarType.Int64).cpu().clone().MoveToOuterDisposeScope();
            mask = (attentionMask ?? ones_like(prompt)).to(ScalarType.Int64).cpu().clone().MoveToOuterDisposeScope();
        }
        var promptIds = prompt.data<long>().ToArray();
        for (int r = 0; r < batch; r++) rows[r].AddRange(promptIds.AsSpan(r * promptLength, promptLength));
        var reasons = Enumerable.Repeat(FinishReason.Length, batch).ToArray();
        var finished = new bool[batch];

        using var grad = no_grad();
        using var cache = new KeyValueCache(model.Config.NumHiddenLayers, promptLength + maxNew);
        var next = prompt;
        try
        {
            for (int step = 0; step < maxNew && !finished.All(f => f); step++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                // HF's prepare_inputs_for_generation: positions count real tokens only; pads get position 1.
                var positions = mask.cumsum(-1).sub_(1).masked_fill_(mask.eq(0), 1);
                positions = positions.narrow(1, positions.shape[1] - next.shape[1], next.shape[1]);
                using var output = model.Forward(next, mask, positions, cache, useCache: true, lastPositionOnly: true);
                var chosen = output.Logits.select(1, 0).argmax(-1).cpu().data<long>().ToArray();
                for (int r = 0; r < batch; r++)
                {
                    long token = finished[r] ? pad : chosen[r];
                    rows[r].Add(token);
                    if (!finished[r] && eos.Contains((int)token))
                    {
                        finished[r] = true;
                        reasons[r] = FinishReason.EndOfSequence;
                    }
                }
                var newIds = tensor(chosen.Select((t, r) => rows[r][^1]).ToArray(), ScalarType.Int64).view(batch, 1);
                var newMask = cat([mask, ones(batch, 1, ScalarType.Int64)], 1);
                mask.Dispose();
                next.Dispose();
                next = newIds.DetachFromDisposeScope();
                mask = newMask.DetachFromDisposeScope();
            }
        }
        finally
        {
            mask.Dispose();
            next.Dispose();
        }
        return new GenerateOutput(rows.Select(r => r.ToArray()).ToArray(), reasons);
    }
}
