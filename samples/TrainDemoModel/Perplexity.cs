using Rinna.Net;
using Rinna.Net.Model.Quantization;
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
    /// <param name="modelDirectory">The saved model.</param>
    /// <param name="heldOut">The held-out part of the corpus.</param>
    /// <param name="loadOptions">How to load the model (dtype, quantization); float32 when null.</param>
    /// <param name="tokenByToken">Score each window one token at a time through the cache, as generation runs (the
    /// decode kernels, e.g. the 4-bit GEMV), rather than in one pass per window (the prompt path).</param>
    public static async Task<IReadOnlyList<HeldOutScore>> MeasureAsync(string modelDirectory, Corpus heldOut, ModelLoadOptions? loadOptions = null,
        bool tokenByToken = false)
    {
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(modelDirectory);
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(modelDirectory, loadOptions);
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
            scores.Add(new HeldOutScore(part, ids.Count - 1, characters, tokenByToken ? ScoreByDecoding(model, ids) : Score(model, ids)));
        scores.Add(new HeldOutScore("all", scores.Sum(s => s.Tokens), scores.Sum(s => s.Characters), scores.Sum(s => s.NegativeLogLikelihood)));
        return scores;
    }

    /// <summary>
    /// The held-out scores of one saved model under each dtype and quantization a user can load it with, as a Markdown
    /// table: what float16, int8 and 4-bit cost in accuracy on real text rather than on random weights.
    /// </summary>
    public static async Task CompareLoadOptionsAsync(string modelDirectory, Corpus heldOut, TextWriter output)
    {
        static ModelLoadOptions FourBit(string type, bool doubleQuant, TorchDtype? compute = null) => new()
        {
            QuantizationConfig = new QuantizationConfig
            {
                LoadIn4Bit = true, Bnb4BitQuantType = type, Bnb4BitUseDoubleQuant = doubleQuant, Bnb4BitComputeDtype = compute ?? TorchDtype.Float32,
            },
        };
        var variants = new (string Name, ModelLoadOptions Options, bool TokenByToken)[]
        {
            ("float32", new ModelLoadOptions(), false),
            ("bfloat16", new ModelLoadOptions { TorchDtype = TorchDtype.BFloat16 }, false),
            ("float16", new ModelLoadOptions { TorchDtype = TorchDtype.Float16 }, false),
            ("int8 (LLM.int8(), float32 rest)", new ModelLoadOptions { LoadIn8Bit = true }, false),
            ("int8 + float16 (the model card's switches)", new ModelLoadOptions { LoadIn8Bit = true, TorchDtype = TorchDtype.Float16 }, false),
            ("nf4 (float32 compute)", FourBit(Bnb4BitQuantization.Nf4, doubleQuant: false), false),
            ("nf4 + double quantization", FourBit(Bnb4BitQuantization.Nf4, doubleQuant: true), false),
            ("fp4 (transformers' default type)", FourBit(Bnb4BitQuantization.Fp4, doubleQuant: false), false),
            // Token by token: the decode GEMV, float32 arithmetic for float32 compute, the integer one for bfloat16.
            ("nf4 (float32 compute), token by token", FourBit(Bnb4BitQuantization.Nf4, doubleQuant: false), true),
            ("nf4, bfloat16 compute, token by token", FourBit(Bnb4BitQuantization.Nf4, doubleQuant: false, TorchDtype.BFloat16), true),
        };
        output.WriteLine("| load options | Japanese books | English books | dialogues | all (token perplexity) | all vs float32 |");
        output.WriteLine("| --- | --- | --- | --- | --- | --- |");
        double? baseline = null;
        foreach (var (name, options, tokenByToken) in variants)
        {
            var scores = await MeasureAsync(modelDirectory, heldOut, options, tokenByToken);
            double all = scores.Single(s => s.Part == "all").TokenPerplexity;
            baseline ??= all;
            output.WriteLine($"| {name} | {string.Join(" | ", scores.Where(s => s.Part != "all").Select(s => s.TokenPerplexity.ToString("F3")))} | " +
                $"{all:F3} | {(all / baseline.Value - 1) * 100:+0.00;-0.00} % |");
        }
    }

    /// <summary>The same windows as <see cref="Score"/>, each fed one token at a time through a cache.</summary>
    private static double ScoreByDecoding(Rinna.Net.Model.GptNeoXForCausalLM model, List<int> ids)
    {
        double total = 0;
        using var grad = no_grad();
        for (int start = 0; start + 1 < ids.Count; start += Window)
        {
            int length = Math.Min(Window, ids.Count - 1 - start);
            using var cache = new Rinna.Net.Model.KeyValueCache(model.Config.NumHiddenLayers);
            for (int t = 0; t < length; t++)
            {
                using var scope = NewDisposeScope();
                var input = tensor(new long[] { ids[start + t] }, ScalarType.Int64).view(1, 1);
                using var output = model.Forward(input, pastKeyValues: cache, useCache: true);
                var logits = output.Logits[0, 0].to(ScalarType.Float32);
                total -= nn.functional.log_softmax(logits, 0)[ids[start + t + 1]].item<float>();
            }
        }
        return total;
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
