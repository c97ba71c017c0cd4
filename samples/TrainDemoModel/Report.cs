using System.Globalization;
using System.Text;
using System.Text.Json;
using Rinna.Net;
using Rinna.Net.Generation;
using static TorchSharp.torch;

namespace TrainDemoModel;

/// <summary>
/// Checks the saved model the way a user would load it (AutoModelForCausalLM, Generate, the tokenizer read back from
/// spiece.model by AutoTokenizer), scores it on the held-out text, and writes TRAINING.md and loss.png from the run's records.
/// </summary>
internal static class Report
{
    public static readonly string[] Prompts =
    [
        "吾輩は猫である。",
        "　下人は",
        "Alice was beginning to",
        "It is a truth universally acknowledged",
        "ユーザー: こんにちは。\nシステム: ",
        "ユーザー: 日本の首都はどこですか？\nシステム: ",
        "ユーザー: What is the capital of Japan?\nシステム: ",
        "ユーザー: Please tell me about cats.\nシステム: ",
        "ユーザー: 日本のおすすめの観光地を教えてください。\nシステム: ",
        "ユーザー: What is your favourite book?\nシステム: ",
    ];

    public static async Task WriteAsync(TrainingSettings settings)
    {
        var directory = settings.OutputDirectory;
        var points = File.ReadLines(Path.Combine(settings.RecordsDirectory, "loss.csv")).Skip(1).Select(line => line.Split(','))
            .Select(f => (int.Parse(f[0], CultureInfo.InvariantCulture), double.Parse(f[2], CultureInfo.InvariantCulture))).ToList();
        PngChart.WriteLossCurve(Path.Combine(directory, "loss.png"), points, "rinna-demo training loss (cross-entropy, nats per token)");

        var summary = JsonSerializer.Deserialize<TrainingSummary>(File.ReadAllText(Path.Combine(settings.RecordsDirectory, "training-summary.json")))!;
        var chat = JsonSerializer.Deserialize<TrainingSummary>(File.ReadAllText(Path.Combine(settings.RecordsDirectory, "chat-tuning-summary.json")))!;
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(directory);
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory);

        var samples = new StringBuilder();
        var greedy = new GenerationConfig { MaxNewTokens = 48, EosTokenId = [3], PadTokenId = 0 };
        var sampled = greedy with { DoSample = true, Temperature = 0.8, TopK = 40, RepetitionPenalty = 1.15, Seed = settings.Seed };
        foreach (var (name, generation) in new[] { ("Greedy", greedy), ("Sampled", sampled) })
        {
            samples.AppendLine($"### {name}").AppendLine();
            foreach (var prompt in Prompts)
            {
                var ids = tokenizer.Encode(prompt, addSpecialTokens: false).Select(id => (long)id).ToArray();
                using var input = tensor(ids, ScalarType.Int64).unsqueeze(0);
                var output = model.Generate(input, generation);
                output.Sequences.Dispose();
                var row = output.Rows[0];
                // Decoded together with the prompt: T5Tokenizer strips the ends of what it decodes, which would eat the
                // space token that starts an English continuation. A length cut inside a byte-fallback character leaves U+FFFD.
                var text = tokenizer.Decode(ids.Select(id => (int)id).Concat(row.TokenIds)).TrimEnd('\uFFFD')
                    + (row.FinishReason == FinishReason.EndOfSequence ? "" : " …");
                Console.WriteLine($"--- {name}\n{text}");
                samples.AppendLine("```text").AppendLine(text).AppendLine("```").AppendLine();
            }
        }

        var heldOut = Corpus.Load(settings.CorpusDirectory).Split().HeldOut;
        var scores = await Perplexity.MeasureAsync(directory, heldOut);
        var perplexity = new StringBuilder();
        perplexity.AppendLine("| held-out part | tokens | characters | token perplexity | character perplexity |");
        perplexity.AppendLine("|---|---:|---:|---:|---:|");
        foreach (var score in scores)
            perplexity.AppendLine($"| {score.Part} | {score.Tokens:N0} | {score.Characters:N0} | {score.TokenPerplexity:F2} | {score.CharacterPerplexity:F3} |");
        if (settings.CompareDirectory is { } compare)
        {
            var baseline = await Perplexity.MeasureAsync(compare, heldOut);
            var baselineConfig = Rinna.Net.Model.GptNeoXConfig.FromFile(Path.Combine(compare, "config.json"));
            var baselineNormalization = Rinna.Net.Tokenization.Training.SentencePieceNormalization.FromModel(Path.Combine(compare, "spiece.model")).Name;
            perplexity.AppendLine().AppendLine($$"""
                For comparison, the same text under a smaller model ({{baselineConfig.NumHiddenLayers}} layers, hidden {{baselineConfig.HiddenSize}},
                `{{baselineNormalization}}`-normalized tokenizer of {{baselineConfig.VocabSize}} pieces) that was trained on the whole corpus,
                this held-out text included:
                """).AppendLine();
            perplexity.AppendLine("| held-out part | tokens | characters | token perplexity | character perplexity |");
            perplexity.AppendLine("|---|---:|---:|---:|---:|");
            foreach (var score in baseline)
                perplexity.AppendLine($"| {score.Part} | {score.Tokens:N0} | {score.Characters:N0} | {score.TokenPerplexity:F2} | {score.CharacterPerplexity:F3} |");
        }
        Console.Write(perplexity);

