using static TorchSharp.torch;

namespace Rinna.Net.Model;

/// <summary>
/// Keys and values of every attention layer for the tokens seen so far (HF's <c>past_key_values</c>).
/// Storage is allocated once for the expected length and written in place; it grows (by doubling) only when a
/// caller goes past what it reserved. Each layer's tensors live on that layer's device.
/// </summary>
/// <remarks>Keys are kept in float32 (as HF does: they leave the float32 rotary embedding), values in the compute dtype.</remarks>
public sealed class KeyValueCache : IDisposable
{
    private readonly Tensor?[] keys;
    private readonly Tensor?[] values;
    private readonly int reserved;

    /// <summary>Creates an empty cache.</summary>
    /// <param name="layers">Number of attention layers.</param>
    /// <param name="reservedLength">Tokens to allocate room for up front (prompt + new tokens); 0 allocates what the first call needs.</param>
    /// <param name="maxLength">The most tokens callers will store: growth by doubling stops there (a call that needs more still gets it).</param>
    public KeyValueCache(int layers, int reservedLength = 0, int maxLength = int.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layers);
        ArgumentOutOfRangeException.ThrowIfNegative(reservedLength);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxLength);
        keys = new Tensor?[layers];
        values = new Tensor?[layers];
        reserved = reservedLength;
        MaxLength = maxLength;
    }

    /// <summary>The most tokens callers will store: growth by doubling stops there. A cache lent to a longer request raises it.</summary>
    internal int MaxLength { get; set; }

    /// <summary>Number of tokens cached.</summary>
    public int Length { get; private set; }

    /// <summary>Rows (sequences) in the cache; 0 while empty.</summary>
    public long BatchSize { get; private set; }

    /// <summary>Tokens the cache can hold before it must grow.</summary>
    public int Capacity => keys[0] is { } k ? (int)k.size(2) : reserved;

    /// <summary>Bytes of native memory held.</summary>
    public long SizeInBytes => keys.Concat(values).Sum(t => t is null ? 0 : t.NumberOfElements * t.ElementSize);

    /// <summary>Stores a layer's keys and values for positions <c>past .. past + seq</c>; returns views of all cached positions.</summary>
    internal (Tensor Keys, Tensor Values) Write(int layer, Tensor key, Tensor value, int past)
    {
        long length = key.size(2);
        int needed = checked(past + (int)length);
        var (keyStore, valueStore) = Storage(layer, key.size(0), key.size(1), key.size(3), key.dtype, value.dtype, key.device, past, needed);
        keyStore.narrow(2, past, length).copy_(key);
        valueStore.narrow(2, past, length).copy_(value);
        return (keyStore.narrow(2, 0, needed), valueStore.narrow(2, 0, needed));
    }

    /// <summary>
    /// A layer's whole key and value storage <c>[batch, heads, capacity, head_size]</c>, grown (keeping positions before
    /// <paramref name="past"/>) until it holds <paramref name="needed"/> positions, for a caller that writes them itself.
    /// </summary>
    internal (Tensor Keys, Tensor Values) Storage(int layer, long batch, long heads, long headSize, ScalarType keyType, ScalarType valueType,
        Device device, int past, int needed)
    {
        var current = keys[layer];
        if (current is not null && current.size(2) >= needed && current.size(0) == batch) return (current, values[layer]!);
        long doubled = current is null ? 0 : 2L * current.size(2);
        int capacity = Math.Max(needed, (int)Math.Min(MaxLength, Math.Max(reserved, doubled)));
        long[] shape = [batch, heads, capacity, headSize];
        var newKeys = zeros(shape, keyType, device).DetachFromDisposeScope();
        var newValues = zeros(shape, valueType, device).DetachFromDisposeScope();
        if (current is not null && past > 0)
        {
            newKeys.narrow(2, 0, past).copy_(current.narrow(2, 0, past));
            newValues.narrow(2, 0, past).copy_(values[layer]!.narrow(2, 0, past));
        }
        current?.Dispose();
        values[layer]?.Dispose();
        keys[layer] = newKeys;
        values[layer] = newValues;
        return (newKeys, newValues);
    }

    internal void Advance(int tokens, int batch)
    {
        Length += tokens;
        BatchSize = batch;
    }

    /// <summary>
    /// Reorders the cached rows for beam search (HF's <c>_reorder_cache</c>): row <c>i</c> becomes the old row
    /// <c>beamIndices[i]</c>. Only the cached positions are gathered, into each layer's storage in place, so a step copies
    /// the cached tokens once (plus the gather's temporary) and never reallocates the storage.
    /// </summary>
    /// <param name="beamIndices">One source row per row, <c>[batch]</c>, int64, any device.</param>
    internal void Reorder(Tensor beamIndices)
    {
        if (beamIndices.dim() != 1 || (BatchSize > 0 && beamIndices.size(0) != BatchSize))
            throw new ArgumentException($"expected one source row per cached row ({BatchSize}), got [{string.Join(", ", beamIndices.shape)}].", nameof(beamIndices));
        if (Length == 0) return;
        for (int layer = 0; layer < keys.Length; layer++)
        {
            if (keys[layer] is not { } k) continue;
            using var scope = NewDisposeScope();
            var index = beamIndices.to(ScalarType.Int64, k.device);
            foreach (var store in new[] { k, values[layer]! })
            {
                var used = store.narrow(2, 0, Length);
                used.copy_(used.index_select(0, index));
            }
        }
    }

    /// <summary>
    /// Forgets the cached tokens from position <paramref name="length"/> on (HF's <c>DynamicCache.crop</c>), e.g. the
    /// rejected proposals of speculative decoding; their storage is overwritten by the next call.
    /// </summary>
    internal void Truncate(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Length);
        Length = length;
        if (length == 0) BatchSize = 0;
    }

    /// <summary>Forgets every cached token but keeps the storage for reuse.</summary>
    public void Clear()
    {
        Length = 0;
        BatchSize = 0;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i]?.Dispose();
            values[i]?.Dispose();
            keys[i] = values[i] = null;
        }
    }
}
