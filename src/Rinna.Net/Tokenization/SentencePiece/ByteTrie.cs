using System.Numerics;

namespace Rinna.Net.Tokenization.SentencePiece;

/// <summary>A trie over UTF-8 byte strings mapping each key to a non-negative value (a piece id).</summary>
/// <remarks>
/// Segmentation walks it one byte at a time from every start position, so <see cref="Step"/> is the hot path of
/// encoding: the root's 256 children sit in an array (every walk starts there) and the other edges in an
/// open-addressing hash table keyed by (node, byte), which is several times faster than a general dictionary.
/// </remarks>
internal sealed class ByteTrie
{
    public const int Root = 0;
    private const int NoNode = -1;
    private const long EmptySlot = -1;

    private readonly int[] rootChildren = Enumerable.Repeat(NoNode, 256).ToArray();
    private readonly List<int> values = [NoNode];
    private long[] edgeKeys = [EmptySlot, EmptySlot];
    private int[] edgeTargets = new int[2];
    private int edgeCount;
    private int shift = 63;

    /// <summary>Adds a key; returns false (and changes nothing) when the key is already present.</summary>
    public bool TryAdd(ReadOnlySpan<byte> key, int value)
    {
        var node = Root;
        foreach (var b in key)
        {
            var child = Step(node, b);
            if (child == NoNode)
            {
                child = values.Count;
                values.Add(NoNode);
                if (node == Root) rootChildren[b] = child;
                else AddEdge(EdgeKey(node, b), child);
            }

            node = child;
        }

        if (values[node] != NoNode) return false;
        values[node] = value;
        return true;
    }

    /// <summary>The child of <paramref name="node"/> along <paramref name="b"/>, or -1.</summary>
    public int Step(int node, byte b)
    {
        if (node == Root) return rootChildren[b];
        var key = EdgeKey(node, b);
        var mask = edgeKeys.Length - 1;
        for (var slot = Slot(key); ; slot = (slot + 1) & mask)
        {
            var found = edgeKeys[slot];
            if (found == key) return edgeTargets[slot];
            if (found == EmptySlot) return NoNode;
        }
    }

    /// <summary>The value stored at <paramref name="node"/>, or -1 when no key ends there.</summary>
    public int ValueAt(int node) => values[node];

    /// <summary>The value of <paramref name="key"/>, or -1 when absent.</summary>
    public int Find(ReadOnlySpan<byte> key)
    {
        var node = Root;
        foreach (var b in key)
        {
            node = Step(node, b);
            if (node == NoNode) return NoNode;
        }

        return values[node];
    }

    /// <summary>Length in bytes of the longest key that is a prefix of <paramref name="text"/> (0 if none).</summary>
    public int LongestPrefixLength(ReadOnlySpan<byte> text)
    {
        var node = Root;
        var longest = 0;
        for (var i = 0; i < text.Length; i++)
        {
            node = Step(node, text[i]);
            if (node == NoNode) break;
            if (values[node] != NoNode) longest = i + 1;
        }

        return longest;
    }

    private void AddEdge(long key, int target)
    {
        // Keep the table at most half full so probe sequences stay short.
        if ((edgeCount + 1) * 2 > edgeKeys.Length) Grow();
        Insert(key, target);
        edgeCount++;
    }

    private void Grow()
    {
        var (oldKeys, oldTargets) = (edgeKeys, edgeTargets);
        edgeKeys = new long[oldKeys.Length * 2];
        Array.Fill(edgeKeys, EmptySlot);
        edgeTargets = new int[edgeKeys.Length];
        shift = 64 - BitOperations.Log2((uint)edgeKeys.Length);
        for (var i = 0; i < oldKeys.Length; i++)
            if (oldKeys[i] != EmptySlot) Insert(oldKeys[i], oldTargets[i]);
    }

    private void Insert(long key, int target)
    {
        var mask = edgeKeys.Length - 1;
        var slot = Slot(key);
        while (edgeKeys[slot] != EmptySlot) slot = (slot + 1) & mask;
        edgeKeys[slot] = key;
        edgeTargets[slot] = target;
    }

    private int Slot(long key) => (int)((ulong)(key * unchecked((long)0x9E3779B97F4A7C15)) >> shift);

    private static long EdgeKey(int node, byte b) => ((long)node << 8) | b;
}
