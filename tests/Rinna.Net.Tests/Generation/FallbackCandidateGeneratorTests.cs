using Rinna.Net.Generation;

namespace Rinna.Net.Tests.Generation;

/// <summary>Prompt lookup stops proposing while its proposals keep being rejected, and resumes after an accepted one.</summary>
public class FallbackCandidateGeneratorTests
{
    /// <summary>Always proposes two tokens and counts the calls that reached it.</summary>
    private sealed class AlwaysProposing : ICandidateGenerator
    {
        public int Calls { get; private set; }

        public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount)
        {
            Calls++;
            return [1, 2];
        }

        public void Update(int proposed, int accepted)
        {
        }
    }

    /// <summary>Runs <paramref name="rounds"/> rounds; <paramref name="accepts"/> says how many proposals a round keeps. Returns which rounds proposed.</summary>
    private static List<bool> Rounds(FallbackCandidateGenerator generator, int rounds, Func<int, int> accepts)
    {
        var proposedAt = new List<bool>();
        for (int round = 0; round < rounds; round++)
        {
            var candidates = generator.GetCandidates([5, 6, 7], 10);
            proposedAt.Add(candidates.Length > 0);
            int accepted = candidates.Length == 0 ? 0 : accepts(round);
            generator.Update(candidates.Length, accepted);
            // Proposals are cheap here (1 ms per round against 10 ms per plain step): only rejection pauses them.
            generator.Observe(candidates.Length, accepted + 1, TimeSpan.FromMilliseconds(candidates.Length == 0 ? 10 : 1));
        }
        return proposedAt;
    }

    [Fact]
    public void RejectedRoundsPauseProposalsForDoublingSpansUpTo64Steps()
    {
        var inner = new AlwaysProposing();
        var proposed = Rounds(new FallbackCandidateGenerator(inner), 400, _ => 0);
        // Two misses, a pause of 4, a probe, 8, a probe, 16, 32, then 64 between probes for good.
        var expected = new List<bool> { true, true };
        foreach (var pause in new[] { 4, 8, 16, 32, 64, 64, 64, 64, 64 })
        {
            expected.AddRange(Enumerable.Repeat(false, pause));
            expected.Add(true);
        }
        Assert.Equal(expected, proposed.Take(expected.Count));
        // Over a long text that never repeats its context, at most one round in 65 pays for rejected proposals.
        Assert.InRange(proposed.Skip(100).Count(p => p), 1, (300 + 64) / 65);
        Assert.Equal(proposed.Count(p => p), inner.Calls);
    }

    [Fact]
    public void AnAcceptedProposalEndsThePausesAndAcceptedRoundsNeverPause()
    {
        // Misses until round 40, then every proposal accepted.
        var proposed = Rounds(new FallbackCandidateGenerator(new AlwaysProposing()), 120, round => round < 40 ? 0 : 1);
        int firstAccepted = Enumerable.Range(40, 80).First(i => proposed[i]);
        // Once accepted again, proposals continue every round but for a plain step every 33 rounds that re-times plain decoding.
        Assert.InRange(proposed.Skip(firstAccepted).Count(p => !p), 0, (120 - firstAccepted) / 32 + 1);
        // A single miss among accepted rounds does not pause.
        var mixed = Rounds(new FallbackCandidateGenerator(new AlwaysProposing()), 50, round => round % 4 == 0 ? 0 : 1);
        Assert.InRange(mixed.Count(p => !p), 0, 50 / 32 + 2);
    }

    [Fact]
    public async Task GenerateReportsTheSpeculationItDid()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), cancellationToken: TestContext.Current.CancellationToken);
        using var ids = TorchSharp.torch.tensor(new long[] { 587, 503, 105, 111, 747, 587, 503, 105, 111, 747, 587, 503 }, [1, 12], TorchSharp.torch.ScalarType.Int64);
        var config = model.GenerationConfig() with { MaxNewTokens = 30, PromptLookupNumTokens = 4 };
        var output = model.Generate(ids, config);
        var stats = Assert.IsType<SpeculationStatistics>(output.Speculation);
        int generated = (int)output.Sequences.size(1) - 12;
        // Every round adds its accepted proposals and one token of the model's own (fewer when an end-of-sequence id ends it).
        Assert.InRange(generated, stats.ModelCalls, stats.ModelCalls + stats.AcceptedTokens);
        Assert.True(stats.AcceptedTokens > 0, "the repeated prompt gives proposals the model keeps");
        Assert.InRange(stats.AcceptedTokens, 0, stats.ProposedTokens);
        Assert.Null(model.Generate(ids, config with { PromptLookupNumTokens = null }).Speculation);
    }
}

