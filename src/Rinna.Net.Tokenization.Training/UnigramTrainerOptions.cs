namespace Rinna.Net.Tokenization.Training;

/// <summary>
/// Settings of <see cref="UnigramTrainer"/>, named after SentencePiece's <c>spm_train</c> flags. The special pieces, the
/// user-defined pieces and the byte pieces are fixed to rinna's bilingual layout (see <see cref="UnigramTrainer"/>).
/// </summary>
public sealed record UnigramTrainerOptions
{
    /// <summary>Total vocabulary size including the 266 special, user-defined and byte pieces (<c>--vocab_size</c>).</summary>
    public int VocabSize { get; init; } = 4096;

    /// <summary>
    /// Share of the training characters that must be pieces of their own (<c>--character_coverage</c>); rarer characters
    /// are left to byte fallback.
    /// </summary>
    public double CharacterCoverage { get; init; } = 0.9995;

    /// <summary>Longest piece in UTF-16 code units (<c>--max_sentencepiece_length</c>).</summary>
    public int MaxPieceLength { get; init; } = 16;

    /// <summary>How many frequent substrings seed the vocabulary (<c>--seed_sentencepiece_size</c>).</summary>
    public int SeedSize { get; init; } = 100_000;

    /// <summary>EM iterations between two pruning steps (<c>--num_sub_iterations</c>).</summary>
    public int SubIterations { get; init; } = 2;

    /// <summary>Share of the pieces each pruning step keeps (<c>--shrinking_factor</c>).</summary>
    public double ShrinkingFactor { get; init; } = 0.75;

    /// <summary>
    /// The normalization applied to the training text and to encoded text, and written into the model's
    /// <c>normalizer_spec</c>; rinna's models use <c>nmt_nfkc</c> (see <see cref="SentencePieceNormalization.FromModel"/>).
    /// </summary>
    public SentencePieceNormalization Normalization { get; init; } = SentencePieceNormalization.Identity;

    /// <summary>Worker threads for the EM steps (<c>--num_threads</c>).</summary>
    public int NumThreads { get; init; } = Math.Max(1, Environment.ProcessorCount);

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is out of range.</exception>
    public void Validate()
    {
        if (VocabSize < UnigramTrainer.FixedPieceCount + 1)
            throw new ArgumentOutOfRangeException(nameof(VocabSize), VocabSize, $"must exceed the {UnigramTrainer.FixedPieceCount} fixed pieces.");
        if (CharacterCoverage is <= 0 or > 1)
            throw new ArgumentOutOfRangeException(nameof(CharacterCoverage), CharacterCoverage, "must be in (0, 1].");
        if (MaxPieceLength < 1) throw new ArgumentOutOfRangeException(nameof(MaxPieceLength), MaxPieceLength, "must be at least 1.");
        if (SeedSize < 1) throw new ArgumentOutOfRangeException(nameof(SeedSize), SeedSize, "must be at least 1.");
        if (SubIterations < 1) throw new ArgumentOutOfRangeException(nameof(SubIterations), SubIterations, "must be at least 1.");
        if (ShrinkingFactor is <= 0 or >= 1)
            throw new ArgumentOutOfRangeException(nameof(ShrinkingFactor), ShrinkingFactor, "must be in (0, 1).");
        ArgumentNullException.ThrowIfNull(Normalization);
        if (NumThreads < 1) throw new ArgumentOutOfRangeException(nameof(NumThreads), NumThreads, "must be at least 1.");
    }
}