        var files = new[] { "config.json", "generation_config.json", "model.safetensors", "spiece.model", "tokenizer_config.json", "special_tokens_map.json" };
        var sizes = string.Join("\n", files.Select(f => $"| `{f}` | {new FileInfo(Path.Combine(directory, f)).Length:N0} |"));
        var config = model.Config;
        var markdown = $$"""
            # rinna-demo: how this model was trained

            A tiny GPT-NeoX in the exact architecture and tokenizer format of rinna's `bilingual-gpt-neox-4b` models, trained
            from scratch by `samples/TrainDemoModel` (C#, TorchSharp on CPU) on a public-domain corpus (29 Aozora Bunko works,
            5 Project Gutenberg works, 311 hand-written chat dialogues in rinna's `ユーザー: …\nシステム: …` format; provenance
            and licences in the corpus's README, of which `tests/fixtures/corpus/README.md` is a copy). It is a demonstration that the whole pipeline works offline; it is not smart: it writes
            Japanese and English that look like its training text and answers in the chat format, often with facts it made up.

            ## Reproduce

            ```
            dotnet run -c Release --project samples/TrainDemoModel -- train --corpus PATH/TO/corpus --steps {{summary.PlannedSteps}} --seed {{settings.Seed}} --max-minutes {{settings.MaxMinutes.ToString(CultureInfo.InvariantCulture)}}
            dotnet run -c Release --project samples/TrainDemoModel -- chat-tune --corpus PATH/TO/corpus --chat-steps {{chat.PlannedSteps}} --steps {{summary.PlannedSteps}} --supplement-repeats 0 --threads 2
            dotnet run -c Release --project samples/TrainDemoModel -- chat-tune --corpus PATH/TO/corpus --chat-steps {{chat.PlannedSteps}} --steps {{summary.PlannedSteps}} --threads 2
            ```

            `train` pre-trains the tokenizer and the model (and writes this report); `chat-tune` continues the saved model on a
            dialogue-heavy mix and writes the report again. The shipped weights went through chat tuning twice: first on the
            corpus's dialogues alone, then with the sample's own travel dialogues (`samples/TrainDemoModel/dialogues-supplement.txt`,
            paraphrased sightseeing questions written for this sample, never QuickStart's own question) repeated
            {{settings.SupplementRepeats}} times in the mix, because the corpus has none and the first stage answered a sightseeing
            question with a cooking answer. The table below describes the last run.

            Everything is seeded (weight initialisation, batch sampling) and the tokenizer trainer is deterministic; the weights
            repeat only on the same machine type and thread count. The `--max-minutes` guard stops a run on a slow or busy
            machine early (the learning-rate schedule of step *k* depends only on *k* and `--steps`, so a stopped run is a prefix
            of the full one). The run's log, per-step losses and summary go to `artifacts/train-demo-model/` (`--records`), not
            into the model directory.

            ## Held-out text

            The last {{Corpus.HeldOutShare:P0}} of every file of the corpus is held out: the last paragraphs of each of the 34 books and
            the last dialogues of `chat/dialogues.txt`. Neither the tokenizer nor the model trains on it. Each book's held-out
            paragraphs form one stream joined by `\n`, the held-out dialogues are each ended by `</s>`, and each stream is scored
            in consecutive windows of {{Perplexity.Window}} tokens (the training length) with the model loaded as a user loads it
            (`AutoModelForCausalLM`, float32). Token perplexity depends on the tokenizer; character perplexity (the same total
            log-likelihood per character of text) compares models whose tokenizers differ.

            {{perplexity.ToString().TrimEnd()}}

            ## Tokenizer

            SentencePiece **Unigram** model written by the project's own trainer (`Rinna.Net.Tokenization.Training.UnigramTrainer`,
            EM with forward-backward expected counts and likelihood-loss pruning, as SentencePiece's `unigram_model_trainer`),
            trained on every paragraph and dialogue line of the training part of the corpus:

            - vocabulary {{config.VocabSize}}: `[PAD]`=0, `[UNK]`=1, `<s>`=2, `</s>`=3, `[CLS]`=4, `[SEP]`=5, `[MASK]`=6,
              user-defined `▁`=7, `\n`=8, `\t`=9, byte pieces `<0x00>`..`<0xFF>`=10..265, then trained pieces, as rinna's layout;
            - byte fallback on, no dummy prefix, extra whitespace kept, every space its own token (rinna's behaviour);
            - character coverage {{settings.CharacterCoverage.ToString(CultureInfo.InvariantCulture)}} (rarer characters are spelled as UTF-8 bytes);
            - normalization `nmt_nfkc`, rinna's (SentencePiece's default): the `normalizer_spec` and its precompiled character map
              are copied from `tests/fixtures/tokenizers/bilingual-lookalike/spiece.model`, which the real SentencePiece made
              with that rule (`--normalizer-from`), and the training text is normalized by the library's own SentencePiece
              normalizer with it, so full-width and half-width forms share pieces (`ＡＢＣ１２３` and `ABC123` encode alike,
              `　` becomes a space token) exactly as the inference tokenizer will see them.

            `tokenizer_config.json` and `special_tokens_map.json` have the exact shape of rinna's (HF `T5Tokenizer`).

            ## Model

            | | |
            |---|---|
            | architecture | GPTNeoXForCausalLM, `use_parallel_residual` false, `rotary_pct` 1.0, GELU, untied input/output embeddings, bos 2 / eos 3 (rinna's bilingual settings) |
            | size | {{config.NumHiddenLayers}} layers, hidden {{config.HiddenSize}}, {{config.NumAttentionHeads}} heads, intermediate {{config.IntermediateSize}}, context {{config.MaxPositionEmbeddings}}, vocabulary {{config.VocabSize}} |
            | parameters | {{summary.Parameters:N0}} |
            | stored as | float16 safetensors |

            ## Training

            | | |
            |---|---|
            | seed | {{settings.Seed}} |
            | optimizer | AdamW (β 0.9/0.95, ε 1e-8, weight decay {{settings.WeightDecay}}), gradient clipping at 1.0 |
            | learning rate | linear warm-up over {{settings.WarmupSteps}} steps to {{settings.PeakLearningRate}}, cosine decay to {{settings.MinimumLearningRate}} over {{summary.PlannedSteps}} steps |
            | batch | {{settings.BatchSize}} windows × {{settings.SequenceLength}} tokens; rows drawn 42 % Japanese books, 38 % English books, 20 % dialogues (packed from a dialogue start, each dialogue ended by `</s>`) |
            | steps done | {{summary.Steps}} of {{summary.PlannedSteps}} |
            | tokens seen | {{summary.TokensSeen:N0}} |
            | final loss | {{summary.FinalLoss:F3}} (exponential moving average of the training loss, nats per token) |
            | wall time | {{TimeSpan.FromSeconds(summary.Seconds):hh\:mm\:ss}} including tokenizer training ({{settings.Threads}} TorchSharp thread{{(settings.Threads == 1 ? "" : "s")}}, CPU libtorch 2.10, under `nice` on a 2-core machine shared with other builds) |

            ![loss curve](loss.png)

            Then chat tuning, which continues the saved weights (float16 checkpoint loaded back in float32) on the same
            training text with the rows drawn {{settings.ChatBookShare:P0}} Japanese books, {{settings.ChatBookShare:P0}} English books and
            {{1 - 2 * settings.ChatBookShare:P0}} dialogues, so answers keep the chat format:

            | | |
            |---|---|
            | steps | {{chat.Steps}}, batch {{settings.BatchSize}} × {{settings.SequenceLength}} ({{chat.TokensSeen:N0}} tokens) |
            | learning rate | fresh AdamW, linear warm-up over {{settings.ChatWarmupSteps}} steps to {{settings.ChatPeakLearningRate}}, cosine decay to {{settings.ChatMinimumLearningRate}} |
            | final loss | {{chat.FinalLoss:F3}} (moving average, on the dialogue-heavy mix) |
            | wall time | {{TimeSpan.FromSeconds(chat.Seconds):hh\:mm\:ss}} |

            ## Samples

            Greedy decoding (`model.Generate`, 48 new tokens at most, stop at `</s>`), then seeded sampling (temperature 0.8,
            top-k 40, repetition penalty 1.15, seed {{settings.Seed}}), with the model loaded back through
            `AutoModelForCausalLM.FromPretrainedAsync` in float32, prompts encoded with `add_special_tokens=False` and outputs
            decoded by the library's `AutoTokenizer` reading `spiece.model`, as rinna's model card does (so a finished answer
            ends with `</s>`). Each block is the prompt followed by the model's continuation (`…` means it hit the length limit).
            The prompts are the openings of 吾輩は猫である, 羅生門, Alice and Pride and Prejudice, then chat questions, the last
            two being QuickStart's. The corpus's dialogues contain `What is your favourite book?` (in the training part) but
            no question about sightseeing.

            {{samples.ToString().TrimEnd()}}

            ## Files

            | file | bytes |
            |---|---:|
            {{sizes}}

            Licence: the weights and tokenizer are derived from public-domain texts and from dialogues released under MIT (see
            the corpus README); they are distributed under the project's MIT licence.
            """;
        File.WriteAllText(Path.Combine(directory, "TRAINING.md"), markdown + "\n");
        Console.WriteLine($"wrote {Path.Combine(directory, "TRAINING.md")} and loss.png");
    }
}
