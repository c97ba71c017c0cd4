using System.Runtime.CompilerServices;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// HF's <c>AssistedCandidateGenerator</c>: a smaller model with the same tokenizer proposes its continuation under the
/// same logits processors and decoding mode (greedy, or sampling with its own seeded generator, when its scores go to
/// speculative sampling), <c>num_assistant_tokens</c> tokens at a time, keeping its own KV cache across calls (cut back to the tokens the
/// target kept). With the <c>heuristic</c> schedule the count grows by 2 after a round whose proposals were all
/// accepted and shrinks by 1 (to at least 1) otherwise, and the count reached is kept on the assistant for its next
/// generation, as transformers keeps it in the assistant's generation config.
/// </summary>
internal sealed class AssistedCandidateGenerator : ICandidateGenerator, IDisposable
{
    private static readonly ConditionalWeakTable<GptNeoXForCausalLM, StrongBox<double>> Persisted = new();

    private readonly GptNeoXForCausalLM assistant;
    private readonly ModelStepper stepper;
    private readonly List<long> cached = [];
    private readonly long targetVocabulary;
    private readonly AssistantTokensSchedule schedule;
    private readonly LogitsProcessorList pipeline;
    private readonly TokenSampler sampler;
    private Tensor? scores;
    private double count;

    public AssistedCandidateGenerator(GptNeoXForCausalLM assistant, Tensor attentionMask, int reservedLength, long targetVocabulary,
        GenerationConfig config, IEnumerable<ILogitsProcessor>? logitsProcessors = null)
    {
        this.assistant = assistant;
        this.targetVocabulary = targetVocabulary;
        schedule = config.NumAssistantTokensSchedule;
        pipeline = LogitsProcessorList.Create(config, (int)attentionMask.size(1), logitsProcessors);
        // Its own generator, seeded apart from the target's, so a seed reproduces both streams of draws.
        sampler = new TokenSampler(config.DoSample, config.Seed is long seed ? unchecked(seed + 1) : null);
        stepper = new ModelStepper(assistant, attentionMask.to(assistant.Device), reservedLength);
        count = schedule == AssistantTokensSchedule.Heuristic && Persisted.TryGetValue(assistant, out var kept) ? kept.Value : config.NumAssistantTokens;
    }

    public Tensor? CandidateScores => scores;

    /// <summary>Proposals wanted in the next round (HF's <c>num_assistant_tokens</c>).</summary>
    public double NumAssistantTokens => count;

    public long[] GetCandidates(IReadOnlyList<long> sequence, int maxCount)
    {
        int wanted = Math.Min((int)count, maxCount);
        if (wanted <= 0) return [];
        using var scope = NewDisposeScope();
        // Keep the assistant's cache for the longest prefix it shares with the sequence, and at least one token to feed.
        int keep = 0;
        while (keep < cached.Count && keep < sequence.Count - 1 && cached[keep] == sequence[keep]) keep++;
        stepper.Truncate(keep);
        cached.RemoveRange(keep, cached.Count - keep);

        var fed = sequence.Skip(keep).ToArray();
        var proposals = new List<long>(wanted);
        var stepScores = new List<Tensor>(wanted);
        var history = sequence.ToList();
        while (proposals.Count < wanted)
        {
            var logits = stepper.Forward(tensor(fed, [1, fed.Length], ScalarType.Int64, assistant.Device)).to(ScalarType.Float32);
            cached.AddRange(fed);
            var processed = pipeline.Process(tensor(history.ToArray(), [1, history.Count], ScalarType.Int64, logits.device), logits);
            long next;
            using (var picked = sampler.Next(processed).cpu()) next = picked.data<long>()[0];
            // A token the target's vocabulary lacks cannot be verified; the target then picks its own.
            if (next >= targetVocabulary) break;
            proposals.Add(next);
            stepScores.Add(processed.narrow(1, 0, targetVocabulary));
            history.Add(next);
            fed = [next];
        }
        scores?.Dispose();
        scores = stepScores.Count == 0 ? null : cat(stepScores, 0).DetachFromDisposeScope();
        return proposals.ToArray();
    }

    public void Update(int proposed, int accepted)
    {
        if (schedule == AssistantTokensSchedule.Constant) return;
        count = accepted == (int)count ? count + 2 : Math.Max(1, count - 1);
        if (schedule == AssistantTokensSchedule.Heuristic) Persisted.AddOrUpdate(assistant, new StrongBox<double>(count));
    }

    public void Dispose()
    {
        stepper.Dispose();
        sampler.Dispose();
        scores?.Dispose();
    }
}
