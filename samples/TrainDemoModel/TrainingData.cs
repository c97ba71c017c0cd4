using Rinna.Net.Tokenization.Training;
using static TorchSharp.torch;

namespace TrainDemoModel;

/// <summary>
/// The tokenized corpus and the batch sampler. Books are token streams (paragraphs joined by the newline token, each book
/// ended by <c>&lt;/s&gt;</c>); dialogues are kept whole, each ended by <c>&lt;/s&gt;</c> as rinna's chat answers are.
/// </summary>
internal sealed class TrainingData
{
    /// <summary>Share of batch rows drawn from each source in pre-training; the rest are dialogues.</summary>
    public const double PretrainingJapaneseShare = 0.42, PretrainingEnglishShare = 0.38;

    private TrainingData(int[] japanese, int[] english, int[][] dialogues)
    {
        Japanese = japanese;
        English = english;
        Dialogues = dialogues;
    }

    public int[] Japanese { get; }
    public int[] English { get; }
    public int[][] Dialogues { get; }
    public long DialogueTokenCount => Dialogues.Sum(d => (long)d.Length);

    /// <summary>Share of batch rows drawn from the Japanese and the English books; the rest are dialogues.</summary>
    public double JapaneseShare { get; set; } = PretrainingJapaneseShare;
    public double EnglishShare { get; set; } = PretrainingEnglishShare;

    public static TrainingData Build(Corpus corpus, Func<string, int[]> encode)
    {
        int[] Stream(IReadOnlyList<string[]> books)
        {
            var ids = new List<int>();
            foreach (var book in books)
            {
                foreach (var paragraph in book)
                {
                    ids.AddRange(encode(paragraph));
                    ids.Add(UnigramModel.NewlineId);
                }
                ids[^1] = UnigramModel.EosId;
            }
            return ids.ToArray();
        }
        var dialogues = corpus.Dialogues.Select(d => encode(d).Append(UnigramModel.EosId).ToArray()).ToArray();
        return new TrainingData(Stream(corpus.JapaneseBooks), Stream(corpus.EnglishBooks), dialogues);
    }

    /// <summary>A <c>[batch, length + 1]</c> int64 tensor of training windows.</summary>
    public Tensor SampleBatch(Random random, int batch, int length)
    {
        var rows = new long[batch * (length + 1)];
        for (int r = 0; r < batch; r++)
        {
            var row = rows.AsSpan(r * (length + 1), length + 1);
            double pick = random.NextDouble();
            if (pick < JapaneseShare) CopyWindow(Japanese, random, row);
            else if (pick < JapaneseShare + EnglishShare) CopyWindow(English, random, row);
            else FillDialogues(random, row);
        }
        return tensor(rows, ScalarType.Int64).view(batch, length + 1);
    }

    private static void CopyWindow(int[] stream, Random random, Span<long> row)
    {
        int start = random.Next(stream.Length - row.Length);
        for (int i = 0; i < row.Length; i++) row[i] = stream[start + i];
    }

    /// <summary>Dialogues packed from a random one on, so the row starts where a chat prompt starts.</summary>
    private void FillDialogues(Random random, Span<long> row)
    {
        int filled = 0;
        while (filled < row.Length)
        {
            var dialogue = Dialogues[random.Next(Dialogues.Length)];
            int take = Math.Min(dialogue.Length, row.Length - filled);
            for (int i = 0; i < take; i++) row[filled + i] = dialogue[i];
            filled += take;
        }
    }

    /// <summary>One optimizer step of next-token cross-entropy on a sampled batch, gradients clipped at 1; returns the loss.</summary>
    public float TrainStep(Rinna.Net.Model.GptNeoXForCausalLM model, TorchSharp.torch.optim.Optimizer optimizer,
        IList<TorchSharp.Modules.Parameter> parameters, Random random, TrainingSettings settings)
    {
        using var scope = NewDisposeScope();
        var batch = SampleBatch(random, settings.BatchSize, settings.SequenceLength);
        var output = model.Forward(batch.narrow(1, 0, settings.SequenceLength));
        var loss = nn.functional.cross_entropy(output.Logits.reshape(-1, model.Config.VocabSize),
            batch.narrow(1, 1, settings.SequenceLength).reshape(-1));
        optimizer.zero_grad();
        loss.backward();
        nn.utils.clip_grad_norm_(parameters, 1.0);
        optimizer.step();
        return loss.item<float>();
    }
}
