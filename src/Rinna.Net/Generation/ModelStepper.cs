using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// Runs a model step by step over a KV cache for the decoding loops: keeps the attention mask in step with the cache
/// (HF's <c>_update_model_kwargs_for_generation</c>), derives position ids from it as HF's
/// <c>prepare_inputs_for_generation</c> does, and exposes the cache operations beam search and speculation need.
/// </summary>
internal sealed class ModelStepper : IDisposable
{
    private readonly GptNeoXForCausalLM model;
    private readonly KeyValueCache cache;
    private readonly bool padded;
    private Tensor mask;

    /// <param name="model">The model.</param>
    /// <param name="attentionMask">The prompts' mask <c>[batch, prompt]</c> (int64, on the model's device); copied.</param>
    /// <param name="reservedLength">Tokens to reserve cache room for.</param>
    /// <param name="maxLength">The most tokens the cache will hold, so that growing never allocates past it.</param>
    public ModelStepper(GptNeoXForCausalLM model, Tensor attentionMask, int reservedLength, int maxLength = int.MaxValue)
    {
        this.model = model;
        cache = new KeyValueCache(model.Config.NumHiddenLayers, reservedLength, maxLength);
        mask = attentionMask.to(ScalarType.Int64).clone().DetachFromDisposeScope();
        padded = mask.eq(0).any().item<bool>();
    }

    /// <summary>Tokens in the cache.</summary>
    public int CachedLength => cache.Length;

    /// <summary>Bytes of native memory the cache holds.</summary>
    public long CacheBytes => cache.SizeInBytes;

    /// <summary>Lets the cache grow (by doubling) up to <paramref name="maxLength"/> tokens, for a request longer than the one it was made for.</summary>
    public void EnsureMaxLength(int maxLength) => cache.MaxLength = Math.Max(cache.MaxLength, maxLength);

    /// <summary>
    /// Feeds <paramref name="tokens"/> <c>[batch, n]</c> after the cached ones (left-padded prompts on the first call)
    /// and returns the float32 logits of the last position, <c>[batch, vocab]</c>, or of all <c>n</c> positions,
    /// <c>[batch, n, vocab]</c>, when <paramref name="allPositions"/> is set.
    /// </summary>
    public Tensor Forward(Tensor tokens, bool allPositions = false)
    {
        // Without padding the model's own positions (past .. past + n - 1) are HF's, and passing no mask keeps the step
        // on the attention backends, which take only unpadded calls.
        var (current, positions) = padded ? MaskAndPositions(tokens.size(1)) : (null, null);
        using var output = model.Forward(tokens, current, positions, cache, useCache: true, lastPositionOnly: !allPositions);
        return allPositions ? output.Logits.clone() : output.Logits.select(1, 0).clone();
    }

    /// <summary>
    /// Feeds one token to each of several single-sequence steppers of one model in one pass (continuous batching): the
    /// linear layers run over all rows at once, and each row's attention, mask and positions are what
    /// <see cref="Forward"/> would use for it alone. Returns the float32 logits, <c>[rows, vocab]</c>.
    /// </summary>
    /// <param name="rows">The steppers, each holding one sequence, all over the same model.</param>
    /// <param name="tokens">One token per stepper, <c>[rows, 1]</c>.</param>
    public static Tensor ForwardRows(IReadOnlyList<ModelStepper> rows, Tensor tokens)
    {
        if (rows.Count == 0) throw new ArgumentException("No rows to step.", nameof(rows));
        var model = rows[0].model;
        if (rows.Any(r => r.model != model || r.mask.size(0) != 1))
            throw new ArgumentException("Rows stepped together must each hold one sequence of the same model.", nameof(rows));
        using var scope = NewDisposeScope();
        var masks = new Tensor?[rows.Count];
        var positions = new long[rows.Count];
        for (int i = 0; i < rows.Count; i++)
        {
            var row = rows[i];
            if (!row.padded)
            {
                positions[i] = row.cache.Length;
                continue;
            }
            (masks[i], var position) = row.MaskAndPositions(1);
            positions[i] = position.item<long>();
        }
        return model.ForwardRows(tokens, rows.Select(r => r.cache).ToArray(), masks, tensor(positions, ScalarType.Int64).unsqueeze(1))
            .MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Feeds each of several single-sequence steppers of one model its own tokens in one pass (continuous batching's
    /// prefill of several prompts): the linear layers run once over all rows' tokens, and each row's attention is what
    /// <see cref="Forward"/> would compute for it alone. Returns the float32 logits of each row's last token, <c>[rows, vocab]</c>.
    /// </summary>
    /// <param name="rows">The steppers, each holding one sequence without padding, all over the same model.</param>
    /// <param name="tokens">Each stepper's new tokens, <c>[1, n]</c>.</param>
    public static Tensor ForwardPacked(IReadOnlyList<ModelStepper> rows, IReadOnlyList<Tensor> tokens)
    {
        if (rows.Count == 0) throw new ArgumentException("No rows to feed.", nameof(rows));
        var model = rows[0].model;
        if (rows.Any(r => r.model != model || r.mask.size(0) != 1 || r.padded))
            throw new ArgumentException("Rows fed together must each hold one unpadded sequence of the same model.", nameof(rows));
        return model.ForwardPacked(tokens, rows.Select(r => r.cache).ToArray());
    }

    /// <summary>The mask over the cached tokens and <paramref name="fed"/> new ones, and the new tokens' positions (for padded prompts).</summary>
    private (Tensor Mask, Tensor Positions) MaskAndPositions(long fed)
    {
        int past = cache.Length;
        long total = past + fed;
        if (mask.size(1) < total)
        {
            // Every token after the prompt is real, so the mask only ever grows by ones.
            var grown = cat([mask, ones(mask.size(0), total - mask.size(1), ScalarType.Int64, mask.device)], 1).DetachFromDisposeScope();
            mask.Dispose();
            mask = grown;
        }
        var current = mask.narrow(1, 0, total);
        // HF's prepare_inputs_for_generation: positions count real tokens only; pads get position 1.
        var positions = current.cumsum(-1).sub_(1).masked_fill_(current.eq(0), 1).narrow(1, past, fed);
        return (current, positions);
    }

    /// <summary>Beam search: row <c>i</c> of the cache becomes old row <c>beamIndices[i]</c>.</summary>
    public void Reorder(Tensor beamIndices) => cache.Reorder(beamIndices);

    /// <summary>Speculation: forgets cached tokens from <paramref name="length"/> on.</summary>
    public void Truncate(int length) => cache.Truncate(length);

    /// <inheritdoc />
    public void Dispose()
    {
        cache.Dispose();
        mask.Dispose();
    }
}
