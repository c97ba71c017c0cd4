namespace Rinna.Net.Tokenization.SentencePiece;

/// <summary>Segmentation algorithms of <c>TrainerSpec.ModelType</c>.</summary>
internal enum SentencePieceModelType
{
    Unigram = 1,
    Bpe = 2,
    Word = 3,
    Char = 4,
}

internal readonly record struct ModelPiece(string Piece, float Score, SentencePieceType Type);

internal sealed record NormalizerSpec(
    string Name,
    byte[] PrecompiledCharsMap,
    bool AddDummyPrefix,
    bool RemoveExtraWhitespaces,
    bool EscapeWhitespaces);

/// <summary>The parts of a SentencePiece <c>ModelProto</c> that encoding and decoding depend on.</summary>
internal sealed record ModelProto(
    IReadOnlyList<ModelPiece> Pieces,
    SentencePieceModelType ModelType,
    bool ByteFallback,
    bool TreatWhitespaceAsSuffix,
    string UnknownSurface,
    NormalizerSpec Normalizer,
    NormalizerSpec? Denormalizer)
{
    private const string DefaultUnknownSurface = " \u2047 ";

    /// <summary>
    /// Most pieces accepted: the largest real vocabularies have about 262k; this leaves four times that and bounds the
    /// id-indexed tables.
    /// </summary>
    public const int MaxPieces = 1 << 20;

    /// <summary>
    /// Longest piece accepted, in UTF-8 bytes. Trained pieces are at most <c>max_sentencepiece_length</c> characters
    /// (16 by default) and user-defined symbols are short markers; a piece of megabytes only costs memory in the trie.
    /// </summary>
    public const int MaxPieceBytes = 4096;

    /// <summary>Parses a serialized <c>ModelProto</c>.</summary>
    /// <exception cref="FormatException">The bytes are not a well-formed model proto.</exception>
    public static ModelProto Parse(ReadOnlySpan<byte> bytes)
    {
        var pieces = new List<ModelPiece>();
        var modelType = SentencePieceModelType.Unigram;
        var byteFallback = false;
        var whitespaceAsSuffix = false;
        var unknownSurface = DefaultUnknownSurface;
        NormalizerSpec? normalizer = null;
        NormalizerSpec? denormalizer = null;

        var reader = new ProtoWireReader(bytes);
        while (!reader.AtEnd)
        {
            var (field, wire) = reader.ReadKey();
            switch (field)
            {
                case 1:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireLengthDelimited, "pieces");
                    if (pieces.Count == MaxPieces) throw new FormatException($"the model has more than {MaxPieces} pieces");
                    pieces.Add(ParsePiece(reader.ReadBytes(), pieces.Count));
                    break;
                case 2:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireLengthDelimited, "trainer_spec");
                    ParseTrainerSpec(reader.ReadBytes(), ref modelType, ref byteFallback, ref whitespaceAsSuffix, ref unknownSurface);
                    break;
                case 3:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireLengthDelimited, "normalizer_spec");
                    normalizer = ParseNormalizerSpec(reader.ReadBytes());
                    break;
                case 5:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireLengthDelimited, "denormalizer_spec");
                    denormalizer = ParseNormalizerSpec(reader.ReadBytes());
                    break;
                default:
                    reader.Skip(wire);
                    break;
            }
        }

        if (pieces.Count == 0) throw new FormatException("the model has no pieces");
        normalizer ??= ParseNormalizerSpec([]);
        return new ModelProto(pieces, modelType, byteFallback, whitespaceAsSuffix, unknownSurface, normalizer, denormalizer);
    }

    private static ModelPiece ParsePiece(ReadOnlySpan<byte> bytes, int index)
    {
        string? piece = null;
        var score = 0f;
        var type = SentencePieceType.Normal;
        var reader = new ProtoWireReader(bytes);
        while (!reader.AtEnd)
        {
            var (field, wire) = reader.ReadKey();
            switch (field)
            {
                case 1:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireLengthDelimited, "piece");
                    piece = reader.ReadString(MaxPieceBytes, $"piece {index}");
                    break;
                case 2:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireFixed32, "score");
                    score = reader.ReadFloat();
                    break;
                case 3:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireVarint, "type");
                    var raw = reader.ReadInt32();
                    if (raw is < (int)SentencePieceType.Normal or > (int)SentencePieceType.Byte)
                        throw new FormatException($"piece {index} has unknown type {raw}");
                    type = (SentencePieceType)raw;
                    break;
                default:
                    reader.Skip(wire);
                    break;
            }
        }

        if (string.IsNullOrEmpty(piece)) throw new FormatException($"piece {index} is empty");
        return new ModelPiece(piece, score, type);
    }

    private static void ParseTrainerSpec(
        ReadOnlySpan<byte> bytes,
        ref SentencePieceModelType modelType,
        ref bool byteFallback,
        ref bool whitespaceAsSuffix,
        ref string unknownSurface)
    {
        var reader = new ProtoWireReader(bytes);
        while (!reader.AtEnd)
        {
            var (field, wire) = reader.ReadKey();
            switch (field)
            {
                case 3:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireVarint, "trainer_spec.model_type");
                    var raw = reader.ReadInt32();
                    if (raw is < (int)SentencePieceModelType.Unigram or > (int)SentencePieceModelType.Char)
                        throw new FormatException($"trainer_spec.model_type {raw} is unknown");
                    modelType = (SentencePieceModelType)raw;
                    break;
                case 24:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireVarint, "trainer_spec.treat_whitespace_as_suffix");
                    whitespaceAsSuffix = reader.ReadBool();
                    break;
                case 35:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireVarint, "trainer_spec.byte_fallback");
                    byteFallback = reader.ReadBool();
                    break;
                case 44:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireLengthDelimited, "trainer_spec.unk_surface");
                    unknownSurface = reader.ReadString();
                    break;
                default:
                    reader.Skip(wire);
                    break;
            }
        }
    }

    private static NormalizerSpec ParseNormalizerSpec(ReadOnlySpan<byte> bytes)
    {
        var name = "";
        byte[] charsMap = [];
        bool addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true;
        var reader = new ProtoWireReader(bytes);
        while (!reader.AtEnd)
        {
            var (field, wire) = reader.ReadKey();
            switch (field)
            {
                case 1:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireLengthDelimited, "normalizer_spec.name");
                    name = reader.ReadString();
                    break;
                case 2:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireLengthDelimited, "normalizer_spec.precompiled_charsmap");
                    charsMap = reader.ReadBytes().ToArray();
                    break;
                case 3:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireVarint, "normalizer_spec.add_dummy_prefix");
                    addDummyPrefix = reader.ReadBool();
                    break;
                case 4:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireVarint, "normalizer_spec.remove_extra_whitespaces");
                    removeExtraWhitespaces = reader.ReadBool();
                    break;
                case 5:
                    ProtoWireReader.Expect(wire, ProtoWireReader.WireVarint, "normalizer_spec.escape_whitespaces");
                    escapeWhitespaces = reader.ReadBool();
                    break;
                default:
                    reader.Skip(wire);
                    break;
            }
        }

        return new NormalizerSpec(name, charsMap, addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces);
    }
}
