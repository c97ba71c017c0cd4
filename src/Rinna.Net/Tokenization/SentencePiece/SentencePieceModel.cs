using System.Buffers;
using System.Globalization;
using System.Text;

namespace Rinna.Net.Tokenization.SentencePiece;

/// <summary>
/// A loaded SentencePiece model that encodes and decodes exactly like the SentencePiece C++ library (0.1.9x):
/// normalization with the model's own character map, Unigram Viterbi or BPE segmentation, byte fallback.
/// </summary>
/// <remarks>
/// Microsoft.ML.Tokenizers 2.0.1 cannot serve rinna's models as-is (byte-fallback ids of Unigram models are off by
/// 255, user-defined symbols are normalized away, deleted control characters survive, BPE ties on whitespace runs
/// break differently, and one long string encodes in super-linear time). Its fixes would need private reflection,
/// so the segmentation is implemented here from the model's pieces.
/// <para>
/// Long inputs are not chunked: both algorithms already run in linear time (BPE: n log n), and chunking could not be
/// exact anyway. SentencePiece accumulates Viterbi path scores in 32-bit floats over the whole string, so on long
/// texts rounding decides near-ties; restarting the sum at a chunk boundary (even at a user-defined <c>\n</c> that
/// every path passes through) would round differently and could change ids.
/// </para>
/// </remarks>
internal sealed class SentencePieceModel
{
    private const float UnknownPenalty = 10f;

    /// <summary>
    /// Largest model file read. Real models are far smaller (rinna's are about 0.8 MB; 250k-piece vocabularies such as
    /// mT5's or Gemma's 4–5 MB), and the segmentation trie grows with the bytes of the pieces, so this bounds its memory.
    /// </summary>
    public const int MaxFileBytes = 16 << 20;

    private readonly string[] pieces;
    private readonly float[] scores;
    private readonly SentencePieceType[] types;
    private readonly Dictionary<string, int> idsByPiece;
    private readonly ByteTrie segmentationTrie = new();
    private readonly int[] byteIds = Enumerable.Repeat(-1, 256).ToArray();
    private readonly SentencePieceTextNormalizer normalizer;
    private readonly ByteTrie? userDefinedSymbols;
    private readonly float minScore = float.MaxValue;
    private readonly float maxScore = float.Epsilon;

    private SentencePieceModel(ModelProto proto, string source)
    {
        Proto = proto;
        var count = proto.Pieces.Count;
        pieces = new string[count];
        scores = new float[count];
        types = new SentencePieceType[count];
        idsByPiece = new Dictionary<string, int>(count, StringComparer.Ordinal);
        var userDefined = new ByteTrie();
        var hasUserDefined = false;
        UnknownId = -1;

        for (var id = 0; id < count; id++)
        {
            var (piece, score, type) = proto.Pieces[id];
            pieces[id] = piece;
            scores[id] = score;
            types[id] = type;
            if (!idsByPiece.TryAdd(piece, id))
                throw new TokenizerException(source, "pieces", $"piece '{Escape(piece)}' is defined twice (ids {idsByPiece[piece]} and {id})");

            switch (type)
            {
                case SentencePieceType.Normal:
                    minScore = Math.Min(minScore, score);
                    maxScore = Math.Max(maxScore, score);
                    segmentationTrie.TryAdd(Encoding.UTF8.GetBytes(piece), id);
                    break;
                case SentencePieceType.UserDefined:
                    segmentationTrie.TryAdd(Encoding.UTF8.GetBytes(piece), id);
                    userDefined.TryAdd(Encoding.UTF8.GetBytes(piece), id);
                    hasUserDefined = true;
                    break;
                case SentencePieceType.Unused:
                    segmentationTrie.TryAdd(Encoding.UTF8.GetBytes(piece), id);
                    break;
                case SentencePieceType.Unknown:
                    if (UnknownId >= 0)
                        throw new TokenizerException(source, "pieces", $"two UNKNOWN pieces (ids {UnknownId} and {id})");
                    UnknownId = id;
                    break;
                case SentencePieceType.Byte:
                    if (!proto.ByteFallback)
                        throw new TokenizerException(source, "pieces", $"BYTE piece '{piece}' (id {id}) in a model without trainer_spec.byte_fallback");
                    byteIds[ParseBytePiece(piece, source, id)] = id;
                    break;
            }
        }

        if (UnknownId < 0) throw new TokenizerException(source, "pieces", "the model defines no UNKNOWN piece");
        if (proto.ByteFallback && Array.IndexOf(byteIds, -1) is var missing and >= 0)
            throw new TokenizerException(source, "pieces", $"trainer_spec.byte_fallback is set but the byte piece <0x{missing:X2}> is missing");
        if (proto.ModelType is not (SentencePieceModelType.Unigram or SentencePieceModelType.Bpe))
            throw new TokenizerException(source, "trainer_spec.model_type", $"{proto.ModelType} models are not supported (only UNIGRAM and BPE)");
        if (proto.Denormalizer is { PrecompiledCharsMap.Length: > 0 })
            throw new TokenizerException(source, "denormalizer_spec", "models with a denormalization rule are not supported");

        userDefinedSymbols = hasUserDefined ? userDefined : null;
        try
        {
            normalizer = new SentencePieceTextNormalizer(proto.Normalizer, proto.TreatWhitespaceAsSuffix, userDefinedSymbols);
        }
        catch (FormatException e)
        {
            throw new TokenizerException(source, "normalizer_spec.precompiled_charsmap", e.Message, e);
        }
    }

