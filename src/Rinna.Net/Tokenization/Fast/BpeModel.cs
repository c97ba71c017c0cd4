using System.Text;
using Microsoft.ML.Tokenizers;

namespace Rinna.Net.Tokenization.Fast;

/// <summary>
/// The <c>BPE</c> model of <c>tokenizer.json</c>: a word (already in byte-level characters when a ByteLevel
/// pre-tokenizer runs) becomes one symbol per character, then the adjacent pair with the lowest merge rank is merged
/// (leftmost first on ties) until no listed pair is left.
/// </summary>
/// <remarks>
/// Behind a ByteLevel pre-tokenizer, each run of words of up to <see cref="MaxWordLengthForMLTokenizers"/> characters
/// goes to Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/> in one call, in its byte-level mode (which maps the
/// words to byte-level characters and applies the same merges; its non-byte-level mode, fed byte-level characters,
/// leaves merges such as <c>è ¼</c> undone, so it is not used), with this library's GPT-2 splitter as its
/// pre-tokenizer. Its merge loop grows quadratically with the word, so a longer word (Japanese text without
/// punctuation is one <c>\p{L}+</c> word) is mapped and merged here with a heap, in O(n log n). Options that tokenizer
/// does not have in the same form (an unknown token, <c>ignore_merges</c>, merge pieces containing whitespace or
/// starting with <c>#version</c>, a pair listed twice, a vocabulary without a byte that UTF-8 can contain) select this
/// implementation for every word.
/// </remarks>
internal sealed class BpeModel
{
    /// <summary>Longest word handed to Microsoft.ML.Tokenizers.</summary>
    public const int MaxWordLengthForMLTokenizers = 64;

    private readonly Dictionary<string, int> vocabulary;
    private readonly string?[] tokensById;
    private readonly Dictionary<long, (int Rank, int NewId)> merges;
    private readonly int? unknownId;
    private readonly bool fuseUnknown;
    private readonly bool ignoreMerges;
    private readonly BpeTokenizer? ml;
    private readonly bool[] singleCharacterTokens = new bool[char.MaxValue + 1];

