using Rinna.Net.Tokenization;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>Proposes tokens to follow a sequence, for speculative decoding (HF's <c>CandidateGenerator</c>).</summary>
internal interface ICandidateGenerator
{
    /// <summary>Up to <paramref name="maxCount"/> proposed ids to follow <paramref name="sequence"/> (prompt and tokens so far); may be empty.</summary>
    long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount);

    /// <summary>
    /// The processed scores <c>[n, vocab]</c> the last proposals were drawn from, when the generator samples them from
    /// a distribution (an assistant model); <c>null</c> for proposals without one (prompt lookup). Owned by the generator.
    /// </summary>
    Tensor? CandidateScores => null;

    /// <summary>Learns how many of the last call's <paramref name="proposed"/> tokens the model accepted.</summary>
    void Update(int proposed, int accepted);

    /// <summary>Learns what the last round cost: <paramref name="tokens"/> appended in <paramref name="elapsed"/> with <paramref name="proposed"/> proposals.</summary>
    void Observe(int proposed, int tokens, TimeSpan elapsed)
    {
    }
}

/// <summary>
/// HF's <c>PromptLookupCandidateGenerator</c>: finds the earliest earlier occurrence of the sequence's last
/// <c>max_matching_ngram_size</c> tokens (then of shorter n-grams, down to one token) that has tokens after it, and
/// proposes up to <c>num_output_tokens</c> of those.
/// </summary>
internal sealed class PromptLookupCandidateGenerator(int numOutputTokens, int maxMatchingNgramSize = 2) : ICandidateGenerator
{
    public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount)
    {
        int length = sequence.Count;
        int count = Math.Min(numOutputTokens, maxCount);
        if (count <= 0) return [];
        for (int n = Math.Min(maxMatchingNgramSize, length); n >= 1; n--)
        {
            for (int start = 0; start + n <= length; start++)
            {
                bool match = true;
                for (int j = 0; j < n && match; j++) match = sequence[start + j] == sequence[length - n + j];
                if (!match) continue;
                int from = start + n, to = Math.Min(from + count, length);
                if (from < to) return Enumerable.Range(from, to - from).Select(i => sequence[i]).ToArray();
            }
        }
        return [];
    }

    public void Update(int proposed, int accepted)
    {
    }
}

/// <summary>
/// Stops proposing while proposals do not pay in time, so speculation on text that does not repeat its context costs
/// (almost) nothing: after two missed rounds in a row it pauses for 4 steps, and each pause that ends in another miss
/// doubles the next, up to 64 steps. A pause also lasts at least 32 times the plain steps that recent rounds with
/// proposals lost (up to 1024 steps), so a failed probe costs about 3 % at most however expensive verification is, and
/// the pause after it is no shorter. A round with proposals misses unless it paid: all its proposals rejected, or
/// accepted but not clearly cheaper per token than plain steps, or cheaper while the recent rounds with proposals, all
/// told, were not. Only a round that paid ends the pauses. Plain steps are timed on the steps without proposals (one
/// every 33 rounds while proposing). Proposals never change greedy output, only how many model calls it takes, so
/// timing may steer them; Hugging Face's prompt lookup has no such fallback.
/// <para>
/// With a <see cref="SpeculationMemory"/> (one per model) a generation starts where the last one on the model left off:
/// short answers end before the pauses grow, so a model on which speculation does not pay would otherwise pay the
/// first probes in every answer. A round that pays in a later answer ends the pauses as before.
/// </para>
/// </summary>
internal sealed class FallbackCandidateGenerator : ICandidateGenerator
{
    private const int MissesBeforePause = 2;
    private const int FirstPause = 4;
    private const int LongestPause = 64;

    /// <summary>Every this many rounds with proposals, one plain step keeps the plain cost it is compared with current.</summary>
    private const int PlainProbeInterval = 32;

    /// <summary>A round pays below this share of a plain step's cost per token: timing noise and rounds that only break even must not keep speculation alive.</summary>
    private const double PaysBelow = 0.9;

    /// <summary>What each earlier round with proposals keeps of its weight per new one: the average follows the last few rounds, so text that starts quoting resumes proposals within a probe or two.</summary>
    private const double Decay = 0.6;