    public ModelProto Proto { get; }

    public int PieceCount => pieces.Length;

    public int UnknownId { get; }

    /// <summary>Parses a serialized model; <paramref name="source"/> names it in error messages.</summary>
    public static SentencePieceModel Load(byte[] serialized, string source)
    {
        ModelProto proto;
        try
        {
            proto = ModelProto.Parse(serialized);
        }
        catch (FormatException e)
        {
            throw new TokenizerException(source, null, $"not a valid SentencePiece model: {e.Message}", e);
        }

        return new SentencePieceModel(proto, source);
    }

    public string IdToPiece(int id) => pieces[id];

    public SentencePieceType TypeOf(int id) => types[id];

    /// <summary>SentencePiece's <c>PieceToId</c>: the id of <paramref name="piece"/>, or the unknown id.</summary>
    public int PieceToId(string piece) => idsByPiece.TryGetValue(piece, out var id) ? id : UnknownId;

    public bool TryGetId(string piece, out int id) => idsByPiece.TryGetValue(piece, out id);

    /// <summary>SentencePiece's <c>encode(text)</c>: ids without BOS/EOS.</summary>
    public void Encode(string text, List<int> ids)
    {
        if (text.Length == 0) return;
        var normalized = new ArrayBufferWriter<byte>(Encoding.UTF8.GetMaxByteCount(text.Length) + 16);
        normalizer.Normalize(Encoding.UTF8.GetBytes(text), normalized);
        var bytes = normalized.WrittenSpan;
        if (bytes.IsEmpty) return;

        var segments = Proto.ModelType == SentencePieceModelType.Bpe ? SegmentBpe(bytes) : SegmentUnigram(bytes);
        AppendIds(bytes, segments, ids);
    }

