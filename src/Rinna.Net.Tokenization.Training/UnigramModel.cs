using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Rinna.Net.Tokenization.Training;

/// <summary>
/// A trained SentencePiece Unigram tokenizer: its piece table, an encoder and decoder that behave as SentencePiece does
/// for this model (its <see cref="UnigramTrainerOptions.Normalization"/>, user-defined <c>▁</c>/<c>\n</c>/<c>\t</c>, byte fallback), and the writer of
/// <c>spiece.model</c> plus the Hugging Face files rinna ships beside it.
/// </summary>
public sealed class UnigramModel
{
    private readonly PieceLattice lattice;
    private readonly int firstNormalId;

    internal UnigramModel(IReadOnlyList<SentencePieceEntry> pieces, UnigramTrainerOptions options)
    {
        Pieces = pieces;
        Options = options;
        firstNormalId = UnigramTrainer.FixedPieceCount;
        var normal = pieces.Skip(firstNormalId).ToList();
        lattice = new PieceLattice(normal.Select(p => p.Piece).ToList(), normal.Select(p => (double)p.Score).ToList());
    }

    /// <summary>Every piece, indexed by id.</summary>
    public IReadOnlyList<SentencePieceEntry> Pieces { get; }

    /// <summary>The settings the model was trained with (written into <c>trainer_spec</c>).</summary>
    public UnigramTrainerOptions Options { get; }

    /// <summary>Id of <c>[PAD]</c>.</summary>
    public const int PadId = 0;
    /// <summary>Id of <c>[UNK]</c>.</summary>
    public const int UnkId = 1;
    /// <summary>Id of <c>&lt;s&gt;</c>.</summary>
    public const int BosId = 2;
    /// <summary>Id of <c>&lt;/s&gt;</c>.</summary>
    public const int EosId = 3;
    /// <summary>Id of the space piece <c>▁</c>.</summary>
    public const int SpaceId = 7;
    /// <summary>Id of the newline piece.</summary>
    public const int NewlineId = 8;
    /// <summary>Id of the tab piece.</summary>
    public const int TabId = 9;
    /// <summary>Id of the byte piece <c>&lt;0x00&gt;</c>; byte <c>b</c> is <c>ByteOffset + b</c>.</summary>
    public const int ByteOffset = 10;

    /// <summary>
    /// Encodes text as SentencePiece's <c>encode(text)</c> does for this model (no BOS/EOS): the text is normalized,
    /// spaces, newlines and tabs become their own pieces, the rest is segmented by Viterbi, and characters without a piece
    /// become UTF-8 byte pieces.
    /// </summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = Options.Normalization.Normalize(text);
        var ids = new List<int>(text.Length);
        int runStart = 0;
        for (int i = 0; i <= text.Length; i++)
        {
            int delimiter = i == text.Length ? -1 : text[i] switch
            {
                ' ' or '\u2581' => SpaceId,
                '\n' => NewlineId,
                '\t' => TabId,
                _ => 0,
            };
            if (delimiter == 0) continue;
            if (i > runStart) EncodeRun(text.AsSpan(runStart, i - runStart), ids);
            if (delimiter > 0) ids.Add(delimiter);
            runStart = i + 1;
        }
        return ids.ToArray();
    }

    /// <summary>
    /// Decodes ids as SentencePiece's <c>decode(ids)</c>: <c>▁</c> becomes a space, runs of byte pieces are UTF-8-decoded
    /// (invalid sequences become U+FFFD), control pieces vanish and <c>[UNK]</c> becomes " ⁇ ".
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var text = new StringBuilder();
        var bytes = new List<byte>();
        foreach (var id in ids)
        {
            if ((uint)id >= (uint)Pieces.Count) throw new ArgumentOutOfRangeException(nameof(ids), id, $"id outside the vocabulary of {Pieces.Count}.");
            var entry = Pieces[id];
            if (entry.Type == SentencePieceType.Byte)
            {
                bytes.Add((byte)(id - ByteOffset));
                continue;
            }
            FlushBytes();
            switch (entry.Type)
            {
                case SentencePieceType.Normal or SentencePieceType.UserDefined:
                    text.Append(entry.Piece.Replace(UnigramTrainer.SpacePiece, " ", StringComparison.Ordinal));
                    break;
                case SentencePieceType.Unknown:
                    text.Append(" \u2047 ");
                    break;
            }
        }
        FlushBytes();
        return text.ToString();

        void FlushBytes()
        {
            if (bytes.Count == 0) return;
            text.Append(Encoding.UTF8.GetString(bytes.ToArray()));
            bytes.Clear();
        }
    }

    /// <summary>The serialized SentencePiece <c>ModelProto</c> (the content of <c>spiece.model</c>).</summary>
    public byte[] ToModelProto() => SentencePieceModelProto.Write(this);

    /// <summary>
    /// Writes <c>spiece.model</c>, <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c> into
    /// <paramref name="directory"/> as rinna ships them (HF <c>T5Tokenizer</c>), each replaced atomically.
    /// </summary>
    /// <exception cref="IOException">A file cannot be written.</exception>
    public void Save(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        Directory.CreateDirectory(directory);
        WriteAtomically(Path.Combine(directory, "spiece.model"), ToModelProto());
        WriteAtomically(Path.Combine(directory, "tokenizer_config.json"), Encoding.UTF8.GetBytes(TokenizerConfigJson));
        WriteAtomically(Path.Combine(directory, "special_tokens_map.json"), Encoding.UTF8.GetBytes(SpecialTokensMapJson));
    }

    /// <summary>rinna's <c>tokenizer_config.json</c> for the bilingual models, key for key and in the same order.</summary>
    public static string TokenizerConfigJson { get; } =
        "{\"eos_token\": \"</s>\", \"unk_token\": \"[UNK]\", \"pad_token\": \"[PAD]\", \"extra_ids\": 0, \"additional_special_tokens\": [], " +
        "\"sp_model_kwargs\": {}, \"bos_token\": \"<s>\", \"cls_token\": \"[CLS]\", \"sep_token\": \"[SEP]\", \"mask_token\": \"[MASK]\", " +
        "\"do_lower_case\": false, \"tokenizer_class\": \"T5Tokenizer\"}";

    /// <summary>The <c>special_tokens_map.json</c> transformers writes for rinna's tokenizer.</summary>
    public static string SpecialTokensMapJson { get; } = new JsonObject
    {
        ["bos_token"] = "<s>",
        ["cls_token"] = "[CLS]",
        ["eos_token"] = "</s>",
        ["mask_token"] = "[MASK]",
        ["pad_token"] = "[PAD]",
        ["sep_token"] = "[SEP]",
        ["unk_token"] = "[UNK]",
    }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";

    private void EncodeRun(ReadOnlySpan<char> run, List<int> ids)
    {
        Span<byte> utf8 = stackalloc byte[4];
        foreach (var (start, length, piece) in lattice.Viterbi(run))
        {
            if (piece >= 0)
            {
                ids.Add(firstNormalId + piece);
                continue;
            }
            int written = Encoding.UTF8.GetBytes(run.Slice(start, length), utf8);
            foreach (var b in utf8[..written]) ids.Add(ByteOffset + b);
        }
    }

    private static void WriteAtomically(string path, byte[] content)
    {
        var temporary = path + $".{Environment.ProcessId}.tmp";
        try
        {
            File.WriteAllBytes(temporary, content);
            File.Move(temporary, path, overwrite: true);
        }
        catch
        {
            File.Delete(temporary);
            throw;
        }
    }
}
