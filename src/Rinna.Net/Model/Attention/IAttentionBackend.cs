using static TorchSharp.torch;

namespace Rinna.Net.Model.Attention;

/// <summary>
/// One attention call of a layer, from its fused query/key/value projection onwards: what an attention backend needs to
/// apply the rotary embedding, write the cache and attend.
/// </summary>
/// <param name="Projected">The fused projection <c>[batch, seq, heads · 3 · head_size]</c>, each head's q, k and v side by side.</param>
/// <param name="Cos">Rotary cosines <c>[batch, 1, seq, rotary_dims]</c>, float32.</param>
/// <param name="Sin">Rotary sines, like <paramref name="Cos"/>.</param>
/// <param name="PaddingBias">The additive padding bias <c>[batch, 1, 1, past + seq]</c>, or <c>null</c> without padding.</param>
/// <param name="Cache">The key/value cache, or <c>null</c> for a call without one.</param>
/// <param name="Layer">The layer's index in the cache.</param>
/// <param name="Past">Tokens already in the cache.</param>
/// <param name="HeadSize">Elements per head.</param>
/// <param name="RotaryDims">Leading elements of each head that are rotated.</param>
internal readonly record struct AttentionCall(Tensor Projected, Tensor Cos, Tensor Sin, Tensor? PaddingBias, KeyValueCache? Cache,
    int Layer, int Past, int HeadSize, int RotaryDims);

/// <summary>
/// One decode step of a layer over rows that each have their own cache (continuous batching): one new token per row,
/// no padding.
/// </summary>
/// <param name="Projected">The fused projection <c>[rows, 1, heads · 3 · head_size]</c>.</param>
/// <param name="Cos">Each row's rotary cosines, <c>rows · rotary_dims</c> float32 values, contiguous.</param>
/// <param name="Sin">Each row's rotary sines, like <paramref name="Cos"/>.</param>
/// <param name="Caches">Each row's cache, holding that row's earlier tokens.</param>
/// <param name="Layer">The layer's index in the caches.</param>
/// <param name="HeadSize">Elements per head.</param>
/// <param name="RotaryDims">Leading elements of each head that are rotated.</param>
internal readonly record struct AttentionRowsCall(Tensor Projected, Tensor Cos, Tensor Sin, IReadOnlyList<KeyValueCache> Caches,
    int Layer, int HeadSize, int RotaryDims);

/// <summary>
/// An implementation of a whole attention call that a device, dtype or phase has a faster kernel for (transformers'
/// <c>attention_interface</c>). The model's own math is the reference every backend must equal within rounding.
/// </summary>
internal interface IAttentionBackend
{
    /// <summary>
    /// Rotary embedding, cache write and attention for <paramref name="call"/>, giving the context
    /// <c>[batch, seq, heads · head_size]</c> in the projection's dtype; false, leaving the cache's contents as they
    /// were, for a call this backend does not take.
    /// </summary>
    bool TryAttend(in AttentionCall call, out Tensor context);

    /// <summary>
    /// <see cref="TryAttend"/> for every row of <paramref name="call"/> in one call, each row as a call of its own would
    /// compute it, giving the contexts <c>[rows, 1, heads · head_size]</c>; false, leaving the caches' contents as they
    /// were, for a call this backend does not take.
    /// </summary>
    bool TryAttendRows(in AttentionRowsCall call, out Tensor context);
}