    /// <summary>SentencePiece's <c>decode(ids)</c>; the ids must be valid piece ids.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        var text = new StringBuilder();
        var decoder = new PieceRunDecoder(this, text);
        foreach (var id in ids) decoder.Append(id, pieces[id]);
        decoder.Finish();
        return text.ToString();
    }

    /// <summary>Turns segments into ids, spelling unknown segments as byte pieces when the model has byte fallback.</summary>
    private void AppendIds(ReadOnlySpan<byte> normalized, List<(int Start, int End, int Id)> segments, List<int> ids)
    {
        foreach (var (start, end, id) in segments)
        {
            if (id != UnknownId)
            {
                ids.Add(id);
            }
            else if (Proto.ByteFallback)
            {
                foreach (var b in normalized[start..end]) ids.Add(byteIds[b]);
            }
            else if (ids.Count == 0 || ids[^1] != UnknownId)
            {
                // Without byte fallback SentencePiece merges a run of unknown characters into one unknown piece.
                ids.Add(UnknownId);
            }
        }
    }

    /// <summary>
    /// Viterbi over the normalized bytes, mirroring <c>unigram::Model::EncodeOptimized</c> including its float
    /// arithmetic, so ties resolve the same way (first best path found wins).
    /// </summary>
    private List<(int Start, int End, int Id)> SegmentUnigram(ReadOnlySpan<byte> text)
    {
        var size = text.Length;
        // One record per end position, rented: long documents would otherwise allocate (and zero) three large arrays per call.
        var best = ArrayPool<BestPathNode>.Shared.Rent(size + 1);
        try
        {
            Array.Fill(best, new BestPathNode(0f, -1, -1), 0, size + 1);
            best[0] = new BestPathNode(0f, 0, -1);
            FillBestPaths(text, best);
            var segments = new List<(int, int, int)>();
            for (var end = size; end > 0; end = best[end].Start) segments.Add((best[end].Start, end, best[end].Id));
            segments.Reverse();
            return segments;
        }
        finally
        {
            ArrayPool<BestPathNode>.Shared.Return(best);
        }
    }

    private void FillBestPaths(ReadOnlySpan<byte> text, BestPathNode[] best)
    {
        var size = text.Length;
        var unknownScore = minScore - UnknownPenalty;
        var startsAt = 0;
        while (startsAt < size)
        {
            var scoreTillHere = best[startsAt].Score;
            var charLength = Math.Min(Utf8Char.LengthFromLeadByte(text[startsAt]), size - startsAt);
            var hasSingleCharPiece = false;
            var node = ByteTrie.Root;
            for (var keyPos = startsAt; keyPos < size;)
            {
                node = segmentationTrie.Step(node, text[keyPos]);
                if (node < 0) break;
                keyPos++;
                var id = segmentationTrie.ValueAt(node);
                if (id < 0 || types[id] == SentencePieceType.Unused) continue;
                var length = keyPos - startsAt;
                ref var target = ref best[keyPos];
                if (types[id] == SentencePieceType.UserDefined)
                {
                    // SentencePiece computes the user-defined bonus in double: length * max_score - 0.1.
                    var wide = (double)(length * maxScore) - 0.1 + scoreTillHere;
                    if (target.Start == -1 || wide > target.Score) target = new BestPathNode((float)wide, startsAt, id);
                }
                else
                {
                    var candidate = scores[id] + scoreTillHere;
                    if (target.Start == -1 || candidate > target.Score) target = new BestPathNode(candidate, startsAt, id);
                }

                if (length == charLength) hasSingleCharPiece = true;
            }

            if (!hasSingleCharPiece)
            {
                ref var target = ref best[startsAt + charLength];
                var candidate = unknownScore + scoreTillHere;
                if (target.Start == -1 || candidate > target.Score) target = new BestPathNode(candidate, startsAt, UnknownId);
            }

            startsAt += charLength;
        }
    }

    /// <summary>Best path ending at a position: its score, where its last piece starts, and that piece.</summary>
    private readonly record struct BestPathNode(float Score, int Start, int Id);

    /// <summary>Greedy highest-score merging, mirroring <c>bpe::Model::Encode</c> (ties: leftmost pair first).</summary>
    private List<(int Start, int End, int Id)> SegmentBpe(ReadOnlySpan<byte> text)
    {
        // Symbols are byte ranges of the normalized text linked as a list; user-defined symbols are frozen.
        var starts = new List<int>();
        var lengths = new List<int>();
        var frozen = new List<bool>();
        for (var pos = 0; pos < text.Length;)
        {
            var symbolLength = userDefinedSymbols?.LongestPrefixLength(text[pos..]) ?? 0;
            var isFrozen = symbolLength > 0;
            if (!isFrozen) symbolLength = Math.Min(Utf8Char.LengthFromLeadByte(text[pos]), text.Length - pos);
            starts.Add(pos);
            lengths.Add(symbolLength);
            frozen.Add(isFrozen);
            pos += symbolLength;
        }

        var count = starts.Count;
        var prev = new int[count];
        var next = new int[count];
        for (var i = 0; i < count; i++)
        {
            prev[i] = i - 1;
            next[i] = i + 1 < count ? i + 1 : -1;
        }

        var agenda = new PriorityQueue<(int Left, int Right, int Size), (float Score, int Left)>(BpeOrder.Instance);
        // Like bpe_model.cc's rev_merge: keyed by piece text, recorded when an UNUSED pair enters the agenda.
        var unusedSplits = new Dictionary<string, int>(StringComparer.Ordinal);
        void MaybeAddPair(int left, int right, ReadOnlySpan<byte> source)
        {
            if (left < 0 || right < 0 || frozen[left] || frozen[right]) return;
            var size = lengths[left] + lengths[right];
            var merged = source.Slice(starts[left], size);
            var id = segmentationTrie.Find(merged);
            if (id < 0) return;
            agenda.Enqueue((left, right, size), (scores[id], left));
            if (types[id] == SentencePieceType.Unused) unusedSplits[Encoding.UTF8.GetString(merged)] = lengths[left];
        }

        for (var i = 1; i < count; i++) MaybeAddPair(i - 1, i, text);

        while (agenda.TryDequeue(out var pair, out _))
        {
            var (left, right, size) = pair;
            if (lengths[left] == 0 || lengths[right] == 0 || lengths[left] + lengths[right] != size) continue;
            lengths[left] = size;
            next[left] = next[right];
            if (next[right] >= 0) prev[next[right]] = left;
            lengths[right] = 0;
            MaybeAddPair(prev[left], left, text);
            MaybeAddPair(left, next[left], text);
        }

        var segments = new List<(int, int, int)>();
        for (var i = 0; i >= 0; i = next[i])
            Resegment(text, starts[i], starts[i] + lengths[i], unusedSplits, segments);
        return segments;
    }

    /// <summary>Splits a merged UNUSED piece back into the two symbols it was merged from (<c>resegment</c> in bpe_model.cc).</summary>
    private void Resegment(ReadOnlySpan<byte> text, int start, int end, Dictionary<string, int> unusedSplits, List<(int, int, int)> output)
    {
        var id = segmentationTrie.Find(text[start..end]);
        if (id >= 0 && types[id] == SentencePieceType.Unused
            && unusedSplits.TryGetValue(Encoding.UTF8.GetString(text[start..end]), out var leftLength))
        {
            Resegment(text, start, start + leftLength, unusedSplits, output);
            Resegment(text, start + leftLength, end, unusedSplits, output);
            return;
        }

        output.Add((start, end, id >= 0 ? id : UnknownId));
    }

    private static int ParseBytePiece(string piece, string source, int id)
    {
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && int.TryParse(piece.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var value))
            return value;
        throw new TokenizerException(source, "pieces", $"BYTE piece {id} is '{Escape(piece)}', expected <0xXX>");
    }

    internal static string Escape(string piece) =>
        string.Concat(piece.Select(c => char.IsControl(c) ? $"\\u{(int)c:X4}" : c.ToString()));

    private sealed class BpeOrder : IComparer<(float Score, int Left)>
    {
        public static readonly BpeOrder Instance = new();

        // PriorityQueue dequeues the smallest element: highest score first, then the leftmost pair.
        public int Compare((float Score, int Left) x, (float Score, int Left) y)
        {
            var byScore = y.Score.CompareTo(x.Score);
            return byScore != 0 ? byScore : x.Left.CompareTo(y.Left);
        }
    }
}
