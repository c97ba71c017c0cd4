using Rinna.Net.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// Hugging Face's beam search (<c>GenerationMixin._beam_search</c> with <c>BeamSearchScorer</c>), independent of the
/// model: each step scores every beam's continuations with log-softmax, runs the logits processors on those scores,
/// adds the beams' running sums, keeps the best <c>2 × num_beams</c> (more with several end-of-sequence ids)
/// candidates per prompt, moves those ending in an end-of-sequence id into the prompt's finished hypotheses and
/// continues with the best <c>num_beams</c> others, reordering the model's cache to follow them.
/// </summary>
/// <remarks>
/// Diverse (grouped) and constrained beam search, and beam sampling, are not implemented.
/// </remarks>
internal static class BeamSearch
{
    /// <summary>Runs beam search over prompts already repeated <see cref="GenerationConfig.NumBeams"/> times.</summary>
    /// <param name="inputIds">The prompts, each repeated once per beam (consecutive rows), <c>[batch × beams, length]</c>, int64.</param>
    /// <param name="nextTokenLogits">The model step: tokens to feed → last-position logits <c>[batch × beams, vocab]</c>.</param>
    /// <param name="reorderCache">Reorders the model's cache rows: row <c>i</c> becomes old row <c>index[i]</c>.</param>
    /// <param name="config">The settings (validated, <see cref="GenerationConfig.NumBeams"/> above 1).</param>
    /// <param name="createDecoder">Makes the decoder that gives each returned sequence its text.</param>
    /// <param name="logitsProcessors">Extra processors, after the built-in ones.</param>
    /// <param name="cancellationToken">
    /// Checked before every step; the search then ends with the hypotheses it has, and rows that did not end at an
    /// end-of-sequence id report <see cref="FinishReason.Cancelled"/>.
    /// </param>
    public static GenerationOutput Run(Tensor inputIds, Func<Tensor, Tensor> nextTokenLogits, Action<Tensor> reorderCache,
        GenerationConfig config, Func<StreamingDecoder>? createDecoder, IEnumerable<ILogitsProcessor>? logitsProcessors,
        CancellationToken cancellationToken)
    {
        int beams = config.NumBeams;
        int batchBeams = (int)inputIds.size(0);
        int batch = batchBeams / beams;
        int promptLength = (int)inputIds.size(1);
        int maxLength = promptLength + config.ResolveMaxNewTokens(promptLength);
        var eos = config.EosTokenId?.Select(id => (long)id).ToHashSet() ?? [];
        var scorer = new BeamSearchScorer(batch, beams, config.LengthPenalty, config.EarlyStopping, config.NumReturnSequences, maxLength - promptLength);
        var pipeline = LogitsProcessorList.Create(config, promptLength, logitsProcessors);

        // Only the first beam of each prompt starts live, so the first step does not pick the same token num_beams times.
        var beamScores = new float[batchBeams];
        for (int i = 0; i < batchBeams; i++) beamScores[i] = i % beams == 0 ? 0f : -1e9f;

        var sequences = inputIds.alias();
        var fed = inputIds.alias();
        try
        {
            int length = promptLength;
            bool cancelled = false;
            while (true)
            {
                if (cancellationToken.IsCancellationRequested)
                {
                    cancelled = true;
                    break;
                }
                using var scope = NewDisposeScope();
                var logits = nextTokenLogits(fed).to(ScalarType.Float32, inputIds.device);
                var logProbs = logits.log_softmax(-1);
                var processed = pipeline.Process(sequences, logProbs);
                long vocab = processed.size(1);
                var running = tensor(beamScores, ScalarType.Float32, processed.device).unsqueeze(1);
                var total = processed.add(running).view(batch, beams * vocab);
                int candidates = (int)Math.Min(Math.Max(2, 1 + eos.Count) * beams, beams * vocab);
                var (topScores, topIds) = total.topk(candidates, dim: 1, largest: true, sorted: true);
                var scores = topScores.cpu().data<float>().ToArray();
                var ids = topIds.cpu().data<long>().ToArray();

                var step = scorer.Process(sequences, scores, ids, vocab, eos, config.ResolvePadTokenId(), length + 1 - promptLength);
                beamScores = step.Scores;
                var index = tensor(step.Indices, ScalarType.Int64, sequences.device);
                var next = tensor(step.Tokens, ScalarType.Int64, sequences.device).unsqueeze(1);
                var grown = cat([sequences.index_select(0, index), next], 1).MoveToOuterDisposeScope();
                sequences.Dispose();
                sequences = grown;
                fed.Dispose();
                fed = next.MoveToOuterDisposeScope();
                reorderCache(index);
                length++;
                if (scorer.IsDone || length >= maxLength) break;
            }
            return scorer.Finalize(sequences, beamScores, promptLength, maxLength, eos.Count > 0 ? config.EosTokenId![0] : null,
                config.ResolvePadTokenId(), createDecoder, cancelled);
        }
        finally
        {
            sequences.Dispose();
            fed.Dispose();
        }
    }
}

