namespace Rinna.Net.Tokenization;

internal sealed record SpecialToken(string Content, int Id);

/// <summary>
/// The special tokens of a tokenizer and their ids, in Hugging Face's attribute order
/// (<c>bos, eos, unk, sep, pad, cls, mask</c>, then <c>additional_special_tokens</c>).
/// </summary>
internal sealed class SpecialTokens
{
    public static readonly string[] AttributeNames = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

    private readonly Dictionary<string, int> idsByContent = new(StringComparer.Ordinal);
    private readonly Dictionary<int, string> contentsById = [];
    private readonly SpecialToken?[] byAttribute;
    private readonly char[] firstChars;

    /// <param name="attributeContents">Content per entry of <see cref="AttributeNames"/> (null when unset).</param>
    /// <param name="additional">Contents of <c>additional_special_tokens</c>.</param>
    /// <param name="resolveId">Id of a content: its vocabulary id, an id the configuration fixes, or null for "append after the vocabulary".</param>
    /// <param name="firstFreeId">First id after the vocabulary.</param>
    public SpecialTokens(IReadOnlyList<string?> attributeContents, IReadOnlyList<string> additional, Func<string, int?> resolveId, int firstFreeId)
    {
        var next = firstFreeId;
        var all = new List<string>();
        foreach (var content in attributeContents.Concat(additional))
        {
            if (content is null || idsByContent.ContainsKey(content)) continue;
            var id = resolveId(content) ?? next++;
            idsByContent[content] = id;
            contentsById.TryAdd(id, content);
            all.Add(content);
        }

        byAttribute = attributeContents.Select(c => c is null ? null : new SpecialToken(c, idsByContent[c])).ToArray();
        AllContents = all;
        AllIds = all.Select(c => idsByContent[c]).ToArray();
        IdSet = AllIds.ToHashSet();
        firstChars = all.Select(c => c[0]).Distinct().ToArray();
        // Longest first, so that at one position the longest content wins (Hugging Face's trie split).
        ContentsLongestFirst = all.OrderByDescending(c => c.Length).ToArray();
        Count = idsByContent.Count == 0 ? firstFreeId : Math.Max(firstFreeId, idsByContent.Values.Max() + 1);
    }

    public SpecialToken? Bos => byAttribute[0];

    public SpecialToken? Eos => byAttribute[1];

    public SpecialToken? Unk => byAttribute[2];

    public SpecialToken? Sep => byAttribute[3];

    public SpecialToken? Pad => byAttribute[4];

    public SpecialToken? Cls => byAttribute[5];

    public SpecialToken? Mask => byAttribute[6];

    public IReadOnlyList<string> AllContents { get; }

    public IReadOnlyList<int> AllIds { get; }

    public IReadOnlySet<int> IdSet { get; }

    /// <summary>Ids the tokenizer can produce: the vocabulary plus special tokens appended after it.</summary>
    public int Count { get; }

    private string[] ContentsLongestFirst { get; }

    public bool TryGetId(string content, out int id) => idsByContent.TryGetValue(content, out id);

    public bool TryGetContent(int id, out string content) => contentsById.TryGetValue(id, out content!);

    public bool IsSpecialContent(string token) => idsByContent.ContainsKey(token);

    /// <summary>
    /// Splits <paramref name="text"/> at special-token contents (leftmost, longest match, no whitespace stripping);
    /// yields each piece with its id when it is a special token. Empty pieces are skipped.
    /// </summary>
    public IEnumerable<(string Text, int? SpecialId)> Split(string text)
    {
        var chunkStart = 0;
        var position = 0;
        while (position < text.Length)
        {
            var next = firstChars.Length == 0 ? -1 : text.IndexOfAny(firstChars, position);
            if (next < 0) break;
            var match = ContentsLongestFirst.FirstOrDefault(c => next + c.Length <= text.Length && string.CompareOrdinal(text, next, c, 0, c.Length) == 0);
            if (match is null)
            {
                position = next + 1;
                continue;
            }

            if (next > chunkStart) yield return (text[chunkStart..next], null);
            yield return (match, idsByContent[match]);
            position = chunkStart = next + match.Length;
        }

        if (chunkStart < text.Length) yield return (text[chunkStart..], null);
    }
}
