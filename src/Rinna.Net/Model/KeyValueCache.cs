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
    public KeyValueCache(int layers, int reservedLength = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layers);
        ArgumentOutOfRangeException.ThrowIfNegative(reservedLength);
        keys = new Tensor?[layers];
        values = new Tensor?[layers];
        reserved = reservedLength;
    }

    /// <summary>Number of tokens cached.</summary>
    public int Length { get; private set; }

    /// <summary>Rows (sequences) in the cache; 0 while empty.</summary>
    public long BatchSize { get; private set; }

    /// <summary>Tokens the cache can hold before it must grow.</summary>
    public int Capacity => keys[0] is { } k ? (int)k.shape[2] : reserved;

    /// <summary>Bytes of native memory held.</summary>
    public long SizeInBytes => keys.Concat(values).Sum(t => t is null ? 0 : t.NumberOfElements * t.ElementSize);

    /// <summary>Stores a layer's keys and values for positions <c>past .. past + seq</c>; returns views of all cached positions.</summary>
    internal (Tensor Keys, Tensor Values) Write(int layer, Tensor key, Tensor value, int past)
    {
        long length = key.shape[2];
        int needed = checked(past + (int)length);
        EnsureCapacity(layer, key, value, past, needed);
        var keyStore = keys[layer]!;
        var valueStore = values[layer]!;
        keyStore.narrow(2, past, length).copy_(key);
        valueStore.narrow(2, past, length).copy_(value);
        return (keyStore.narrow(2, 0, needed), valueStore.narrow(2, 0, needed));
    }

    internal void Advance(int tokens, int batch)
    {
        Length += tokens;
        BatchSize = batch;
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

    private void EnsureCapacity(int layer, Tensor key, Tensor value, int past, int needed)
    {
        var current = keys[layer];
        if (current is not null && current.shape[2] >= needed && current.shape[0] == key.shape[0]) return;
        int capacity = Math.Max(needed, Math.Max(reserved, current is null ? 0 : 2 * (int)current.shape[2]));
        long[] shape = [key.shape[0], key.shape[1], capacity, key.shape[3]];
        var newKeys = zeros(shape, key.dtype, key.device).DetachFromDisposeScope();
        var newValues = zeros(shape, value.dtype, value.device).DetachFromDisposeScope();
        if (current is not null && past > 0)
        {
            newKeys.narrow(2, 0, past).copy_(current.narrow(2, 0, past));
            newValues.narrow(2, 0, past).copy_(values[layer]!.narrow(2, 0, past));
        }
        current?.Dispose();
        values[layer]?.Dispose();
        keys[layer] = newKeys;
        values[layer] = newValues;
    }
}