    /// <summary>Plain steps a pause lasts at least per plain step's worth that recent rounds with proposals lost, and the most that makes.</summary>
    private const int PausePerLostStep = 32;
    private const int LongestCostlyPause = 1024;

    private readonly ICandidateGenerator inner;
    private readonly SpeculationMemory? memory;
    private SpeculationState state = new(FirstPause, null, 0, 0, 0);
    private int misses;
    private int pausedSteps;
    private int roundsSincePlain;
    private int lastAccepted;

    public FallbackCandidateGenerator(ICandidateGenerator inner, SpeculationMemory? memory = null)
    {
        this.inner = inner;
        this.memory = memory;
        if (memory?.Recall() is not { } saved) return;
        state = saved;
        // Still in the pausing regime: begin with the last pause, and probe after it.
        if (state.NextPause > FirstPause)
        {
            pausedSteps = Pause() / 2;
            misses = MissesBeforePause - 1;
        }
    }

    public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount)
    {
        if (pausedSteps > 0)
        {
            pausedSteps--;
            roundsSincePlain = 0;
            return [];
        }
        if (++roundsSincePlain > PlainProbeInterval || (state.PlainSecondsPerToken is null && roundsSincePlain > 2))
        {
            roundsSincePlain = 0;
            return [];
        }
        var candidates = inner.GetCandidates(sequence, maxCount);
        if (candidates.Length == 0) roundsSincePlain = 0;
        return candidates;
    }

    public Tensor? CandidateScores => inner.CandidateScores;

    public void Update(int proposed, int accepted)
    {
        inner.Update(proposed, accepted);
        lastAccepted = accepted;
    }

    /// <summary>Judges the round <see cref="Update"/> reported, on its time (rounds the loop does not time are not judged).</summary>
    public void Observe(int proposed, int tokens, TimeSpan elapsed)
    {
        inner.Observe(proposed, tokens, elapsed);
        if (tokens <= 0) return;
        double seconds = elapsed.TotalSeconds;
        if (proposed == 0)
        {
            state = state with { PlainSecondsPerToken = state.PlainSecondsPerToken is { } average ? 0.7 * average + 0.3 * seconds / tokens : seconds / tokens };
            memory?.Remember(state);
            return;
        }
        // Seconds over tokens of recent rounds, not an average of per-round ratios: what the rounds cost per generated token.
        state = state with
        {
            RoundSeconds = Decay * state.RoundSeconds + seconds, RoundTokens = Decay * state.RoundTokens + tokens, Rounds = Decay * state.Rounds + 1,
        };
        // A rejected round gives one token for more than a plain step costs; an accepted one pays only if clearly cheaper
        // per token than plain steps, and only while recent rounds with proposals were too.
        if (lastAccepted == 0)
        {
            Miss();
        }
        else if (state.PlainSecondsPerToken is { } plain)
        {
            if (seconds / tokens < PaysBelow * plain && state.RoundSeconds / state.RoundTokens < PaysBelow * plain)
            {
                misses = 0;
                state = state with { NextPause = FirstPause };
            }
            else
            {
                Miss();
            }
        }
        memory?.Remember(state);
    }

    private void Miss()
    {
        if (++misses < MissesBeforePause) return;
        pausedSteps = Pause();
        // Pauses never shrink but through a round that pays, so a noisy plain-step time cannot shorten a costly one.
        state = state with { NextPause = Math.Max(pausedSteps, Math.Min(pausedSteps * 2, LongestPause)) };
        // The round after a pause probes once: a miss there pauses again at once, for longer.
        misses = MissesBeforePause - 1;
    }

    /// <summary>The next pause, longer where recent rounds with proposals cost several plain steps more than their tokens are worth.</summary>
    private int Pause()
    {
        if (state.PlainSecondsPerToken is not { } plain || state.Rounds == 0) return state.NextPause;
        double lostSteps = (state.RoundSeconds - state.RoundTokens * plain) / (state.Rounds * plain);
        return Math.Max(state.NextPause, (int)Math.Min(LongestCostlyPause, Math.Ceiling(PausePerLostStep * lostSteps)));
    }
}

