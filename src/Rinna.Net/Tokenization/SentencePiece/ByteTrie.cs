namespace Rinna.Net.Tokenization.SentencePiece;

/// <summary>A trie over UTF-8 byte strings mapping each key to a non-negative value (a piece id).</summary>
/// <remarks>
/// Segmentation walks it one byte at a time from every start position, so the cost of encoding is linear in the
/// text length times the longest piece; the root's 256 children sit in an array because every walk starts there.
/// </remarks>
internal sealed class ByteTrie
{
    private const int NoNode = -1;
    private readonly int[] rootChildren = Enumerable.Repeat(NoNode, 256).ToArray();
    private readonly Dictionary<long, int> edges = [];
    private readonly List<int> values = [NoNode];

    public const int Root = 0;

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
                else edges.Add(EdgeKey(node, b), child);
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
        return edges.TryGetValue(EdgeKey(node, b), out var child) ? child : NoNode;
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

    private static long EdgeKey(int node, byte b) => ((long)node << 8) | b;
}
