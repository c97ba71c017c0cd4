using Rinna.Net.Tokenization.SentencePiece;

namespace Rinna.Net.Tokenization;

/// <summary>
/// A Hugging Face slow tokenizer over a SentencePiece model (<c>legacy=True</c> behaviour of transformers 4.36):
/// the text is split at special-token strings, each other chunk is encoded by SentencePiece exactly as the C++
/// library does, and decoding follows the class's <c>convert_tokens_to_string</c>.
/// </summary>
public abstract class SlowSentencePieceTokenizer : PreTrainedTokenizer
{
    private protected SlowSentencePieceTokenizer(SentencePieceModel model, SpecialTokens specialTokens, DecodeRules rules)
        : base(specialTokens)
    {
        Model = model;
        Rules = rules;
    }

    internal SentencePieceModel Model { get; }

    internal DecodeRules Rules { get; }

    /// <summary>Number of pieces in the SentencePiece model.</summary>
    public override int VocabSize => Model.PieceCount;

    /// <inheritdoc/>
    public override int Count => Special.Count;

    /// <summary>Whether <see cref="PreTrainedTokenizer.Decode"/> removes the space before punctuation and contractions (<c>clean_up_tokenization_spaces</c>).</summary>
    public bool CleanUpTokenizationSpaces => Rules.CleanUpTokenizationSpaces;

    /// <inheritdoc/>
    public override IReadOnlyList<string> Tokenize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tokens = new List<string>();
        var ids = new List<int>();
        foreach (var (chunk, specialId) in Special.Split(text))
        {
            if (specialId is not null)
            {
                tokens.Add(chunk);
                continue;
            }

            ids.Clear();
            Model.Encode(chunk, ids);
            foreach (var id in ids) tokens.Add(Model.IdToPiece(id));
        }

        return tokens;
    }

    /// <inheritdoc/>
    public override int[] Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = EncodeWithoutSpecialTokens(text);
        return addSpecialTokens ? BuildInputsWithSpecialTokens(ids) : [.. ids];
    }

    private protected override int[] EncodeTruncated(string text, bool addSpecialTokens, int maxLength)
    {
        var ids = EncodeWithoutSpecialTokens(text);
        var reserved = addSpecialTokens ? BuildInputsWithSpecialTokens([]).Length : 0;
        if (maxLength < reserved)
            throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, $"must leave room for the {reserved} special token(s) the tokenizer adds");
        if (ids.Count > maxLength - reserved) ids.RemoveRange(maxLength - reserved, ids.Count - (maxLength - reserved));
        return addSpecialTokens ? BuildInputsWithSpecialTokens(ids) : [.. ids];
    }

    /// <summary>Adds the class's sequence markers (<c>build_inputs_with_special_tokens</c>).</summary>
    private protected abstract int[] BuildInputsWithSpecialTokens(List<int> ids);

    private List<int> EncodeWithoutSpecialTokens(string text)
    {
        var ids = new List<int>();
        foreach (var (chunk, specialId) in Special.Split(text))
        {
            if (specialId is { } id) ids.Add(id);
            else Model.Encode(chunk, ids);
        }

        return ids;
    }

    /// <inheritdoc/>
    public override string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var text = new System.Text.StringBuilder();
        var runText = new System.Text.StringBuilder();
        PieceRunDecoder? run = null;
        var previousWasSpecial = false;
        var index = 0;
        foreach (var rawId in ids)
        {
            ValidateId(rawId);
            if (skipSpecialTokens && IsSpecialId(rawId)) continue;
            var position = index++;
            var (id, token, isSpecial) = ResolveToken(rawId, position);
            if (!isSpecial)
            {
                run ??= new PieceRunDecoder(Model, runText);
                run.Append(id, token);
                previousWasSpecial = false;
                continue;
            }

            // transformers inserts the space before the run of ordinary tokens that precedes the special token.
            run?.Finish();
            if (!previousWasSpecial && (Rules.SpaceBeforeLeadingSpecial || position != 0)) text.Append(' ');
            text.Append(runText).Append(token);
            runText.Clear();
            run = null;
            previousWasSpecial = true;
        }

        run?.Finish();
        text.Append(runText);
        return Rules.Finish(text.ToString());
    }

    /// <summary>
    /// The token of the <paramref name="index"/>-th kept id as <c>convert_tokens_to_string</c> sees it: the first
    /// token loses its leading U+2581 first, after which SentencePiece looks the shortened text up again.
    /// </summary>
    internal (int Id, string Token, bool IsSpecial) ResolveToken(int id, int index)
    {
        var token = IdToToken(id);
        if (index != 0) return (id, token, IsSpecialId(id));
        var stripped = Rules.StripFirstToken(token);
        if (stripped == token) return (id, token, IsSpecialId(id));
        return (Model.PieceToId(stripped), stripped, IsSpecialToken(stripped));
    }

    /// <inheritdoc/>
    public override string[] ConvertIdsToTokens(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>();
        foreach (var id in ids)
        {
            ValidateId(id);
            if (skipSpecialTokens && IsSpecialId(id)) continue;
            tokens.Add(IdToToken(id));
        }

        return [.. tokens];
    }

    /// <inheritdoc/>
    public override int[] ConvertTokensToIds(IEnumerable<string> tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        return tokens.Select(token => Special.TryGetId(token, out var id) ? id : Model.PieceToId(token)).ToArray();
    }

    /// <inheritdoc/>
    public override StreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = false) =>
        new SentencePieceStreamingDecoder(this, skipSpecialTokens);

    internal void ValidateId(int id)
    {
        if (id >= 0 && (id < Model.PieceCount || Special.TryGetContent(id, out _))) return;
        throw new TokenizerException(null, null, $"token id {id} is outside the vocabulary (0..{Model.PieceCount - 1}{(Count > Model.PieceCount ? $" and added tokens up to {Count - 1}" : "")})");
    }

    internal bool IsSpecialId(int id) => Special.IdSet.Contains(id);

    internal bool IsSpecialToken(string token) => Special.IsSpecialContent(token);

    /// <summary><c>_convert_id_to_token</c>: a special token's content, otherwise the piece.</summary>
    internal string IdToToken(int id) => Special.TryGetContent(id, out var content) ? content : Model.IdToPiece(id);
}
