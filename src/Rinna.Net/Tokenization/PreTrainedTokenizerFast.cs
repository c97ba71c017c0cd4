using System.Text;
using Rinna.Net.Tokenization.Fast;

namespace Rinna.Net.Tokenization;

/// <summary>
/// Hugging Face's <c>PreTrainedTokenizerFast</c> over a <c>tokenizer.json</c>: the tokenizer GPT-NeoX models such as
/// EleutherAI's pythia and CyberAgent's open-calm ship (byte-level BPE). Encoding follows the Rust <c>tokenizers</c>
/// pipeline — added tokens matched first (leftmost, longest), the normalizer on the text between them, the ByteLevel
/// pre-tokenizer, BPE, then the post-processor when special tokens are requested — and decoding maps the byte-level
/// characters back to UTF-8, optionally dropping special tokens and cleaning up spaces before punctuation.
/// </summary>
public sealed class PreTrainedTokenizerFast : PreTrainedTokenizer
{
    private readonly FastTokenizerDefinition definition;
    private readonly Dictionary<int, AddedToken> addedById;
    private readonly Dictionary<string, AddedToken> addedByContent;
    private readonly HashSet<int> specialIds;
    private readonly AddedTokenMatcher rawMatcher;
    private readonly AddedTokenMatcher normalizedMatcher;
    private readonly PostProcessor postProcessor;
    [ThreadStatic]
    private static long lastWork;

    internal PreTrainedTokenizerFast(FastTokenizerDefinition definition, SpecialTokens specialTokens, PostProcessor postProcessor, bool cleanUpTokenizationSpaces)
        : base(specialTokens)
    {
        this.definition = definition;
        this.postProcessor = postProcessor;
        CleanUpTokenizationSpaces = cleanUpTokenizationSpaces;
        Rules = new DecodeRules(
            StripAllLeadingSpaceSymbolsOfFirstToken: false, SpaceBeforeLeadingSpecial: false, StripResult: false, CleanUpTokenizationSpaces: cleanUpTokenizationSpaces);
        addedById = definition.AddedTokens.ToDictionary(t => t.Id);
        addedByContent = definition.AddedTokens.ToDictionary(t => t.Content, StringComparer.Ordinal);
        specialIds = [.. definition.AddedTokens.Where(t => t.Special).Select(t => t.Id), .. specialTokens.AllIds];
        rawMatcher = new AddedTokenMatcher(definition.AddedTokens.Where(t => !t.Normalized).Select(t => (t.Content, t)));
        normalizedMatcher = new AddedTokenMatcher(definition.AddedTokens.Where(t => t.Normalized)
            .Select(t => (definition.Normalizer?.Normalize(t.Content) ?? t.Content, t)));
        Count = Math.Max(Math.Max(definition.Model.IdLimit, definition.AddedTokens.Count == 0 ? 0 : definition.AddedTokens.Max(t => t.Id) + 1), specialTokens.Count);
    }

    /// <summary>Number of pieces in the BPE model's vocabulary (<c>vocab_size</c>), without added tokens.</summary>
    public override int VocabSize => definition.Model.Size;

    /// <inheritdoc/>
    public override int Count { get; }

    /// <summary>Whether <see cref="PreTrainedTokenizer.Decode"/> removes the space before punctuation and contractions (<c>clean_up_tokenization_spaces</c>).</summary>
    public bool CleanUpTokenizationSpaces { get; }

    /// <summary>Whether the ByteLevel pre-tokenizer puts a space before text that does not start with one (<c>add_prefix_space</c>).</summary>
    public bool AddPrefixSpace => definition.PreTokenizer?.AddPrefixSpace ?? false;

    internal DecodeRules Rules { get; }

    internal bool ByteLevelDecoder => definition.ByteLevelDecoder;

    internal FastTokenizerDefinition Definition => definition;

    /// <summary>Units of work the last encode on this thread did (characters scanned, merges tried), for the linear-time tests.</summary>
    internal static long LastEncodeWork => lastWork;

    /// <inheritdoc/>
    /// <exception cref="ArgumentException"><paramref name="text"/> contains an unpaired surrogate (Hugging Face rejects such strings too).</exception>
    public override IReadOnlyList<string> Tokenize(string text)
    {
        var tokens = new List<string>();
        Run(text, [], tokens);
        return tokens;
    }

    /// <inheritdoc/>
    /// <exception cref="ArgumentException"><paramref name="text"/> contains an unpaired surrogate (Hugging Face rejects such strings too).</exception>
    public override int[] Encode(string text, bool addSpecialTokens = true)
    {
        var ids = EncodeWithoutSpecialTokens(text);
        return addSpecialTokens ? postProcessor.Apply(ids) : [.. ids];
    }

