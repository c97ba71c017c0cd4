namespace Rinna.Net.Tokenization.Training;

/// <summary>
/// A Unigram language model over a set of pieces: the segmentation lattice of a text, its best path (Viterbi) and its
/// expected piece counts (forward-backward). Used by the trainer's EM and pruning steps and by the encoder.
/// </summary>
internal sealed class PieceLattice
{
    /// <summary>SentencePiece's penalty for an unknown character: this much below the least likely piece.</summary>
    private const double UnknownPenalty = 10.0;

    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> lookup;
    private readonly double[] logProbabilities;
    private readonly int maxPieceLength;
    private readonly double unknownScore;

    public PieceLattice(IReadOnlyList<string> pieces, IReadOnlyList<double> logProbabilities)
    {
        var ids = new Dictionary<string, int>(pieces.Count, StringComparer.Ordinal);
        for (int i = 0; i < pieces.Count; i++) ids[pieces[i]] = i;
        lookup = ids.GetAlternateLookup<ReadOnlySpan<char>>();
        this.logProbabilities = logProbabilities.ToArray();
        maxPieceLength = pieces.Count == 0 ? 1 : pieces.Max(p => p.Length);
        unknownScore = (this.logProbabilities.Length == 0 ? 0 : this.logProbabilities.Min()) - UnknownPenalty;
    }

    /// <summary>The piece index of <paramref name="text"/>, or -1.</summary>
    public int Find(ReadOnlySpan<char> text) => lookup.TryGetValue(text, out var id) ? id : -1;

    /// <summary>
    /// The most likely segmentation of <paramref name="text"/> as (start, length, piece) with piece -1 for an unknown
    /// character. <paramref name="excluded"/> is left out of the lattice (the pruning step's "second best" path).
    /// </summary>
    public List<(int Start, int Length, int Piece)> Viterbi(ReadOnlySpan<char> text, int excluded = -1)
    {
        int n = text.Length;
        var best = new double[n + 1];
        var from = new (int Start, int Piece)[n + 1];
        Array.Fill(best, double.NegativeInfinity);
        best[0] = 0;
        for (int start = 0; start < n; start++)
        {
            if (double.IsNegativeInfinity(best[start]) || !IsBoundary(text, start)) continue;
            bool hasSingleCharacter = false;
            int single = CharacterLength(text, start);
            for (int length = 1; length <= maxPieceLength && start + length <= n; length++)
            {
                if (!IsBoundary(text, start + length)) continue;
                int piece = Find(text.Slice(start, length));
                if (piece < 0 || piece == excluded) continue;
                if (length == single) hasSingleCharacter = true;
                double score = best[start] + logProbabilities[piece];
                if (score > best[start + length])
                {
                    best[start + length] = score;
                    from[start + length] = (start, piece);
                }
            }
            if (!hasSingleCharacter)
            {
                double score = best[start] + unknownScore;
                if (score > best[start + single])
                {
                    best[start + single] = score;
                    from[start + single] = (start, -1);
                }
            }
        }
        var path = new List<(int, int, int)>();
        for (int end = n; end > 0;)
        {
            var (start, piece) = from[end];
            path.Add((start, end - start, piece));
            end = start;
        }
        path.Reverse();
        return path;
    }

    /// <summary>
    /// Adds <paramref name="frequency"/> × the expected count of every piece in <paramref name="text"/>'s lattice to
    /// <paramref name="expected"/> and returns the log marginal likelihood of the text.
    /// </summary>
    public double AccumulateExpectedCounts(ReadOnlySpan<char> text, double frequency, double[] expected)
    {
        int n = text.Length;
        var edges = new List<(int Start, int End, int Piece, double Score)>(n * 4);
        for (int start = 0; start < n; start++)
        {
            if (!IsBoundary(text, start)) continue;
            bool hasSingleCharacter = false;
            int single = CharacterLength(text, start);
            for (int length = 1; length <= maxPieceLength && start + length <= n; length++)
            {
                if (!IsBoundary(text, start + length)) continue;
                int piece = Find(text.Slice(start, length));
                if (piece < 0) continue;
                if (length == single) hasSingleCharacter = true;
                edges.Add((start, start + length, piece, logProbabilities[piece]));
            }
            if (!hasSingleCharacter) edges.Add((start, start + single, -1, unknownScore));
        }
        // Edges are ordered by start, so one pass forward and one backward visit every edge after its predecessors.
        var alpha = new double[n + 1];
        var beta = new double[n + 1];
        Array.Fill(alpha, double.NegativeInfinity);
        Array.Fill(beta, double.NegativeInfinity);
        alpha[0] = 0;
        foreach (var e in edges) alpha[e.End] = LogAdd(alpha[e.End], alpha[e.Start] + e.Score);
        beta[n] = 0;
        for (int i = edges.Count - 1; i >= 0; i--)
        {
            var e = edges[i];
            beta[e.Start] = LogAdd(beta[e.Start], beta[e.End] + e.Score);
        }
        double z = alpha[n];
        foreach (var e in edges)
        {
            if (e.Piece < 0) continue;
            double posterior = alpha[e.Start] + e.Score + beta[e.End] - z;
            if (posterior > -50) expected[e.Piece] += frequency * Math.Exp(posterior);
        }
        return z;
    }

    /// <summary>Whether a piece may begin or end at <paramref name="index"/> (never inside a surrogate pair).</summary>
    internal static bool IsBoundary(ReadOnlySpan<char> text, int index) =>
        index == 0 || index >= text.Length || !char.IsLowSurrogate(text[index]);

    internal static int CharacterLength(ReadOnlySpan<char> text, int index) =>
        char.IsHighSurrogate(text[index]) && index + 1 < text.Length && char.IsLowSurrogate(text[index + 1]) ? 2 : 1;

    private static double LogAdd(double a, double b)
    {
        if (double.IsNegativeInfinity(a)) return b;
        if (double.IsNegativeInfinity(b)) return a;
        return a > b ? a + double.LogP1(Math.Exp(b - a)) : b + double.LogP1(Math.Exp(a - b));
    }
}
