using System.Runtime.CompilerServices;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// HF's <c>AssistedCandidateGenerator</c>: a smaller model with the same tokenizer proposes its greedy continuation,
/// <c>num_assistant_tokens</c> tokens at a time, keeping its own KV cache across calls (cut back to the tokens the
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
    private double count;

    public AssistedCandidateGenerator(GptNeoXForCausalLM assistant, Tensor attentionMask, int reservedLength, long targetVocabulary,
        int numAssistantTokens, AssistantTokensSchedule schedule)
    {
        this.assistant = assistant;
        this.targetVocabulary = targetVocabulary;
        this.schedule = schedule;
        stepper = new ModelStepper(assistant, attentionMask.to(assistant.Device), reservedLength);
        count = schedule == AssistantTokensSchedule.Heuristic && Persisted.TryGetValue(assistant, out var kept) ? kept.Value : numAssistantTokens;
    }

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
        while (proposals.Count < wanted)
        {
            using var step = NewDisposeScope();
            var logits = stepper.Forward(tensor(fed, [1, fed.Length], ScalarType.Int64, assistant.Device));
            cached.AddRange(fed);
            long next = logits[0].argmax().item<long>();
            // A token the target's vocabulary lacks cannot be verified; the target then picks its own.
            if (next >= targetVocabulary) break;
            proposals.Add(next);
            fed = [next];
        }
        return proposals.ToArray();
    }

    public void Update(int proposed, int accepted)
    {
        if (schedule == AssistantTokensSchedule.Constant) return;
        count = accepted == (int)count ? count + 2 : Math.Max(1, count - 1);
        if (schedule == AssistantTokensSchedule.Heuristic) Persisted.AddOrUpdate(assistant, new StrongBox<double>(count));
    }

    public void Dispose() => stepper.Dispose();
}