    private protected override int[] EncodeTruncated(string text, bool addSpecialTokens, int maxLength)
    {
        var ids = EncodeWithoutSpecialTokens(text);
        var reserved = addSpecialTokens ? postProcessor.AddedCount : 0;
        if (maxLength < reserved)
            throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, $"must leave room for the {reserved} special token(s) the tokenizer adds");
        if (ids.Count > maxLength - reserved) ids.RemoveRange(maxLength - reserved, ids.Count - (maxLength - reserved));
        return addSpecialTokens ? postProcessor.Apply(ids) : [.. ids];
    }

    private List<int> EncodeWithoutSpecialTokens(string text)
    {
        var ids = new List<int>();
        Run(text, ids, null);
        return ids;
    }

    /// <summary>The encode pipeline: appends the ids, and with <paramref name="tokens"/> the token strings (an added token's matched text).</summary>
    private void Run(string text, List<int> ids, List<string>? tokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') >= 0 && !IsWellFormed(text))
            throw new ArgumentException("The text contains an unpaired surrogate, which is not Unicode text.", nameof(text));

        long work = 0;
        var rawPieces = new List<Piece>();
        var pieces = new List<Piece>();
        rawMatcher.Split(text, rawPieces, ref work);
        foreach (var raw in rawPieces)
        {
            if (raw.TokenId is { } rawId)
            {
                ids.Add(rawId);
                tokens?.Add(raw.Text);
                continue;
            }

            var normalized = definition.Normalizer?.Normalize(raw.Text) ?? raw.Text;
            work += raw.Text.Length;
            pieces.Clear();
            normalizedMatcher.Split(normalized, pieces, ref work);
            foreach (var piece in pieces)
            {
                if (piece.TokenId is { } id)
                {
                    ids.Add(id);
                    tokens?.Add(piece.Text);
                    continue;
                }

                var first = ids.Count;
                if (definition.PreTokenizer is { } preTokenizer)
                    definition.Model.EncodeByteLevel(preTokenizer.Prepare(piece.Text), preTokenizer.UseRegex, ids, ref work);
                else
                    definition.Model.EncodeWord(piece.Text, ids, ref work);
                if (tokens is not null)
                    for (var i = first; i < ids.Count; i++) tokens.Add(definition.Model.IdToToken(ids[i])!);
            }
        }

        lastWork = work;
    }

    private static bool IsWellFormed(string text)
    {
        for (var i = 0; i < text.Length; i++)
        {
            if (!char.IsSurrogate(text[i])) continue;
            if (!char.IsHighSurrogate(text[i]) || i + 1 >= text.Length || !char.IsLowSurrogate(text[i + 1])) return false;
            i++;
        }

        return true;
    }

    /// <inheritdoc/>
    public override string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        ArgumentNullException.ThrowIfNull(ids);
        if (!ByteLevelDecoder)
        {
            var tokens = new List<string>();
            foreach (var id in ids)
                if (DecodeToken(id, skipSpecialTokens) is { } token) tokens.Add(token);
            return Finish(string.Join(' ', tokens));
        }

        var bytes = new List<byte>();
        foreach (var id in ids)
            if (DecodeToken(id, skipSpecialTokens) is { } token) ByteLevelAlphabet.AppendBytes(token, bytes);
        return Finish(Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes)));
    }

    private string Finish(string text) => CleanUpTokenizationSpaces ? DecodeRules.CleanUp(text) : text;

    /// <summary>The token <c>decode</c> passes to the decoder for <paramref name="id"/>, or null when it is skipped.</summary>
    internal string? DecodeToken(int id, bool skipSpecialTokens)
    {
        var token = IdToToken(id);
        return skipSpecialTokens && specialIds.Contains(id) ? null : token;
    }

    /// <inheritdoc/>
    public override string[] ConvertIdsToTokens(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>();
        foreach (var id in ids)
        {
            var token = IdToToken(id);
            if (skipSpecialTokens && Special.IdSet.Contains(id)) continue;
            tokens.Add(token);
        }

        return [.. tokens];
    }

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">A token is unknown and the tokenizer has no unknown token (Hugging Face returns <c>None</c>).</exception>
    public override int[] ConvertTokensToIds(IEnumerable<string> tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        return tokens.Select(token =>
        {
            ArgumentNullException.ThrowIfNull(token, nameof(tokens));
            if (addedByContent.TryGetValue(token, out var added)) return added.Id;
            if (definition.Model.TryGetId(token, out var id)) return id;
            return UnkTokenId ?? throw new ArgumentException($"'{token}' is not in the vocabulary and the tokenizer has no unknown token", nameof(tokens));
        }).ToArray();
    }

    /// <inheritdoc/>
    public override StreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = false) => new FastStreamingDecoder(this, skipSpecialTokens);

    /// <summary>An added token's content, otherwise the vocabulary's token.</summary>
    /// <exception cref="TokenizerException">The id is neither.</exception>
    internal string IdToToken(int id)
    {
        if (addedById.TryGetValue(id, out var added)) return added.Content;
        return definition.Model.IdToToken(id)
            ?? throw new TokenizerException(null, null, $"token id {id} is outside the vocabulary (0..{definition.Model.IdLimit - 1} and added tokens up to {Count - 1})");
    }
}
