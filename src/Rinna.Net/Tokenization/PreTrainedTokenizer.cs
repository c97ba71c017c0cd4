namespace Rinna.Net.Tokenization;

/// <summary>
/// A tokenizer with Hugging Face's <c>PreTrainedTokenizer</c> surface: encode/decode, special tokens, batching
/// with padding and truncation, and an incremental decoder for streaming generation.
/// </summary>
public abstract class PreTrainedTokenizer
{
    private int modelMaxLength = int.MaxValue;

    private protected PreTrainedTokenizer(SpecialTokens specialTokens)
    {
        Special = specialTokens;
    }

    private protected SpecialTokens Special { get; }

    /// <summary>Size of the base vocabulary (Hugging Face's <c>vocab_size</c>), without added tokens.</summary>
    public abstract int VocabSize { get; }

    /// <summary>Number of ids the tokenizer can produce: the base vocabulary plus added tokens outside it (<c>len(tokenizer)</c>).</summary>
    public abstract int Count { get; }

    /// <summary>Side that <see cref="BatchEncode"/> pads by default (<c>padding_side</c>).</summary>
    public PaddingSide PaddingSide { get; set; } = PaddingSide.Right;

    /// <summary>Largest input the model accepts (<c>model_max_length</c>); <see cref="int.MaxValue"/> when unknown.</summary>
    public int ModelMaxLength
    {
        get => modelMaxLength;
        set => modelMaxLength = value > 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "must be positive");
    }

    /// <summary>Beginning-of-sequence token, or <c>null</c>.</summary>
    public string? BosToken => Special.Bos?.Content;

    /// <summary>End-of-sequence token, or <c>null</c>.</summary>
    public string? EosToken => Special.Eos?.Content;

    /// <summary>Unknown token, or <c>null</c>.</summary>
    public string? UnkToken => Special.Unk?.Content;

    /// <summary>Padding token, or <c>null</c>.</summary>
    public string? PadToken => Special.Pad?.Content;

    /// <summary>Separator token, or <c>null</c>.</summary>
    public string? SepToken => Special.Sep?.Content;

    /// <summary>Classifier token, or <c>null</c>.</summary>
    public string? ClsToken => Special.Cls?.Content;

    /// <summary>Mask token, or <c>null</c>.</summary>
    public string? MaskToken => Special.Mask?.Content;

    /// <summary>Id of <see cref="BosToken"/>, or <c>null</c>.</summary>
    public int? BosTokenId => Special.Bos?.Id;

    /// <summary>Id of <see cref="EosToken"/>, or <c>null</c>.</summary>
    public int? EosTokenId => Special.Eos?.Id;

    /// <summary>Id of <see cref="UnkToken"/>, or <c>null</c>.</summary>
    public int? UnkTokenId => Special.Unk?.Id;

    /// <summary>Id of <see cref="PadToken"/>, or <c>null</c>.</summary>
    public int? PadTokenId => Special.Pad?.Id;

    /// <summary>Id of <see cref="SepToken"/>, or <c>null</c>.</summary>
    public int? SepTokenId => Special.Sep?.Id;

    /// <summary>Id of <see cref="ClsToken"/>, or <c>null</c>.</summary>
    public int? ClsTokenId => Special.Cls?.Id;

    /// <summary>Id of <see cref="MaskToken"/>, or <c>null</c>.</summary>
    public int? MaskTokenId => Special.Mask?.Id;

    /// <summary>Every special token string, in Hugging Face's order (<c>all_special_tokens</c>).</summary>
    public IReadOnlyList<string> AllSpecialTokens => Special.AllContents;

    /// <summary>Ids of <see cref="AllSpecialTokens"/> (<c>all_special_ids</c>).</summary>
    public IReadOnlyList<int> AllSpecialIds => Special.AllIds;

    /// <summary>Splits <paramref name="text"/> into token strings (<c>tokenize</c>); special-token strings in the text become one token each.</summary>
    public abstract IReadOnlyList<string> Tokenize(string text);

    /// <summary>Encodes <paramref name="text"/> into ids (<c>encode</c>).</summary>
    /// <param name="text">The text.</param>
    /// <param name="addSpecialTokens">Add the model's sequence markers (T5: a trailing <c>&lt;/s&gt;</c>; LLaMA: a leading <c>&lt;s&gt;</c>). rinna's model cards pass <c>false</c>.</param>
    public abstract int[] Encode(string text, bool addSpecialTokens = true);

    /// <summary>Decodes ids into text (<c>decode</c>), with Hugging Face's spacing and clean-up rules.</summary>
    /// <param name="ids">The ids.</param>
    /// <param name="skipSpecialTokens">Drop the ids of all special tokens.</param>
    /// <exception cref="TokenizerException">An id is outside the vocabulary.</exception>
    public abstract string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false);

    /// <summary>Maps ids to token strings (<c>convert_ids_to_tokens</c>).</summary>
    /// <exception cref="TokenizerException">An id is outside the vocabulary.</exception>
    public abstract string[] ConvertIdsToTokens(IEnumerable<int> ids, bool skipSpecialTokens = false);

    /// <summary>Maps token strings to ids (<c>convert_tokens_to_ids</c>); unknown strings map to <see cref="UnkTokenId"/>.</summary>
    public abstract int[] ConvertTokensToIds(IEnumerable<string> tokens);

    /// <summary>Creates an incremental decoder for streaming generation.</summary>
    /// <param name="skipSpecialTokens">As in <see cref="Decode"/>.</param>
    public abstract StreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = false);

    /// <summary>
    /// Encodes several texts and pads them to a common length (Hugging Face's <c>tokenizer(texts, padding=True)</c>).
    /// </summary>
    /// <param name="texts">The texts.</param>
    /// <param name="addSpecialTokens">As in <see cref="Encode"/>.</param>
    /// <param name="paddingSide">Where padding goes; <c>null</c> means <see cref="PaddingSide"/>. Use <see cref="Tokenization.PaddingSide.Left"/> for generation.</param>
    /// <param name="maxLength">Truncate every sequence to this many ids, keeping the start (and the special tokens <paramref name="addSpecialTokens"/> adds); <c>null</c> means no truncation.</param>
    /// <exception cref="InvalidOperationException">Sequences differ in length and the tokenizer has no pad token.</exception>
    public BatchEncoding BatchEncode(IReadOnlyList<string> texts, bool addSpecialTokens = true, PaddingSide? paddingSide = null, int? maxLength = null)
    {
        ArgumentNullException.ThrowIfNull(texts);
        if (maxLength is <= 0) throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, "must be positive");
        var sequences = new int[texts.Count][];
        for (var i = 0; i < texts.Count; i++)
        {
            ArgumentNullException.ThrowIfNull(texts[i], $"{nameof(texts)}[{i}]");
            sequences[i] = maxLength is { } limit ? EncodeTruncated(texts[i], addSpecialTokens, limit) : Encode(texts[i], addSpecialTokens);
        }

        var length = sequences.Length == 0 ? 0 : sequences.Max(s => s.Length);
        var side = paddingSide ?? PaddingSide;
        var needsPadding = sequences.Any(s => s.Length != length);
        if (needsPadding && PadTokenId is null)
            throw new InvalidOperationException("Padding is needed but the tokenizer has no pad token; set one in special_tokens_map.json or encode the texts one by one.");

        var ids = new long[sequences.Length, length];
        var mask = new long[sequences.Length, length];
        for (var row = 0; row < sequences.Length; row++)
        {
            var sequence = sequences[row];
            var offset = side == PaddingSide.Left ? length - sequence.Length : 0;
            for (var col = 0; col < length; col++)
            {
                var index = col - offset;
                var real = index >= 0 && index < sequence.Length;
                ids[row, col] = real ? sequence[index] : PadTokenId!.Value;
                mask[row, col] = real ? 1 : 0;
            }
        }

        return new BatchEncoding(ids, mask);
    }

    /// <summary>Encodes and truncates to <paramref name="maxLength"/> ids, keeping the added special tokens.</summary>
    private protected abstract int[] EncodeTruncated(string text, bool addSpecialTokens, int maxLength);
}