/// <summary>Hugging Face's <c>BeamSearchScorer</c>: the finished hypotheses of every prompt and when each prompt is done.</summary>
internal sealed class BeamSearchScorer(int batch, int beams, double lengthPenalty, EarlyStopping earlyStopping, int keep, int maxNewTokens)
{
    private readonly BeamHypotheses[] hypotheses = Enumerable.Range(0, batch)
        .Select(_ => new BeamHypotheses(beams, lengthPenalty, earlyStopping, maxNewTokens)).ToArray();
    private readonly bool[] done = new bool[batch];

    public bool IsDone => done.All(d => d);

    public readonly record struct Step(float[] Scores, long[] Tokens, long[] Indices);

    /// <summary>
    /// One step: from each prompt's candidates (best first), end-of-sequence ones among the best <c>beams</c> become
    /// finished hypotheses (without the end-of-sequence id), the first <c>beams</c> others continue.
    /// </summary>
    /// <param name="sequences">The beams so far, <c>[batch × beams, length]</c>.</param>
    /// <param name="scores">Candidate scores, <c>[batch, k]</c> flattened, best first.</param>
    /// <param name="ids">Candidate ids over <c>beams × vocab</c>, same layout.</param>
    /// <param name="vocab">The vocabulary size.</param>
    /// <param name="eos">End-of-sequence ids.</param>
    /// <param name="padTokenId">Fed to the beams of prompts that are done.</param>
    /// <param name="generatedLength">New tokens a candidate would have, its end-of-sequence id included.</param>
    public Step Process(Tensor sequences, float[] scores, long[] ids, long vocab, IReadOnlySet<long> eos, int? padTokenId, int generatedLength)
    {
        int k = scores.Length / batch;
        var next = new Step(new float[batch * beams], new long[batch * beams], new long[batch * beams]);
        for (int b = 0; b < batch; b++)
        {
            if (done[b])
            {
                if (padTokenId is null) throw new ArgumentException("Beam search needs PadTokenId (or EosTokenId) for prompts that finish before the others.", "config");
                // HF feeds pads to a finished prompt's beams, continuing from global row 0; their output is never used.
                for (int j = 0; j < beams; j++) next.Tokens[b * beams + j] = padTokenId.Value;
                continue;
            }
            int kept = 0;
            for (int rank = 0; rank < k && kept < beams; rank++)
            {
                float score = scores[b * k + rank];
                long token = ids[b * k + rank] % vocab;
                long row = b * beams + ids[b * k + rank] / vocab;
                if (eos.Contains(token))
                {
                    // An end-of-sequence id outside the best `beams` candidates does not make a hypothesis.
                    if (rank >= beams) continue;
                    using var hypothesis = sequences[row].cpu();
                    hypotheses[b].Add(hypothesis.data<long>().ToArray(), score, generatedLength, atEos: true);
                }
                else
                {
                    next.Scores[b * beams + kept] = score;
                    next.Tokens[b * beams + kept] = token;
                    next.Indices[b * beams + kept] = row;
                    kept++;
                }
            }
            if (kept < beams)
                throw new InvalidOperationException($"Beam search kept {kept} of {beams} beams: too many candidates end the sequence.");
            done[b] = hypotheses[b].IsDone(scores[b * k], generatedLength);
        }
        return next;
    }