    public BpeModel(Dictionary<string, int> vocabulary, IReadOnlyList<(string Left, string Right)> mergeList, string? unknownToken, bool fuseUnknown, bool ignoreMerges,
        Func<string, string, TokenizerException> error)
    {
        this.vocabulary = vocabulary;
        var size = vocabulary.Count == 0 ? 0 : vocabulary.Values.Max() + 1;
        tokensById = new string?[size];
        foreach (var (token, id) in vocabulary)
        {
            if (tokensById[id] is { } other) throw error("model.vocab", $"'{token}' and '{other}' both have id {id}");
            tokensById[id] = token;
            if (token.Length == 1) singleCharacterTokens[token[0]] = true;
        }

        merges = new Dictionary<long, (int, int)>(mergeList.Count);
        var pairListedTwice = false;
        for (var rank = 0; rank < mergeList.Count; rank++)
        {
            var (left, right) = mergeList[rank];
            if (!vocabulary.TryGetValue(left, out var leftId)) throw error("model.merges", $"merge {rank} ('{left} {right}') names '{left}', which is not in the vocabulary");
            if (!vocabulary.TryGetValue(right, out var rightId)) throw error("model.merges", $"merge {rank} ('{left} {right}') names '{right}', which is not in the vocabulary");
            if (!vocabulary.TryGetValue(left + right, out var newId)) throw error("model.merges", $"merge {rank} ('{left} {right}') makes '{left + right}', which is not in the vocabulary");
            // A pair listed twice takes its last rank, as the Rust library's map does.
            pairListedTwice |= !merges.TryAdd(Key(leftId, rightId), (rank, newId));
            merges[Key(leftId, rightId)] = (rank, newId);
        }

        if (unknownToken is not null)
        {
            if (!vocabulary.TryGetValue(unknownToken, out var id)) throw error("model.unk_token", $"'{unknownToken}' is not in the vocabulary");
            unknownId = id;
        }

        this.fuseUnknown = fuseUnknown;
        this.ignoreMerges = ignoreMerges;
        if (unknownToken is null && !ignoreMerges && !pairListedTwice && mergeList.All(m => PlainPiece(m.Left) && PlainPiece(m.Right))
            && Enumerable.Range(0, 256).All(b => b is 0xC0 or 0xC1 or >= 0xF5 || singleCharacterTokens[ByteLevelAlphabet.ToChar((byte)b)]))
        {
            try
            {
                ml = BpeTokenizer.Create(new BpeOptions(vocabulary)
                {
                    Merges = mergeList.Select(m => m.Left + " " + m.Right),
                    ByteLevel = true,
                    // Without one, BpeTokenizer splits at word boundaries and drops whitespace.
                    PreTokenizer = Gpt2Words.Instance,
                });
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
            {
                // A file the checks above accept but that tokenizer refuses is merged here instead.
                ml = null;
            }
        }
    }

    /// <summary>A merge piece Microsoft.ML.Tokenizers reads back as written (it splits merge lines at whitespace and skips a <c>#version</c> header).</summary>
    private static bool PlainPiece(string piece) => !piece.StartsWith("#version", StringComparison.Ordinal) && !piece.Any(char.IsWhiteSpace);

    /// <summary>Number of ids the vocabulary spans (Hugging Face's <c>get_vocab_size</c> for a dense vocabulary).</summary>
    public int Size => vocabulary.Count;

    /// <summary>First id after the vocabulary's largest.</summary>
    public int IdLimit => tokensById.Length;

    public bool TryGetId(string token, out int id) => vocabulary.TryGetValue(token, out id);

    public string? IdToToken(int id) => id >= 0 && id < tokensById.Length ? tokensById[id] : null;

    /// <summary>Whether Microsoft.ML.Tokenizers merges the short words.</summary>
    public bool UsesMLTokenizers => ml is not null;

    /// <summary>
    /// Appends the ids of a stretch of text behind a ByteLevel pre-tokenizer (prefix space already added): split with
    /// GPT-2's pattern when <paramref name="useRegex"/>, each word's UTF-8 bytes merged.
    /// </summary>
    /// <param name="text">The text.</param>
    /// <param name="useRegex">Split into words first (the pre-tokenizer's <c>use_regex</c>); otherwise the text is one word.</param>
    /// <param name="ids">Receives the ids.</param>
    /// <param name="work">Counts characters and merge steps, for the linear-time check.</param>
    public void EncodeByteLevel(string text, bool useRegex, List<int> ids, ref long work)
    {
        if (text.Length == 0) return;
        if (!useRegex || ml is null)
        {
            var position = 0;
            while (position < text.Length)
            {
                var end = useRegex ? ByteLevelPreTokenizer.WordEnd(text, position) : text.Length;
                EncodeWithHeap(ToByteLevel(text.AsSpan(position, end - position)), ids, ref work);
                position = end;
            }

            return;
        }

        // Runs of words short enough go to Microsoft.ML.Tokenizers in one call (its pre-tokenizer splits them the same
        // way again: a run ends where a word ends, and the pattern's only look-ahead sees the run's end as the text's).
        var runStart = 0;
        var at = 0;
        while (at < text.Length)
        {
            var end = ByteLevelPreTokenizer.WordEnd(text, at);
            work += end - at;
            if (end - at > MaxWordLengthForMLTokenizers)
            {
                EncodeRunWithMLTokenizers(text.AsSpan(runStart, at - runStart), ids, ref work);
                EncodeWithHeap(ToByteLevel(text.AsSpan(at, end - at)), ids, ref work);
                runStart = end;
            }

            at = end;
        }

        EncodeRunWithMLTokenizers(text.AsSpan(runStart), ids, ref work);
    }

    /// <summary>Appends the ids of one word that no pre-tokenizer mapped to byte-level characters.</summary>
    public void EncodeWord(string word, List<int> ids, ref long work)
    {
        if (word.Length > 0) EncodeWithHeap(word, ids, ref work);
    }

    private void EncodeRunWithMLTokenizers(ReadOnlySpan<char> run, List<int> ids, ref long work)
    {
        if (run.IsEmpty) return;
        work += run.Length;
        ids.AddRange(ml!.EncodeToIds(run));
    }

    private static string ToByteLevel(ReadOnlySpan<char> word)
    {
        var mapped = new StringBuilder(word.Length * 3);
        ByteLevelAlphabet.Map(word, mapped);
        return mapped.ToString();
    }

    /// <summary>The merge loop of this class alone, whatever the word's length (compared with the other path in tests).</summary>
    internal void EncodeWithHeap(string word, List<int> ids, ref long work)
    {
        if (ignoreMerges && vocabulary.TryGetValue(word, out var whole))
        {
            ids.Add(whole);
            return;
        }

        var symbols = InitialSymbols(word);
        work += word.Length;
        if (symbols.Count > 1) MergeAll(symbols, ref work);
        foreach (var symbol in symbols)
            if (symbol.Length > 0) ids.Add(symbol.Id);
    }

    /// <summary>Microsoft.ML.Tokenizers' result for text before byte-level mapping (tests compare it with <see cref="EncodeWithHeap"/>).</summary>
    internal IReadOnlyList<int>? EncodeWithMLTokenizers(string word) => ml?.EncodeToIds(word);

    private List<Symbol> InitialSymbols(string word)
    {
        var symbols = new List<Symbol>(word.Length);
        Symbol? pendingUnknown = null;
        for (var i = 0; i < word.Length;)
        {
            var length = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            var piece = word.Substring(i, length);
            i += length;
            if (vocabulary.TryGetValue(piece, out var id))
            {
                if (pendingUnknown is { } u) symbols.Add(u);
                pendingUnknown = null;
                symbols.Add(new Symbol(id, 1));
            }
            else if (unknownId is { } unk)
            {
                if (pendingUnknown is { } u && !fuseUnknown) symbols.Add(u);
                pendingUnknown = new Symbol(unk, 1);
            }
            // Without an unknown token the Rust model drops the character.
        }

        if (pendingUnknown is { } last) symbols.Add(last);
        for (var i = 0; i < symbols.Count; i++) symbols[i] = symbols[i] with { Prev = i - 1, Next = i + 1 < symbols.Count ? i + 1 : -1 };
        return symbols;
    }

    private void MergeAll(List<Symbol> symbols, ref long work)
    {
        var queue = new PriorityQueue<(int Position, int RightId, int NewId), (int Rank, int Position)>();
        void Offer(int position)
        {
            var next = symbols[position].Next;
            if (next < 0 || !merges.TryGetValue(Key(symbols[position].Id, symbols[next].Id), out var merge)) return;
            queue.Enqueue((position, symbols[next].Id, merge.NewId), (merge.Rank, position));
        }

        for (var i = 0; i + 1 < symbols.Count; i++) Offer(i);
        while (queue.TryDequeue(out var candidate, out _))
        {
            work++;
            var left = symbols[candidate.Position];
            // Stale entries: the left symbol was merged away or into something else, or its right neighbour changed.
            if (left.Length == 0 || left.Next < 0) continue;
            var right = symbols[left.Next];
            if (!merges.TryGetValue(Key(left.Id, right.Id), out var merge) || merge.NewId != candidate.NewId || right.Id != candidate.RightId) continue;

            symbols[candidate.Position] = left with { Id = merge.NewId, Length = left.Length + right.Length, Next = right.Next };
            symbols[left.Next] = right with { Length = 0 };
            if (right.Next >= 0) symbols[right.Next] = symbols[right.Next] with { Prev = candidate.Position };
            Offer(candidate.Position);
            if (left.Prev >= 0) Offer(left.Prev);
        }
    }

    private static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>GPT-2's pattern on code points (<see cref="ByteLevelPreTokenizer.WordEnd"/>) as a Microsoft.ML.Tokenizers pre-tokenizer.</summary>
    private sealed class Gpt2Words : PreTokenizer
    {
        public static readonly Gpt2Words Instance = new();

        public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) => PreTokenize(text.AsSpan());

        public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text)
        {
            var words = new List<(int, int)>();
            for (var position = 0; position < text.Length;)
            {
                var end = ByteLevelPreTokenizer.WordEnd(text, position);
                words.Add((position, end - position));
                position = end;
            }

            return words;
        }
    }

    private readonly record struct Symbol(int Id, int Length, int Prev = -1, int Next = -1);
}
