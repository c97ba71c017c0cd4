using System.Text;

namespace Rinna.Net.Tokenization.Training;

/// <summary>
/// Writes SentencePiece's <c>ModelProto</c> (sentencepiece_model.proto, proto2) in the protobuf wire format by hand:
/// the handful of fields a Unigram model needs, so no generated code or protobuf runtime is required.
/// </summary>
internal static class SentencePieceModelProto
{
    // Field numbers from sentencepiece_model.proto.
    private const int ModelPieces = 1, ModelTrainerSpec = 2, ModelNormalizerSpec = 3;
    private const int PiecePiece = 1, PieceScore = 2, PieceType = 3;
    private const int TrainerModelType = 3, TrainerVocabSize = 4, TrainerSelfTestSampleSize = 6, TrainerCharacterCoverage = 10,
        TrainerShrinkingFactor = 15, TrainerNumThreads = 16, TrainerNumSubIterations = 17, TrainerMaxSentencePieceLength = 20,
        TrainerSplitByUnicodeScript = 21, TrainerSplitByWhitespace = 22, TrainerSplitByNumber = 23, TrainerTreatWhitespaceAsSuffix = 24,
        TrainerSplitDigits = 25, TrainerAllowWhitespaceOnlyPieces = 26, TrainerControlSymbols = 30, TrainerUserDefinedSymbols = 31,
        TrainerVocabularyOutputPieceScore = 32, TrainerHardVocabLimit = 33, TrainerUseAllVocab = 34, TrainerByteFallback = 35,
        TrainerUnkId = 40, TrainerBosId = 41, TrainerEosId = 42, TrainerPadId = 43, TrainerUnkSurface = 44, TrainerUnkPiece = 45,
        TrainerBosPiece = 46, TrainerEosPiece = 47, TrainerPadPiece = 48, TrainerSeedSentencePieceSize = 14;
    private const int NormalizerName = 1, NormalizerPrecompiledCharsMap = 2, NormalizerAddDummyPrefix = 3, NormalizerRemoveExtraWhitespaces = 4, NormalizerEscapeWhitespaces = 5;
    private const int UnigramModelType = 1;

    private const int Varint = 0, Fixed32 = 5, LengthDelimited = 2;

    public static byte[] Write(UnigramModel model)
    {
        var output = new MemoryStream();
        foreach (var entry in model.Pieces)
        {
            var piece = new MemoryStream();
            WriteString(piece, PiecePiece, entry.Piece);
            WriteFloat(piece, PieceScore, entry.Score);
            // NORMAL is the proto default; SentencePiece itself omits it, and so do we.
            if (entry.Type != SentencePieceType.Normal) WriteVarint(piece, PieceType, (ulong)entry.Type);
            WriteMessage(output, ModelPieces, piece);
        }
        WriteMessage(output, ModelTrainerSpec, TrainerSpec(model.Options));
        WriteMessage(output, ModelNormalizerSpec, NormalizerSpec(model.Options.Normalization));
        return output.ToArray();
    }

    private static MemoryStream TrainerSpec(UnigramTrainerOptions options)
    {
        var spec = new MemoryStream();
        WriteVarint(spec, TrainerModelType, UnigramModelType);
        WriteVarint(spec, TrainerVocabSize, (ulong)options.VocabSize);
        WriteVarint(spec, TrainerSelfTestSampleSize, 0);
        WriteFloat(spec, TrainerCharacterCoverage, (float)options.CharacterCoverage);
        WriteVarint(spec, TrainerSeedSentencePieceSize, (ulong)options.SeedSize);
        WriteFloat(spec, TrainerShrinkingFactor, (float)options.ShrinkingFactor);
        WriteVarint(spec, TrainerNumThreads, (ulong)options.NumThreads);
        WriteVarint(spec, TrainerNumSubIterations, (ulong)options.SubIterations);
        WriteVarint(spec, TrainerMaxSentencePieceLength, (ulong)options.MaxPieceLength);
        WriteVarint(spec, TrainerSplitByUnicodeScript, 1);
        WriteVarint(spec, TrainerSplitByNumber, 1);
        WriteVarint(spec, TrainerSplitByWhitespace, 1);
        WriteVarint(spec, TrainerTreatWhitespaceAsSuffix, 0);
        WriteVarint(spec, TrainerAllowWhitespaceOnlyPieces, 0);
        WriteVarint(spec, TrainerSplitDigits, 0);
        foreach (var control in new[] { "[CLS]", "[SEP]", "[MASK]" }) WriteString(spec, TrainerControlSymbols, control);
        foreach (var symbol in new[] { UnigramTrainer.SpacePiece, "\n", "\t" }) WriteString(spec, TrainerUserDefinedSymbols, symbol);
        WriteVarint(spec, TrainerVocabularyOutputPieceScore, 1);
        WriteVarint(spec, TrainerHardVocabLimit, 1);
        WriteVarint(spec, TrainerUseAllVocab, 0);
        WriteVarint(spec, TrainerByteFallback, 1);
        WriteVarint(spec, TrainerUnkId, UnigramModel.UnkId);
        WriteVarint(spec, TrainerBosId, UnigramModel.BosId);
        WriteVarint(spec, TrainerEosId, UnigramModel.EosId);
        WriteVarint(spec, TrainerPadId, UnigramModel.PadId);
        WriteString(spec, TrainerUnkPiece, "[UNK]");
        WriteString(spec, TrainerBosPiece, "<s>");
        WriteString(spec, TrainerEosPiece, "</s>");
        WriteString(spec, TrainerPadPiece, "[PAD]");
        WriteString(spec, TrainerUnkSurface, " \u2047 ");
        return spec;
    }

    private static MemoryStream NormalizerSpec(SentencePieceNormalization normalization)
    {
        var spec = new MemoryStream();
        WriteString(spec, NormalizerName, normalization.Name);
        if (!normalization.PrecompiledCharsMap.IsEmpty) WriteBytes(spec, NormalizerPrecompiledCharsMap, normalization.PrecompiledCharsMap);
        WriteVarint(spec, NormalizerAddDummyPrefix, 0);
        WriteVarint(spec, NormalizerRemoveExtraWhitespaces, 0);
        WriteVarint(spec, NormalizerEscapeWhitespaces, 1);
        return spec;
    }

    private static void WriteTag(Stream stream, int field, int wireType) => WriteRawVarint(stream, (ulong)((field << 3) | wireType));

    private static void WriteVarint(Stream stream, int field, ulong value)
    {
        WriteTag(stream, field, Varint);
        WriteRawVarint(stream, value);
    }

    private static void WriteFloat(Stream stream, int field, float value)
    {
        WriteTag(stream, field, Fixed32);
        Span<byte> bytes = stackalloc byte[4];
        BitConverter.TryWriteBytes(bytes, value);
        if (!BitConverter.IsLittleEndian) bytes.Reverse();
        stream.Write(bytes);
    }

    private static void WriteString(Stream stream, int field, string value) => WriteBytes(stream, field, Encoding.UTF8.GetBytes(value));

    private static void WriteMessage(Stream stream, int field, MemoryStream message) => WriteBytes(stream, field, message.ToArray());

    private static void WriteBytes(Stream stream, int field, ReadOnlySpan<byte> value)
    {
        WriteTag(stream, field, LengthDelimited);
        WriteRawVarint(stream, (ulong)value.Length);
        stream.Write(value);
    }

    private static void WriteRawVarint(Stream stream, ulong value)
    {
        while (value >= 0x80)
        {
            stream.WriteByte((byte)(value | 0x80));
            value >>= 7;
        }
        stream.WriteByte((byte)value);
    }
}
