using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// Hugging Face's <c>RepetitionPenaltyLogitsProcessor</c>: the score of every token that occurs anywhere in
/// <c>inputIds</c> (prompt and padding included) is divided by the penalty when positive and multiplied by it when
/// negative, once per token.
/// </summary>
public sealed class RepetitionPenaltyLogitsProcessor : ILogitsProcessor
{
    /// <summary>Creates the processor.</summary>
    /// <param name="penalty">Above 1 discourages repetition, below 1 encourages it.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="penalty"/> is not a strictly positive number.</exception>
    public RepetitionPenaltyLogitsProcessor(double penalty)
    {
        if (!(penalty > 0) || double.IsInfinity(penalty))
            throw new ArgumentOutOfRangeException(nameof(penalty), penalty, "The repetition penalty has to be a strictly positive number.");
        Penalty = penalty;
    }

    /// <summary>The penalty.</summary>
    public double Penalty { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var seen = scores.gather(1, inputIds);
        var penalized = where(seen.lt(0), seen * Penalty, seen / Penalty);
        return scores.scatter(1, inputIds, penalized);
    }
}

/// <summary>
/// Hugging Face's <c>NoRepeatNGramLogitsProcessor</c>: forbids every token that would complete an n-gram already present
/// in <c>inputIds</c> (prompt included).
/// </summary>
public sealed class NoRepeatNGramLogitsProcessor : ILogitsProcessor
{
    /// <summary>Creates the processor.</summary>
    /// <param name="ngramSize">The n-gram size; must be positive.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="ngramSize"/> is not positive.</exception>
    public NoRepeatNGramLogitsProcessor(int ngramSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(ngramSize);
        NgramSize = ngramSize;
    }

    /// <summary>The n-gram size.</summary>
    public int NgramSize { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var length = inputIds.shape[1];
        if (length < NgramSize) return scores.clone();

        // The next token completes an n-gram that starts with the last n-1 tokens, so every earlier window whose first
        // n-1 tokens equal them bans its own last token.
        var prefix = inputIds.narrow(1, length - (NgramSize - 1), NgramSize - 1);
        var windows = inputIds.unfold(1, NgramSize, 1);
        var matches = windows.narrow(2, 0, NgramSize - 1).eq(prefix.unsqueeze(1)).all(2);

        // Windows that do not match write into a spare column past the vocabulary, so they cannot unban anything.
        var vocab = scores.shape[1];
        var target = windows.select(2, NgramSize - 1).masked_fill(matches.logical_not(), vocab);
        var banned = zeros(scores.shape[0], vocab + 1, dtype: ScalarType.Bool, device: scores.device)
            .scatter(1, target, ones_like(target, dtype: ScalarType.Bool));
        return scores.masked_fill(banned.narrow(1, 0, vocab), float.NegativeInfinity);
    }
}

/// <summary>
/// Hugging Face's <c>NoBadWordsLogitsProcessor</c>: single-token entries are always forbidden; for a longer entry its
/// last token is forbidden whenever the sequence ends with the rest of it. Entries equal to a lone end-of-sequence id
/// are dropped, as in Hugging Face.
/// </summary>
public sealed class NoBadWordsLogitsProcessor : ILogitsProcessor
{
    private readonly int[] singleTokens;
    private readonly (long[] Prefix, int Last)[] sequences;

    /// <summary>Creates the processor.</summary>
    /// <param name="badWordsIds">Token sequences that must never be generated.</param>
    /// <param name="eosTokenId">End-of-sequence ids; a bad word equal to one of them alone is ignored.</param>
    /// <exception cref="ArgumentException">The list is empty, an entry is empty or an id is negative.</exception>
    public NoBadWordsLogitsProcessor(IEnumerable<IReadOnlyList<int>> badWordsIds, IReadOnlyList<int>? eosTokenId = null)
    {
        ArgumentNullException.ThrowIfNull(badWordsIds);
        var all = badWordsIds.ToArray();
        if (all.Length == 0) throw new ArgumentException("Give at least one bad word sequence.", nameof(badWordsIds));
        if (all.Any(ids => ids is null || ids.Count == 0 || ids.Any(id => id < 0)))
            throw new ArgumentException("Each bad word must be a non-empty list of non-negative token ids.", nameof(badWordsIds));

        var kept = all.Where(ids => !(ids.Count == 1 && eosTokenId is not null && eosTokenId.Contains(ids[0]))).ToArray();
        singleTokens = kept.Where(ids => ids.Count == 1).Select(ids => ids[0]).Distinct().ToArray();
        sequences = kept.Where(ids => ids.Count > 1)
            .Select(ids => (ids.Take(ids.Count - 1).Select(id => (long)id).ToArray(), ids[^1]))
            .ToArray();
    }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var vocab = scores.shape[1];
        LogitsProcessing.CheckTokenIds(singleTokens.Concat(sequences.SelectMany(s => s.Prefix.Select(id => (int)id).Append(s.Last))),
            vocab, "bad_words_ids");

