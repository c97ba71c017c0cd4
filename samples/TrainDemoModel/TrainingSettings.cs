using Rinna.Net.Model;

namespace TrainDemoModel;

/// <summary>Every knob of the demo training run; the defaults made the shipped model.</summary>
internal sealed record TrainingSettings
{
    public long Seed { get; init; }
    public int Steps { get; init; }
    public int Threads { get; init; }
    public required string OutputDirectory { get; init; }
    public required string CorpusDirectory { get; init; }
    /// <summary>Where training.log, loss.csv and training-summary.json go (kept out of the shipped model).</summary>
    public required string RecordsDirectory { get; init; }
    /// <summary>A SentencePiece model whose normalizer_spec (nmt_nfkc) the tokenizer copies.</summary>
    public required string NormalizerModel { get; init; }
    /// <summary>Another model directory the report scores on the same held-out text.</summary>
    public string? CompareDirectory { get; init; }
    /// <summary>Steps of the chat-tuning stage that continues the pre-trained model.</summary>
    public int ChatSteps { get; init; }

    /// <summary>How many times the sample's travel dialogues are repeated in the chat-tuning mix.</summary>
    public int SupplementRepeats { get; init; } = 8;
    public double ChatPeakLearningRate { get; init; } = 5e-4;
    public double ChatMinimumLearningRate { get; init; } = 5e-5;
    public int ChatWarmupSteps { get; init; } = 20;
    /// <summary>Chat tuning draws this share of rows from the books of each language, the rest from the dialogues.</summary>
    public double ChatBookShare { get; init; } = 0.2;

    public int VocabSize { get; init; } = 4096;
    public int BatchSize { get; init; } = 8;
    public int SequenceLength { get; init; } = 128;
    public double PeakLearningRate { get; init; } = 2e-3;
    public double MinimumLearningRate { get; init; } = 2e-4;
    public int WarmupSteps { get; init; } = 200;
    public double WeightDecay { get; init; } = 0.01;
    public int CheckpointEvery { get; init; } = 100;
    public double CharacterCoverage { get; init; } = 0.995;

    /// <summary>Wall-clock budget: training stops (and saves) after this, so a run on a busy machine still ends in time.</summary>
    public double MaxMinutes { get; init; } = double.PositiveInfinity;

    /// <summary>rinna's bilingual-gpt-neox-4b architecture (sequential residual, full rotary, GELU, untied head), scaled down.</summary>
    public GptNeoXConfig ModelConfig(int vocabSize) => new()
    {
        VocabSize = vocabSize,
        HiddenSize = 192,
        NumHiddenLayers = 6,
        NumAttentionHeads = 6,
        IntermediateSize = 768,
        HiddenAct = "gelu",
        RotaryPct = 1.0,
        RotaryEmbBase = 10000,
        MaxPositionEmbeddings = 256,
        InitializerRange = 0.02,
        LayerNormEps = 1e-5,
        UseCache = true,
        BosTokenId = 2,
        EosTokenId = 3,
        TieWordEmbeddings = false,
        UseParallelResidual = false,
        AttentionBias = true,
    };

    /// <summary>Linear warm-up, then cosine decay to the minimum.</summary>
    public double LearningRate(int step)
    {
        if (step <= WarmupSteps) return PeakLearningRate * step / WarmupSteps;
        double progress = (double)(step - WarmupSteps) / Math.Max(1, Steps - WarmupSteps);
        return MinimumLearningRate + 0.5 * (PeakLearningRate - MinimumLearningRate) * (1 + Math.Cos(Math.PI * progress));
    }

    /// <summary>The chat-tuning stage's schedule: the same shape, its own length and rates.</summary>
    public double ChatLearningRate(int step)
    {
        if (step <= ChatWarmupSteps) return ChatPeakLearningRate * step / ChatWarmupSteps;
        double progress = (double)(step - ChatWarmupSteps) / Math.Max(1, ChatSteps - ChatWarmupSteps);
        return ChatMinimumLearningRate + 0.5 * (ChatPeakLearningRate - ChatMinimumLearningRate) * (1 + Math.Cos(Math.PI * progress));
    }
}

/// <summary>What the training run measured, for TRAINING.md.</summary>
internal sealed record TrainingSummary(int Steps, int PlannedSteps, long TokensSeen, double FinalLoss, double Seconds, long Parameters);
