using Rinna.Net;
using static TorchSharp.torch;

namespace TrainDemoModel;

/// <summary>Cross-entropy of one part of the held-out text under a model, in tokens and in characters.</summary>
/// <remarks>
/// Token perplexity depends on the tokenizer; per-character perplexity (the same total divided by the characters of
/// the text) compares models whose tokenizers differ.
/// </remarks>
internal sealed record HeldOutScore(string Part, long Tokens, long Characters, double NegativeLogLikelihood)
{
    public double TokenPerplexity => Math.Exp(NegativeLogLikelihood / Tokens);
    public double CharacterPerplexity => Math.Exp(NegativeLogLikelihood / Characters);
}

internal static class Perplexity
{
    /// <summary>Window length the scores are computed with: the training sequence length.</summary>
    public const int Window = 128;

    /// <summary>
    /// Scores a saved model (loaded as a user would, float32) on the held-out text: each book's held-out paragraphs as one
    /// stream joined by newlines, and the held-out dialogues each ended by <c>&lt;/s&gt;</c>, as training streams them.
    /// Streams are cut into consecutive windows of <see cref="Window"/> tokens; each token after a stream's first is
    /// predicted once, from the tokens before it in its window.
    /// </summary>
    public static async Task<IReadOnlyList<HeldOutScore>> MeasureAsync(string modelDirectory, Corpus heldOut)
    {
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(modelDirectory);
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(modelDirectory);
        int newline = tokenizer.Encode("\n", addSpecialTokens: false).Single();
        int eos = tokenizer.EosTokenId ?? throw new InvalidOperationException("the tokenizer has no </s>.");

        (List<int> Ids, long Characters) Books(IReadOnlyList<string[]> books)
        {
            var ids = new List<int>();
            long characters = 0;
            foreach (var paragraphs in books)
            {
                if (ids.Count > 0) ids.Add(newline);
                foreach (var (paragraph, index) in paragraphs.Select((p, i) => (p, i)))
                {
                    if (index > 0) ids.Add(newline);
                    ids.AddRange(tokenizer.Encode(paragraph, addSpecialTokens: false));
                    characters += paragraph.EnumerateRunes().Count() + 1;
                }
            }
            return (ids, characters);
        }

        var dialogueIds = new List<int>();
        long dialogueCharacters = 0;
        foreach (var dialogue in heldOut.Dialogues)
        {
            dialogueIds.AddRange(tokenizer.Encode(dialogue, addSpecialTokens: false));
            dialogueIds.Add(eos);
            dialogueCharacters += dialogue.EnumerateRunes().Count() + 1;
        }

        var scores = new List<HeldOutScore>();
        foreach (var (part, (ids, characters)) in new[]
        {
            ("Japanese books", Books(heldOut.JapaneseBooks)),
            ("English books", Books(heldOut.EnglishBooks)),
            ("dialogues", (dialogueIds, dialogueCharacters)),
        })
            scores.Add(new HeldOutScore(part, ids.Count - 1, characters, Score(model, ids)));
        scores.Add(new HeldOutScore("all", scores.Sum(s => s.Tokens), scores.Sum(s => s.Characters), scores.Sum(s => s.NegativeLogLikelihood)));
        return scores;
    }

    private static double Score(Rinna.Net.Model.GptNeoXForCausalLM model, List<int> ids)
    {
        double total = 0;
        using var grad = no_grad();
        for (int start = 0; start + 1 < ids.Count; start += Window)
        {
            int length = Math.Min(Window, ids.Count - 1 - start);
            using var scope = NewDisposeScope();
            var input = tensor(ids.Skip(start).Take(length).Select(i => (long)i).ToArray(), ScalarType.Int64).unsqueeze(0);
            var target = tensor(ids.Skip(start + 1).Take(length).Select(i => (long)i).ToArray(), ScalarType.Int64);
            using var output = model.Forward(input);
            var logits = output.Logits[0].to(ScalarType.Float32);
            total += nn.functional.cross_entropy(logits, target, reduction: nn.Reduction.Sum).item<float>();
        }
        return total;
    }
}