/// <summary>
/// What <see cref="FallbackCandidateGenerator"/> has learned: the next pause, seconds per token of plain steps (an
/// exponential average), and the seconds, tokens and number of recent rounds with proposals (sums that decay per round).
/// </summary>
internal readonly record struct SpeculationState(int NextPause, double? PlainSecondsPerToken, double RoundSeconds, double RoundTokens, double Rounds);

/// <summary>What <see cref="FallbackCandidateGenerator"/> learned on one model, for the next generation on it.</summary>
internal sealed class SpeculationMemory
{
    private readonly Lock gate = new();
    private SpeculationState? state;

    public SpeculationState? Recall()
    {
        lock (gate) return state;
    }

    public void Remember(SpeculationState learned)
    {
        lock (gate) state = learned;
    }
}

/// <summary>
/// HF's assisted decoding loop (<c>GenerationMixin._assisted_decoding</c>) for one prompt: each step takes proposals
/// from an <see cref="ICandidateGenerator"/>, runs the model once over the last token and all proposals with the KV
/// cache, picks a token at each position with the same logits processors and sampler as plain decoding, keeps the
/// proposals while they equal the picks, appends the first differing pick (or one more token when all matched), and
/// drops the rejected positions from the cache.
/// </summary>
/// <remarks>
/// Greedy output is therefore plain greedy output: every kept token is the argmax given exactly the tokens before
/// it. When sampling, proposals that come with the proposer's distribution <c>q</c> (an assistant model) are verified by
/// HF's speculative sampling (Leviathan et al.): proposal <c>i</c> is kept with probability <c>min(1, p_i/q_i)</c>, and the
/// token after the kept ones is drawn from <c>max(0, p − q)</c> after a rejection, from <c>p</c> otherwise; proposals
/// without a distribution (prompt lookup) are kept while they equal the token drawn from the model at each position.
/// Either way every token follows the model's own sampling distribution. An end-of-sequence id, a stop string or the
/// length limit ends the row at that token, even inside accepted proposals.
/// </remarks>
internal static class SpeculativeDecoding
{
    public static GenerationOutput Run(Tensor inputIds, ModelStepper stepper, ICandidateGenerator generator, GenerationConfig config,
        Func<StreamingDecoder>? createDecoder, Action<GenerationTracker>? onStep, IEnumerable<ILogitsProcessor>? logitsProcessors,
        CancellationToken cancellationToken)
    {
        if (inputIds.size(0) != 1)
            throw new ArgumentException($"speculative decoding takes a batch of one prompt, got {inputIds.size(0)}.", nameof(inputIds));
        int promptLength = (int)inputIds.size(1);
        var device = inputIds.device;
        var tracker = new GenerationTracker(config, 1, promptLength, createDecoder);
        var pipeline = LogitsProcessorList.Create(config, promptLength, logitsProcessors);
        using var sampler = TokenSampler.Create(config);
        List<long> sequence;
        using (var prompt = inputIds.cpu()) sequence = prompt.data<long>().ToList();
        int modelCalls = 0, proposed = 0, acceptedTotal = 0;

        while (!tracker.IsDone)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                tracker.Cancel();
                break;
            }
            using var scope = NewDisposeScope();
            long started = System.Diagnostics.Stopwatch.GetTimestamp();
            int before = sequence.Count;
            // Proposals past the token budget could never be kept; the model's own next token always can.
            var candidates = generator.GetCandidates(sequence, tracker.MaxNewTokens - tracker.Steps - 1);
            // A first round with proposals prefills the prompt but its last token apart, so that the output head runs for
            // the proposals only, not for every prompt position; without proposals it is plain decoding's prefill.
            if (candidates.Length > 0 && stepper.CachedLength == 0 && promptLength > 1)
                stepper.Forward(inputIds.narrow(1, 0, promptLength - 1));
            var fedIds = sequence.Skip(stepper.CachedLength).Concat(candidates).ToArray();
            var fed = tensor(fedIds, [1, fedIds.Length], ScalarType.Int64, device);
            // Logits are needed at the last fed token and at each proposal; a round without proposals is a plain step.
            var logits = candidates.Length > 0
                ? stepper.Forward(fed, allPositions: true).to(ScalarType.Float32, device)
                : stepper.Forward(fed).unsqueeze(1).to(ScalarType.Float32, device);
            var history = tensor(sequence.Concat(candidates).ToArray(), [1, before + candidates.Length], ScalarType.Int64, device);
            int first = candidates.Length > 0 ? fedIds.Length - candidates.Length - 1 : 0;
            var picks = generator.CandidateScores is { } proposerScores && config.DoSample && candidates.Length > 0
                ? SpeculativeSampling(candidates, proposerScores, i => pipeline.Process(history.narrow(1, 0, before + i), logits[.., first + i, ..]), sampler)
                : Verify(candidates, i => pipeline.Process(history.narrow(1, 0, before + i), logits[.., first + i, ..]), sampler);
            int accepted = Math.Min(picks.Accepted, candidates.Length);
            modelCalls++;
            proposed += candidates.Length;
            acceptedTotal += accepted;
            foreach (var token in picks.Tokens)
            {
                sequence.Add(tracker.Advance([token])[0]);
                onStep?.Invoke(tracker);
                if (tracker.IsDone) break;
            }
            generator.Update(candidates.Length, accepted);
            // The first round also prefilled the prompt, so it says nothing about a step's cost.
            if (modelCalls > 1) generator.Observe(candidates.Length, sequence.Count - before, System.Diagnostics.Stopwatch.GetElapsedTime(started));
            // Every token but the last appended has its keys computed on the final history; the rest are rejected proposals.
            stepper.Truncate(Math.Min(stepper.CachedLength, sequence.Count - 1));
        }
        var sequences = tensor(sequence.ToArray(), [1, sequence.Count], ScalarType.Int64, device);
        return new GenerationOutput(sequences, tracker.GetSequences())
        {
            Speculation = new SpeculationStatistics(modelCalls, proposed, acceptedTotal),
        };
    }

    /// <summary>Picks a token at each position in turn and keeps proposals while they equal the pick; ends with the first differing pick.</summary>
    /// <param name="candidates">The proposals.</param>
    /// <param name="scoresAt">The model's processed scores <c>[1, vocab]</c> for the token after proposal <c>i - 1</c>.</param>
    /// <param name="sampler">Greedy or sampling.</param>
    private static (List<long> Tokens, int Accepted) Verify(long[] candidates, Func<int, Tensor> scoresAt, TokenSampler sampler)
    {
        var tokens = new List<long>();
        for (int i = 0; i <= candidates.Length; i++)
        {
            long token;
            using (var picked = sampler.Next(scoresAt(i)).cpu()) token = picked.data<long>()[0];
            tokens.Add(token);
            if (i == candidates.Length || token != candidates[i]) return (tokens, i);
        }
        return (tokens, candidates.Length);
    }

    /// <summary>HF's <c>_speculative_sampling</c>: keeps proposal <c>i</c> with probability <c>min(1, p_i/q_i)</c>, then draws one more token.</summary>
    private static (List<long> Tokens, int Accepted) SpeculativeSampling(long[] candidates, Tensor proposerScores, Func<int, Tensor> scoresAt,
        TokenSampler sampler)
    {
        var tokens = new List<long>();
        int n = 0;
        Tensor p;
        while (true)
        {
            p = scoresAt(n).softmax(-1)[0];
            if (n == candidates.Length) break;
            var q = proposerScores[n].softmax(-1);
            double ratio = p[candidates[n]].item<float>() / q[candidates[n]].item<float>();
            if (sampler.NextUniform() > ratio)
            {
                // Rejected: draw from the part of the model's distribution the proposer under-weights.
                var residual = (p - q).clamp_min_(0);
                p = residual.div_(residual.sum());
                break;
            }
            tokens.Add(candidates[n]);
            n++;
        }
        using (var picked = sampler.Next(p.log().unsqueeze(0)).cpu()) tokens.Add(picked.data<long>()[0]);
        return (tokens, n);
    }
}
