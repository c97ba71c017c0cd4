namespace Rinna.Net.Generation;

/// <summary>
/// The KV caches of finished requests, kept for the next request that starts with the same tokens (llama.cpp server's
/// prompt cache, vLLM's prefix caching): a chat's next turn repeats the whole conversation so far, and with its cache only
/// the new tokens are prefilled. Bounded in bytes; the least recently used cache leaves first.
/// </summary>
/// <remarks>
/// A cache is lent to one request at a time: <see cref="Take"/> removes it, and the request returns it (grown by its own
/// tokens) when it finishes. A cache whose tokens another one extends is dropped, since the longer one serves every
/// prompt the shorter one could. Used from the scheduler's loop thread; the lock only guards disposal from another thread.
/// </remarks>
internal sealed class PrefixCache : IDisposable
{
    /// <summary>A shorter match is not worth taking another conversation's cache for: prefilling 16 tokens is cheap.</summary>
    public const int MinimumReuse = 16;

    private readonly Lock gate = new();
    private readonly LinkedList<(long[] Tokens, ModelStepper Stepper, long Bytes)> entries = new();
    private bool disposed;

    /// <param name="capacityBytes">The most bytes of KV cache kept for reuse.</param>
    public PrefixCache(long capacityBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacityBytes);
        CapacityBytes = capacityBytes;
    }

    /// <summary>The most bytes kept.</summary>
    public long CapacityBytes { get; }

    /// <summary>Bytes of KV cache held now.</summary>
    public long SizeInBytes { get; private set; }

    /// <summary>Caches held now.</summary>
    public int Count
    {
        get
        {
            lock (gate) return entries.Count;
        }
    }

    /// <summary>
    /// Keeps <paramref name="stepper"/>, whose cache holds exactly <paramref name="tokens"/>, taking ownership of it;
    /// evicts the least recently used caches beyond the capacity (a cache larger than the capacity is disposed at once).
    /// </summary>
    public void Add(long[] tokens, ModelStepper stepper)
    {
        long bytes = stepper.CacheBytes;
        lock (gate)
        {
            if (disposed || bytes > CapacityBytes || tokens.Length == 0)
            {
                stepper.Dispose();
                return;
            }
            for (var node = entries.First; node is not null;)
            {
                var next = node.Next;
                if (node.Value.Tokens.Length <= tokens.Length && CommonPrefix(node.Value.Tokens, tokens) == node.Value.Tokens.Length) Remove(node);
                node = next;
            }
            entries.AddFirst((tokens, stepper, bytes));
            SizeInBytes += bytes;
            while (SizeInBytes > CapacityBytes && entries.Last is { } oldest) Remove(oldest);
        }
    }

    /// <summary>
    /// Lends the cache sharing the longest prefix with <paramref name="prompt"/> (at least <see cref="MinimumReuse"/>
    /// tokens, or all but the prompt's last token for a shorter prompt), cut back to that prefix; <c>null</c> when none does.
    /// The prompt's last token is always left to prefill, because its logits pick the first new token.
    /// </summary>
    public (ModelStepper Stepper, int Reused)? Take(long[] prompt)
    {
        lock (gate)
        {
            LinkedListNode<(long[] Tokens, ModelStepper Stepper, long Bytes)>? best = null;
            int bestLength = 0;
            for (var node = entries.First; node is not null; node = node.Next)
            {
                int length = Math.Min(CommonPrefix(node.Value.Tokens, prompt), prompt.Length - 1);
                if (length > bestLength)
                {
                    best = node;
                    bestLength = length;
                }
            }
            if (best is null || bestLength < Math.Min(MinimumReuse, prompt.Length - 1)) return null;
            var stepper = best.Value.Stepper;
            entries.Remove(best);
            SizeInBytes -= best.Value.Bytes;
            stepper.Truncate(bestLength);
            return (stepper, bestLength);
        }
    }

    /// <summary>Disposes every cache held.</summary>
    public void Dispose()
    {
        lock (gate)
        {
            disposed = true;
            while (entries.First is { } node) Remove(node);
        }
    }

    private void Remove(LinkedListNode<(long[] Tokens, ModelStepper Stepper, long Bytes)> node)
    {
        entries.Remove(node);
        SizeInBytes -= node.Value.Bytes;
        node.Value.Stepper.Dispose();
    }

    private static int CommonPrefix(long[] a, long[] b)
    {
        int length = Math.Min(a.Length, b.Length);
        return a.AsSpan(0, length).CommonPrefixLength(b.AsSpan(0, length));
    }
}