        var banned = zeros(scores.shape[0], vocab, dtype: ScalarType.Bool, device: scores.device);
        if (singleTokens.Length > 0)
        {
            using var columns = tensor(singleTokens.Select(id => (long)id).ToArray(), device: scores.device);
            banned.index_fill_(1, columns, true);
        }
        var length = inputIds.shape[1];
        foreach (var (prefix, last) in sequences)
        {
            if (prefix.Length + 1 > length) continue;
            using var expected = tensor(prefix, device: inputIds.device);
            var matchingRows = inputIds.narrow(1, length - prefix.Length, prefix.Length).eq(expected).all(1);
            banned.select(1, last).logical_or_(matchingRows);
        }
        return scores.masked_fill(banned, float.NegativeInfinity);
    }
}

/// <summary>
/// Hugging Face's <c>MinLengthLogitsProcessor</c>: forbids the end-of-sequence ids while <c>inputIds</c> (prompt and
/// padding included) is shorter than the minimum length.
/// </summary>
public sealed class MinLengthLogitsProcessor : ILogitsProcessor
{
    private readonly int[] eosTokenIds;

    /// <summary>Creates the processor.</summary>
    /// <param name="minLength">The minimum total length.</param>
    /// <param name="eosTokenId">The end-of-sequence id(s).</param>
    /// <exception cref="ArgumentException"><paramref name="minLength"/> is negative or an id is negative.</exception>
    public MinLengthLogitsProcessor(int minLength, IReadOnlyList<int> eosTokenId)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(minLength);
        eosTokenIds = CheckedEos(eosTokenId);
        MinLength = minLength;
    }

    /// <summary>The minimum total length.</summary>
    public int MinLength { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        LogitsProcessing.CheckTokenIds(eosTokenIds, scores.shape[1], "eos_token_id");
        return inputIds.shape[1] < MinLength ? LogitsProcessing.MaskTokens(scores, eosTokenIds) : scores.clone();
    }

    internal static int[] CheckedEos(IReadOnlyList<int> eosTokenId)
    {
        ArgumentNullException.ThrowIfNull(eosTokenId);
        if (eosTokenId.Count == 0 || eosTokenId.Any(id => id < 0))
            throw new ArgumentException("eos_token_id must hold at least one non-negative token id.", nameof(eosTokenId));
        return eosTokenId.ToArray();
    }
}

/// <summary>
/// Hugging Face's <c>MinNewTokensLengthLogitsProcessor</c>: forbids the end-of-sequence ids until at least
/// <see cref="MinNewTokens"/> tokens follow the prompt.
/// </summary>
public sealed class MinNewTokensLengthLogitsProcessor : ILogitsProcessor
{
    private readonly int[] eosTokenIds;

    /// <summary>Creates the processor.</summary>
    /// <param name="promptLengthToSkip">The prompt length (left padding included), i.e. the width of the input given to <c>Generate</c>.</param>
    /// <param name="minNewTokens">The minimum number of generated tokens.</param>
    /// <param name="eosTokenId">The end-of-sequence id(s).</param>
    /// <exception cref="ArgumentException">A length is negative or an id is negative.</exception>
    public MinNewTokensLengthLogitsProcessor(int promptLengthToSkip, int minNewTokens, IReadOnlyList<int> eosTokenId)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(promptLengthToSkip);
        ArgumentOutOfRangeException.ThrowIfNegative(minNewTokens);
        eosTokenIds = MinLengthLogitsProcessor.CheckedEos(eosTokenId);
        PromptLengthToSkip = promptLengthToSkip;
        MinNewTokens = minNewTokens;
    }

    /// <summary>The prompt length that is not counted.</summary>
    public int PromptLengthToSkip { get; }

    /// <summary>The minimum number of generated tokens.</summary>
    public int MinNewTokens { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        LogitsProcessing.CheckTokenIds(eosTokenIds, scores.shape[1], "eos_token_id");
        return inputIds.shape[1] - PromptLengthToSkip < MinNewTokens
            ? LogitsProcessing.MaskTokens(scores, eosTokenIds)
            : scores.clone();
    }
}

/// <summary>Hugging Face's <c>LogitNormalization</c>: log-softmax over the vocabulary (<c>renormalize_logits</c>).</summary>
public sealed class LogitNormalization : ILogitsProcessor
{
    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        return scores.log_softmax(-1);
    }
}

/// <summary>
/// Forbids ids at or above <c>limit</c>: the rows a model's output matrix has beyond its tokenizer's vocabulary
/// (embedding matrices are often padded to a multiple of 64 or 128). Those ids cannot be decoded, so they are never
/// chosen; Hugging Face would fail to decode them.
/// </summary>
public sealed class VocabularyLimitLogitsProcessor : ILogitsProcessor
{
    private readonly long limit;

    /// <summary>Creates the processor.</summary>
    /// <param name="limit">The first id that may not be generated (the tokenizer's size).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="limit"/> is not positive.</exception>
    public VocabularyLimitLogitsProcessor(long limit)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limit);
        this.limit = limit;
    }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var processed = scores.clone();
        if (scores.shape[1] > limit) processed.narrow(1, limit, scores.shape[1] - limit).fill_(float.NegativeInfinity);
        return processed;
    }
}
