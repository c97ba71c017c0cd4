using System.Globalization;
using System.Text;

namespace Rinna.Net.Tokenization.Training;

/// <summary>
/// Trains a SentencePiece Unigram tokenizer in rinna's bilingual layout: the algorithm of SentencePiece's
/// <c>unigram_model_trainer.cc</c> (Kudo 2018), written anew in C#.
/// </summary>
/// <remarks>
/// <para>
/// Layout (as rinna's <c>bilingual-gpt-neox-4b</c> and the repository's <c>bilingual-lookalike</c> fixture):
/// <c>[PAD]</c>=0 (control), <c>[UNK]</c>=1 (unknown), <c>&lt;s&gt;</c>=2, <c>&lt;/s&gt;</c>=3, <c>[CLS]</c>=4,
/// <c>[SEP]</c>=5, <c>[MASK]</c>=6 (control), user-defined <c>▁</c>=7, <c>\n</c>=8, <c>\t</c>=9, byte pieces
/// <c>&lt;0x00&gt;</c>..<c>&lt;0xFF&gt;</c>=10..265, then the trained pieces ordered by score. Because <c>▁</c> (a space)
/// is user-defined, every space is a token of its own and no trained piece contains one — rinna's behaviour
/// ("Hello world" → <c>Hello ▁ world</c>, never <c>▁world</c>).
/// </para>
/// <para>
/// Training: the text is cut at spaces, newlines and tabs and wherever the character class changes (Han/kana, Latin,
/// digits, other letters by block, punctuation and symbols), as SentencePiece's script splitting does, so no piece spans
/// two classes. The seed vocabulary is every character that the <see cref="UnigramTrainerOptions.CharacterCoverage"/>
/// keeps plus the most frequent substrings (found level by level: a substring is counted only if its prefix occurs at
/// least twice), ranked by frequency × length. Then rounds of EM (expected counts by forward-backward over each
/// segment's lattice; the M step drops pieces expected less than half a time and sets log-probabilities with the same
/// digamma update SentencePiece uses) alternate with pruning: each piece's loss is the drop in likelihood when its Viterbi
/// uses are re-segmented by its best alternative path, and the pieces with the smallest loss are removed until
/// <see cref="UnigramTrainerOptions.ShrinkingFactor"/> of them remain. Single characters are never pruned. When the
/// vocabulary is within 10% of the target, the required characters and the best-scored pieces make the final table.
/// </para>
/// <para>
/// The text is normalized by <see cref="UnigramTrainerOptions.Normalization"/> before anything else (the model encodes
/// the same way and writes the rule into its <c>normalizer_spec</c>); with the default <c>identity</c>, text round-trips
/// exactly, with rinna's <c>nmt_nfkc</c> full-width and half-width forms become one piece. Simplifications against SentencePiece: seeds come from a level-wise frequent-substring count instead of a suffix
/// array, and the pruning loss uses the piece's own Viterbi frequency for the sentence-frequency factor.
/// </para>
/// </remarks>
public static class UnigramTrainer
{
    /// <summary>The special, user-defined and byte pieces every model starts with (ids 0..265).</summary>
    public const int FixedPieceCount = 266;

    /// <summary>The space piece's text.</summary>
    public const string SpacePiece = "▁";

    private const double ExpectedFrequencyThreshold = 0.5;

    /// <summary>rinna's special and user-defined pieces, in id order.</summary>
    internal static IReadOnlyList<SentencePieceEntry> MetaPieces { get; } =
    [
        new("[PAD]", 0, SentencePieceType.Control),
        new("[UNK]", 0, SentencePieceType.Unknown),
        new("<s>", 0, SentencePieceType.Control),
        new("</s>", 0, SentencePieceType.Control),
        new("[CLS]", 0, SentencePieceType.Control),
        new("[SEP]", 0, SentencePieceType.Control),
        new("[MASK]", 0, SentencePieceType.Control),
        new(SpacePiece, 0, SentencePieceType.UserDefined),
        new("\n", 0, SentencePieceType.UserDefined),
        new("\t", 0, SentencePieceType.UserDefined),
    ];

    /// <summary>Trains a tokenizer on <paramref name="sentences"/> (lines or paragraphs of raw text).</summary>
    /// <param name="sentences">Training text; each item is one sentence or paragraph.</param>
    /// <param name="options">Settings; <c>null</c> for the defaults.</param>
    /// <param name="progress">Receives a line per training round.</param>
    /// <param name="cancellationToken">Checked between EM steps.</param>
    /// <exception cref="ArgumentException">
    /// The text has no trainable characters, or the characters the coverage requires do not fit in the vocabulary.
    /// </exception>
    public static UnigramModel Train(IEnumerable<string> sentences, UnigramTrainerOptions? options = null,
        IProgress<string>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sentences);
        options ??= new UnigramTrainerOptions();
        options.Validate();