    /// <summary>
    /// Adds the running beams of unfinished prompts, then returns the best <c>keep</c> hypotheses per prompt, padded to
    /// the longest, with the first end-of-sequence id after each hypothesis shorter than the output.
    /// </summary>
    public GenerationOutput Finalize(Tensor sequences, float[] beamScores, int promptLength, int maxLength, int? eosTokenId, int? padTokenId,
        Func<StreamingDecoder>? createDecoder, bool cancelled)
    {
        using var rowsOnCpu = sequences.cpu();
        var all = rowsOnCpu.data<long>().ToArray();
        int width = (int)sequences.size(1);
        for (int b = 0; b < batch; b++)
        {
            if (done[b]) continue;
            for (int j = 0; j < beams; j++)
            {
                int row = b * beams + j;
                // A search cancelled before its first step has generated nothing; length 1 keeps the score finite.
                hypotheses[b].Add(all.AsSpan(row * width, width).ToArray(), beamScores[row], Math.Max(1, width - promptLength), atEos: false);
            }
        }

        var best = new List<(double Score, long[] Tokens, bool AtEos)>();
        for (int b = 0; b < batch; b++)
        {
            // Python's sorted() is stable and pop() takes the last: the highest score, the later one among equals.
            var sorted = hypotheses[b].Beams.OrderBy(h => h.Score).ToList();
            for (int j = 0; j < keep; j++)
            {
                best.Add(sorted[^1]);
                sorted.RemoveAt(sorted.Count - 1);
            }
        }

        int longest = best.Max(h => h.Tokens.Length);
        int outputWidth = cancelled
            ? Math.Min(best.Max(h => h.Tokens.Length + (h.AtEos ? 1 : 0)), maxLength)
            : Math.Min(longest + 1, maxLength);
        if (best.Any(h => h.Tokens.Length != longest) && padTokenId is null)
            throw new ArgumentException("Beam hypotheses of different lengths need PadTokenId (or EosTokenId) to pad them.", "config");
        var output = new long[best.Count * outputWidth];
        var rows = new List<GeneratedSequence>();
        for (int i = 0; i < best.Count; i++)
        {
            var tokens = best[i].Tokens;
            var span = output.AsSpan(i * outputWidth, outputWidth);
            span.Fill(padTokenId ?? 0);
            tokens.CopyTo(span);
            var generated = tokens.Skip(promptLength).Select(t => (int)t).ToList();
            var text = Decode(createDecoder, generated);
            // HF writes the end-of-sequence id after every hypothesis shorter than the output; a cancelled search's
            // running beams are short only because it stopped, so they keep their length and their reason.
            bool endsWithEos = tokens.Length < outputWidth && eosTokenId is not null && (best[i].AtEos || !cancelled);
            if (endsWithEos)
            {
                span[tokens.Length] = eosTokenId!.Value;
                generated.Add(eosTokenId.Value);
            }
            var reason = endsWithEos ? FinishReason.EndOfSequence : cancelled ? FinishReason.Cancelled : FinishReason.Length;
            rows.Add(new GeneratedSequence(generated, reason, text, null));
        }
        return new GenerationOutput(tensor(output, [best.Count, outputWidth], ScalarType.Int64).to(sequences.device), rows)
        {
            SequencesScores = best.Select(h => (float)h.Score).ToArray(),
        };
    }

    private static string? Decode(Func<StreamingDecoder>? createDecoder, IEnumerable<int> tokens)
    {
        if (createDecoder is null) return null;
        var decoder = createDecoder();
        var text = new System.Text.StringBuilder();
        foreach (var token in tokens) text.Append(decoder.Append(token));
        return text.Append(decoder.Flush()).ToString();
    }
}

/// <summary>Hugging Face's <c>BeamHypotheses</c>: the best <c>num_beams</c> finished hypotheses of one prompt.</summary>
internal sealed class BeamHypotheses(int beams, double lengthPenalty, EarlyStopping earlyStopping, int maxNewTokens)
{
    private readonly List<(double Score, long[] Tokens, bool AtEos)> hypotheses = [];
    private double worstScore = 1e9;

    public IReadOnlyList<(double Score, long[] Tokens, bool AtEos)> Beams => hypotheses;

    /// <summary>Adds a hypothesis scored <c>sumLogProbs / generatedLength ^ length_penalty</c> if it is among the best.</summary>
    public void Add(long[] tokens, double sumLogProbs, int generatedLength, bool atEos)
    {
        double score = sumLogProbs / Math.Pow(generatedLength, lengthPenalty);
        if (hypotheses.Count >= beams && score <= worstScore) return;
        hypotheses.Add((score, tokens, atEos));
        if (hypotheses.Count > beams)
        {
            var ranked = hypotheses.Select((h, i) => (h.Score, Index: i)).OrderBy(t => t.Score).ThenBy(t => t.Index).ToList();
            hypotheses.RemoveAt(ranked[0].Index);
            worstScore = ranked[1].Score;
        }
        else
        {
            worstScore = Math.Min(score, worstScore);
        }
    }

    /// <summary>Whether no running beam can improve the finished hypotheses any more.</summary>
    /// <param name="bestSumLogProbs">The best candidate's running score this step.</param>
    /// <param name="generatedLength">New tokens after this step.</param>
    public bool IsDone(double bestSumLogProbs, int generatedLength)
    {
        if (hypotheses.Count < beams) return false;
        switch (earlyStopping)
        {
            case EarlyStopping.True:
                return true;
            case EarlyStopping.False:
                return worstScore >= bestSumLogProbs / Math.Pow(generatedLength, lengthPenalty);
            default:
                // "never": with a positive length penalty a beam's best reachable score is at the maximum length.
                int length = lengthPenalty > 0 ? maxNewTokens : generatedLength;
                return worstScore >= bestSumLogProbs / Math.Pow(length, lengthPenalty);
        }
    }
}