/// <summary>Proposals that are accepted but cost more per token than plain steps pause as rejected ones do.</summary>
public class FallbackCandidateGeneratorTimingTests
{
    private sealed class AlwaysProposing : ICandidateGenerator
    {
        public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount) => [1, 2, 3];

        public void Update(int proposed, int accepted)
        {
        }
    }

    /// <summary>Plain steps take 10 ms per token; speculative rounds keep 1 of 3 proposals (2 tokens) in <paramref name="roundMs"/>.</summary>
    private static List<bool> Rounds(double roundMs, int rounds)
    {
        var generator = new FallbackCandidateGenerator(new AlwaysProposing());
        var proposedAt = new List<bool>();
        for (int i = 0; i < rounds; i++)
        {
            var candidates = generator.GetCandidates([5, 6], 10);
            proposedAt.Add(candidates.Length > 0);
            int accepted = candidates.Length > 0 ? 1 : 0;
            generator.Update(candidates.Length, accepted);
            generator.Observe(candidates.Length, accepted + 1, TimeSpan.FromMilliseconds(candidates.Length > 0 ? roundMs : 10));
        }
        return proposedAt;
    }

    [Fact]
    public void AcceptedButSlowerRoundsPauseOnceAPlainStepWasTimed()
    {
        // 2 tokens in 30 ms (15 ms per token) against 10 ms plain: speculation loses, so it pauses.
        var slow = Rounds(30, 200);
        Assert.True(slow.Count(p => p) < 20, $"{slow.Count(p => p)} of 200 rounds still proposed");
        // 2 tokens in 12 ms (6 ms per token): speculation pays and stops only for a plain step every 33 rounds.
        var fast = Rounds(12, 200);
        Assert.InRange(fast.Count(p => !p), 1, 200 / 32 + 2);
    }
}

/// <summary>Rare accepted rounds between rejected ones do not keep speculation alive when it loses on average.</summary>
public class FallbackCandidateGeneratorAverageTests
{
    private sealed class AlwaysProposing : ICandidateGenerator
    {
        public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount) => [1, 2, 3];

        public void Update(int proposed, int accepted)
        {
        }
    }

    [Fact]
    public void AlternatingAcceptedAndRejectedRoundsThatOnlyBreakEvenPause()
    {
        // Plain steps: 10 ms per token. Every other round keeps a proposal (2 tokens in 15 ms: 7.5 ms per token, a win
        // on its own); the others keep none (1 token in 15 ms). Together 3 tokens in 30 ms: no faster than plain.
        var generator = new FallbackCandidateGenerator(new AlwaysProposing());
        int proposing = 0, speculativeRound = 0;
        for (int i = 0; i < 300; i++)
        {
            var candidates = generator.GetCandidates([5, 6], 10);
            int accepted = candidates.Length > 0 && speculativeRound++ % 2 == 1 ? 1 : 0;
            if (candidates.Length > 0) proposing++;
            generator.Update(candidates.Length, accepted);
            generator.Observe(candidates.Length, accepted + 1, TimeSpan.FromMilliseconds(candidates.Length > 0 ? 15 : 10));
        }
        Assert.True(proposing < 60, $"{proposing} of 300 rounds proposed");
    }
}

/// <summary>Proposals continue only where they pay in time per token; elsewhere they cost a few percent at most.</summary>
public class FallbackCandidateGeneratorCostTests
{
    private const double PlainMs = 20;

    /// <summary>Proposes ten tokens whenever asked.</summary>
    private sealed class ProposingTen : ICandidateGenerator
    {
        public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount) => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