        var characterCounts = new Dictionary<int, long>();
        var rawSegments = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var sentence in sentences)
            foreach (var segment in Segments(options.Normalization.Normalize(sentence)))
                rawSegments[segment] = rawSegments.GetValueOrDefault(segment) + 1;
        foreach (var (segment, count) in rawSegments)
            foreach (var rune in segment.EnumerateRunes())
                characterCounts[rune.Value] = characterCounts.GetValueOrDefault(rune.Value) + count;
        if (characterCounts.Count == 0) throw new ArgumentException("the training text has no characters to learn from.", nameof(sentences));

        var required = RequiredCharacters(characterCounts, options.CharacterCoverage);
        var segments = SplitAtRareCharacters(rawSegments, required);
        progress?.Report($"{segments.Count} distinct segments, {characterCounts.Count} distinct characters, {required.Count} kept as pieces");

        int normalTarget = options.VocabSize - FixedPieceCount;
        if (required.Count > normalTarget)
            throw new ArgumentException(
                $"the vocabulary has room for {normalTarget} trained pieces but character coverage {options.CharacterCoverage} needs {required.Count} " +
                "single characters; increase VocabSize or decrease CharacterCoverage.", nameof(options));
        var (pieces, scores) = Seed(segments, required, characterCounts, options);
        progress?.Report($"seed vocabulary: {pieces.Count} pieces");

        int desired = Math.Max(normalTarget, (int)(normalTarget * 1.1));
        for (int round = 1; ; round++)
        {
            for (int iteration = 0; iteration < options.SubIterations; iteration++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var (expected, objective) = ExpectationStep(pieces, scores, segments, options.NumThreads);
                (pieces, scores) = MaximizationStep(pieces, expected, required);
                progress?.Report($"round {round}.{iteration}: {pieces.Count} pieces, negative log-likelihood {objective:F4} per segment");
            }
            if (pieces.Count <= desired) break;
            cancellationToken.ThrowIfCancellationRequested();
            int before = pieces.Count;
            (pieces, scores) = Prune(pieces, scores, segments, desired, options.ShrinkingFactor);
            // Only unprunable single characters are left: the final selection takes the best of them.
            if (pieces.Count == before) break;
        }
        return Finalize(pieces, scores, required, normalTarget, options);
    }

    /// <summary>
    /// Cuts a text into the segments no piece may cross: at spaces, <c>▁</c>, newlines and tabs (which are
    /// user-defined pieces) and at every change of character class.
    /// </summary>
    internal static IEnumerable<string> Segments(string text)
    {
        var builder = new StringBuilder();
        int currentClass = -1;
        foreach (var rune in text.EnumerateRunes())
        {
            if (rune.Value is ' ' or '\n' or '\t' or 0x2581 || Rune.IsControl(rune))
            {
                if (builder.Length > 0) yield return builder.ToString();
                builder.Clear();
                currentClass = -1;
                continue;
            }
            int runeClass = CharacterClass(rune);
            if (runeClass == InheritClass) runeClass = currentClass == -1 ? CommonClass : currentClass;
            if (currentClass != -1 && runeClass != currentClass)
            {
                yield return builder.ToString();
                builder.Clear();
            }
            builder.Append(rune.ToString());
            currentClass = runeClass;
        }
        if (builder.Length > 0) yield return builder.ToString();
    }

    private const int CommonClass = 0;
    private const int HanClass = 1;
    private const int LatinClass = 2;
    private const int DigitClass = 3;
    private const int InheritClass = 4;

    /// <summary>A coarse Unicode script, as SentencePiece's script splitting uses (Hiragana and Katakana count as Han).</summary>
    private static int CharacterClass(Rune rune)
    {
        int c = rune.Value;
        if (c is (>= 0x3040 and <= 0x30FF) or (>= 0x31F0 and <= 0x31FF) or (>= 0xFF66 and <= 0xFF9F) or 0x3005 or 0x3006
            or (>= 0x3400 and <= 0x4DBF) or (>= 0x4E00 and <= 0x9FFF) or (>= 0xF900 and <= 0xFAFF) or (>= 0x20000 and <= 0x3FFFF))
            return HanClass;
        var category = Rune.GetUnicodeCategory(rune);
        if (category is UnicodeCategory.NonSpacingMark or UnicodeCategory.EnclosingMark or UnicodeCategory.SpacingCombiningMark)
            return InheritClass;
        if (category == UnicodeCategory.DecimalDigitNumber) return DigitClass;
        if (Rune.IsLetter(rune))
            return c < 0x0250 || c is (>= 0x1E00 and <= 0x1EFF) || c is (>= 0xFF21 and <= 0xFF5A) ? LatinClass : 100 + (c >> 7);
        return CommonClass;
    }

    private static HashSet<string> RequiredCharacters(Dictionary<int, long> counts, double coverage)
    {
        long total = counts.Values.Sum();
        var required = new HashSet<string>(StringComparer.Ordinal);
        long covered = 0;
        foreach (var (character, count) in counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key))
        {
            if (required.Count > 0 && covered >= coverage * total) break;
            required.Add(char.ConvertFromUtf32(character));
            covered += count;
        }
        return required;
    }

    /// <summary>Characters outside the coverage are byte-encoded at run time, so no piece may contain them: cut there.</summary>
    private static List<(string Text, long Count)> SplitAtRareCharacters(Dictionary<string, long> segments, HashSet<string> required)
    {
        var result = new Dictionary<string, long>(StringComparer.Ordinal);
        var builder = new StringBuilder();
        foreach (var (segment, count) in segments)
        {
            foreach (var rune in segment.EnumerateRunes())
            {
                var text = rune.ToString();
                if (required.Contains(text))
                {
                    builder.Append(text);
                    continue;
                }
                if (builder.Length > 0) Add(builder.ToString(), count);
                builder.Clear();
            }
            if (builder.Length > 0) Add(builder.ToString(), count);
            builder.Clear();
        }
        return result.Select(kv => (kv.Key, kv.Value)).OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();

        void Add(string text, long count) => result[text] = result.GetValueOrDefault(text) + count;
    }

    private static (List<string>, List<double>) Seed(List<(string Text, long Count)> segments, HashSet<string> required,
        Dictionary<int, long> characterCounts, UnigramTrainerOptions options)
    {
        var candidates = new Dictionary<string, long>(StringComparer.Ordinal);
        // Level-wise (Apriori): a substring is at most as frequent as its prefix, so only frequent prefixes are extended.
        var frequent = new HashSet<string>(required, StringComparer.Ordinal);
        var frequentLookup = frequent.GetAlternateLookup<ReadOnlySpan<char>>();
        for (int length = 2; length <= options.MaxPieceLength; length++)
        {
            var counts = new Dictionary<string, long>(StringComparer.Ordinal);
            var countLookup = counts.GetAlternateLookup<ReadOnlySpan<char>>();
            foreach (var (text, count) in segments)
            {
                var span = text.AsSpan();
                for (int start = 0; start + length <= span.Length; start++)
                {
                    if (!PieceLattice.IsBoundary(span, start) || !PieceLattice.IsBoundary(span, start + length)) continue;
                    var candidate = span.Slice(start, length);
                    var prefix = candidate[..^(char.IsLowSurrogate(candidate[^1]) ? 2 : 1)];
                    if (!frequentLookup.Contains(prefix)) continue;
                    countLookup[candidate] = countLookup.TryGetValue(candidate, out var c) ? c + count : count;
                }
            }
            foreach (var (text, count) in counts)
            {
                if (count < 2) continue;
                frequent.Add(text);
                candidates[text] = count * text.Length;
            }
        }

        var seeds = candidates.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .Take(options.SeedSize).ToList();
        var pieces = new List<string>();
        var weights = new List<double>();
        foreach (var character in required.Order(StringComparer.Ordinal))
        {
            pieces.Add(character);
            weights.Add(characterCounts[char.ConvertToUtf32(character, 0)]);
        }
        foreach (var (text, weight) in seeds)
        {
            pieces.Add(text);
            weights.Add(weight);
        }
        double logTotal = Math.Log(weights.Sum());
        return (pieces, weights.Select(w => Math.Log(w) - logTotal).ToList());
    }

    private static (double[] Expected, double Objective) ExpectationStep(List<string> pieces, List<double> scores,
        List<(string Text, long Count)> segments, int threads)
    {
        var lattice = new PieceLattice(pieces, scores);
        var partials = new (double[] Expected, double Objective)[threads];
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, worker =>
        {
            var expected = new double[pieces.Count];
            double objective = 0;
            for (int i = worker; i < segments.Count; i += threads)
            {
                var (text, count) = segments[i];
                objective -= count * lattice.AccumulateExpectedCounts(text, count, expected);
            }
            partials[worker] = (expected, objective);
        });
        var total = new double[pieces.Count];
        foreach (var partial in partials)
            for (int i = 0; i < total.Length; i++) total[i] += partial.Expected[i];
        long frequency = segments.Sum(s => s.Count);
        return (total, partials.Sum(p => p.Objective) / frequency);
    }

    private static (List<string>, List<double>) MaximizationStep(List<string> pieces, double[] expected, HashSet<string> required)
    {
        var kept = new List<(string Piece, double Count)>();
        for (int i = 0; i < pieces.Count; i++)
            if (expected[i] >= ExpectedFrequencyThreshold || required.Contains(pieces[i]))
                kept.Add((pieces[i], Math.Max(expected[i], ExpectedFrequencyThreshold)));
        // SentencePiece's Bayesian update: digamma instead of log sparsifies the model (Kudo 2018, §3.2 footnote).
        double logSum = Digamma(kept.Sum(k => k.Count));
        return (kept.Select(k => k.Piece).ToList(), kept.Select(k => Digamma(k.Count) - logSum).ToList());
    }

    private static (List<string>, List<double>) Prune(List<string> pieces, List<double> scores,
        List<(string Text, long Count)> segments, int desired, double shrinkingFactor)
    {
        var lattice = new PieceLattice(pieces, scores);
        var frequency = new double[pieces.Count];
        foreach (var (text, count) in segments)
            foreach (var (_, _, piece) in lattice.Viterbi(text))
                if (piece >= 0) frequency[piece] += count;
        double total = frequency.Sum();
        double logTotal = Math.Log(total);

        var alwaysKeep = new bool[pieces.Count];
        var losses = new List<(int Piece, double Loss)>();
        for (int i = 0; i < pieces.Count; i++)
        {
            var alternatives = lattice.Viterbi(pieces[i], excluded: i);
            if (alternatives.Any(a => a.Piece < 0))
            {
                // No way to spell the piece without it (a single character): it can never be pruned.
                alwaysKeep[i] = true;
                continue;
            }
            if (frequency[i] == 0) continue;
            double logProbabilityAfter = Math.Log(total + frequency[i] * (alternatives.Count - 1));
            double alternativeLogProbability = alternatives.Sum(a => Math.Log(frequency[a.Piece] + frequency[i]) - logProbabilityAfter);
            double ownLogProbability = Math.Log(frequency[i]) - logTotal;
            losses.Add((i, frequency[i] / total * (ownLogProbability - alternativeLogProbability)));
        }
        int keepCount = Math.Max(desired, (int)(shrinkingFactor * pieces.Count));
        var keep = new HashSet<int>(Enumerable.Range(0, pieces.Count).Where(i => alwaysKeep[i]));
        foreach (var (piece, _) in losses.OrderByDescending(l => l.Loss).ThenBy(l => l.Piece))
        {
            if (keep.Count >= keepCount) break;
            keep.Add(piece);
        }
        var order = keep.Order().ToList();
        return (order.Select(i => pieces[i]).ToList(), order.Select(i => scores[i]).ToList());
    }

    private static UnigramModel Finalize(List<string> pieces, List<double> scores, HashSet<string> required, int normalTarget,
        UnigramTrainerOptions options)
    {
        var byPiece = pieces.Select((p, i) => (p, scores[i])).ToDictionary(x => x.p, x => x.Item2, StringComparer.Ordinal);
        double floor = scores.Count == 0 ? 0 : scores.Min() - 1;
        var chosen = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var character in required.OrderByDescending(c => byPiece.GetValueOrDefault(c, floor)).ThenBy(c => c, StringComparer.Ordinal))
        {
            if (chosen.Count >= normalTarget) break;
            chosen[character] = byPiece.GetValueOrDefault(character, floor);
        }
        foreach (var (piece, score) in byPiece.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (chosen.Count >= normalTarget) break;
            chosen.TryAdd(piece, score);
        }
        var entries = new List<SentencePieceEntry>(MetaPieces);
        for (int b = 0; b < 256; b++) entries.Add(new($"<0x{b:X2}>", 0, SentencePieceType.Byte));
        entries.AddRange(chosen.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => new SentencePieceEntry(kv.Key, (float)kv.Value, SentencePieceType.Normal)));
        return new UnigramModel(entries, options);
    }

    private static double Digamma(double x)
    {
        double result = 0;
        for (; x < 7; x++) result -= 1 / x;
        x -= 0.5;
        double xx = 1 / x, xx2 = xx * xx, xx4 = xx2 * xx2;
        return result + Math.Log(x) + 1.0 / 24 * xx2 - 7.0 / 960 * xx4 + 31.0 / 8064 * xx4 * xx2 - 127.0 / 30720 * xx4 * xx4;
    }
}