        public void Update(int proposed, int accepted)
        {
        }
    }

    /// <summary>
    /// Runs <paramref name="rounds"/> rounds; the n-th round with proposals keeps <c>round(n).Accepted</c> of them in
    /// <c>round(n).Ms</c>, plain steps take <paramref name="plainMs"/>. Returns how many rounds proposed and the time
    /// against plain decoding's.
    /// </summary>
    private static (int Proposing, double TimeRatio) Run(FallbackCandidateGenerator generator, int rounds, Func<int, (int Accepted, double Ms)> round,
        double plainMs = PlainMs)
    {
        int proposing = 0, tokens = 0;
        double ms = 0;
        for (int i = 0; i < rounds; i++)
        {
            var candidates = generator.GetCandidates([5, 6], 10);
            var (accepted, roundMs) = candidates.Length > 0 ? round(proposing++) : (0, plainMs);
            generator.Update(candidates.Length, accepted);
            generator.Observe(candidates.Length, accepted + 1, TimeSpan.FromMilliseconds(roundMs));
            tokens += accepted + 1;
            ms += roundMs;
        }
        return (proposing, ms / (tokens * plainMs));
    }

    [Fact]
    public void RareCheapRoundsAmongCostlyRejectionsEndUpPausingLong()
    {
        // rinna-4b's shape in int8 on a CPU: verifying ten proposals costs about eight plain steps. Every tenth round
        // keeps 9 of them (10 tokens in 160 ms, cheaper per token than plain steps); the others keep none. All told 19
        // tokens per 1.6 s, four times plain decoding's cost: pauses must grow past 64 steps, to where a failed probe
        // costs a few percent (one failed probe per 65 tokens would cost about 11 %).
        var (proposing, ratio) = Run(new FallbackCandidateGenerator(new ProposingTen()), 3000, n => n % 10 == 9 ? (9, 160) : (0, 160));
        Assert.True(ratio < 1.05, $"{ratio:F3} times plain decoding's time, {proposing} of 3000 rounds proposed");
    }

    [Fact]
    public void AcceptedRoundsThatSaveLittlePause()
    {
        // Every round keeps one proposal: 2 tokens in 38 ms, 5 % under plain steps' 40 ms, within timing noise.
        var (proposing, _) = Run(new FallbackCandidateGenerator(new ProposingTen()), 300, _ => (1, 38));
        Assert.True(proposing < 30, $"{proposing} of 300 rounds proposed");
    }

    [Fact]
    public void SlowerPlainStepsDoNotShortenAPauseThatCostlyRoundsSet()
    {
        var memory = new SpeculationMemory();
        Run(new FallbackCandidateGenerator(new ProposingTen(), memory), 300, _ => (0, 160));
        // Short answers on the same model while a neighbour's load makes plain steps four times slower, then as before:
        // the remembered pause outlasts each of them, however the plain-step time moves.
        int probes = Enumerable.Range(0, 8).Sum(answer =>
            Run(new FallbackCandidateGenerator(new ProposingTen(), memory), 32, _ => (0, 160), answer < 4 ? 80 : PlainMs).Proposing);
        Assert.Equal(0, probes);
    }

    [Fact]
    public void RoundsThatPayClearlyKeepProposingAfterLosingOnes()
    {
        // 100 rounds' worth of costly rejections, then every round keeps all ten proposals (11 tokens in 40 ms): proposals
        // resume after the pause those rejections set and one more (the first good probe still averages with them).
        var generator = new FallbackCandidateGenerator(new ProposingTen());
        Run(generator, 100, _ => (0, 160));
        var (proposing, ratio) = Run(generator, 1000, _ => (10, 40));
        Assert.True(proposing > 550, $"{proposing} of 1000 rounds proposed");
        Assert.True(ratio < 0.4, $"{ratio:F3} times plain decoding's time");
    }
}

/// <summary>What one generation learned on a model carries to the next one on the same model.</summary>
public class SpeculationMemoryTests
{
    private sealed class AlwaysProposing : ICandidateGenerator
    {
        public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount) => [1, 2];

        public void Update(int proposed, int accepted)
        {
        }
    }

    private static int ProposingRounds(FallbackCandidateGenerator generator, int rounds, int accepted)
    {
        int proposing = 0;
        for (int i = 0; i < rounds; i++)
        {
            var candidates = generator.GetCandidates([5], 10);
            if (candidates.Length > 0) proposing++;
            generator.Update(candidates.Length, candidates.Length > 0 ? accepted : 0);
            generator.Observe(candidates.Length, 1, TimeSpan.FromMilliseconds(candidates.Length > 0 ? 1 : 10));
        }
        return proposing;
    }

    [Fact]
    public void AnswersAfterOnesWhereProposalsFailedStartPausedAndAnAcceptanceResumesThem()
    {
        var memory = new SpeculationMemory();
        // A long answer where nothing is accepted drives the pauses to 64 steps.
        ProposingRounds(new FallbackCandidateGenerator(new AlwaysProposing(), memory), 300, accepted: 0);
        // The next 32-token answer on the same model starts paused: at most one probe, where a fresh one would propose in several rounds.
        int remembered = ProposingRounds(new FallbackCandidateGenerator(new AlwaysProposing(), memory), 32, accepted: 0);
        int fresh = ProposingRounds(new FallbackCandidateGenerator(new AlwaysProposing()), 32, accepted: 0);
        Assert.InRange(remembered, 0, 1);
        Assert.True(fresh >= 4, $"a fresh generator proposed in {fresh} rounds");
        // An answer whose probe is accepted resumes proposing, and so does the answer after it.
        int resumed = ProposingRounds(new FallbackCandidateGenerator(new AlwaysProposing(), memory), 80, accepted: 1);
        Assert.True(resumed > 30, $"{resumed} of 80 rounds proposed after an acceptance");
        Assert.True(ProposingRounds(new FallbackCandidateGenerator(new AlwaysProposing(), memory), 20, accepted: 1) >= 18);
    }
}
