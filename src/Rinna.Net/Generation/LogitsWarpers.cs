using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>Hugging Face's <c>TemperatureLogitsWarper</c>: divides the scores by the temperature.</summary>
public sealed class TemperatureLogitsWarper : ILogitsProcessor
{
    /// <summary>Creates the warper.</summary>
    /// <param name="temperature">Strictly positive; below 1 sharpens the distribution, above 1 flattens it.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="temperature"/> is not strictly positive.</exception>
    public TemperatureLogitsWarper(double temperature)
    {
        if (!(temperature > 0) || double.IsInfinity(temperature))
            throw new ArgumentOutOfRangeException(nameof(temperature), temperature,
                "The temperature has to be a strictly positive number, otherwise the next-token scores are invalid."
                + (temperature == 0 ? " For greedy decoding, do not sample." : ""));
        Temperature = temperature;
    }

    /// <summary>The temperature.</summary>
    public double Temperature { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var scaled = scores / Temperature;
        // A temperature so small that the division overflows is taken at its limit: all the probability on the highest
        // scores, as greedy decoding would choose, instead of infinities that make the distribution NaN.
        using var overflowed = scaled.isfinite().logical_not_().logical_and_(scores.isfinite());
        if (!overflowed.any().item<bool>()) return scaled;
        using var scope = NewDisposeScope();
        var highest = scores.eq(scores.max(-1, keepdim: true).values);
        var limit = zeros_like(scores).masked_fill_(highest.logical_not(), float.NegativeInfinity);
        var result = where(overflowed.any(-1, keepdim: true), limit, scaled);
        scaled.Dispose();
        return result.MoveToOuterDisposeScope();
    }
}

/// <summary>Hugging Face's <c>TopKLogitsWarper</c>: keeps the k highest scores (ties with the k-th included).</summary>
public sealed class TopKLogitsWarper : ILogitsProcessor
{
    /// <summary>Creates the warper.</summary>
    /// <param name="topK">How many tokens to keep; must be positive.</param>
    /// <param name="minTokensToKeep">Lower bound on the kept tokens; must be positive.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is not positive.</exception>
    public TopKLogitsWarper(int topK, int minTokensToKeep = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(topK);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minTokensToKeep);
        TopK = Math.Max(topK, minTokensToKeep);
    }

    /// <summary>How many tokens are kept (at least the minimum asked for).</summary>
    public int TopK { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var k = (int)Math.Min(TopK, scores.shape[1]);
        var kthScore = scores.topk(k, dim: -1).values.narrow(-1, k - 1, 1);
        return scores.masked_fill(scores.lt(kthScore), float.NegativeInfinity);
    }
}

/// <summary>
/// Hugging Face's <c>TopPLogitsWarper</c> (nucleus sampling): keeps the smallest set of most likely tokens whose
/// probabilities add up to at least <see cref="TopP"/>. <see cref="TopP"/> = 0 keeps only the minimum number of tokens.
/// </summary>
public sealed class TopPLogitsWarper : ILogitsProcessor
{
    /// <summary>Creates the warper.</summary>
    /// <param name="topP">Probability mass to keep, in [0, 1].</param>
    /// <param name="minTokensToKeep">Lower bound on the kept tokens; must be positive.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    public TopPLogitsWarper(double topP, int minTokensToKeep = 1)
    {
        if (!(topP >= 0 && topP <= 1))
            throw new ArgumentOutOfRangeException(nameof(topP), topP, "top_p has to be between 0 and 1.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minTokensToKeep);
        TopP = topP;
        MinTokensToKeep = minTokensToKeep;
    }

    /// <summary>The probability mass kept.</summary>
    public double TopP { get; }

    /// <summary>Lower bound on the kept tokens.</summary>
    public int MinTokensToKeep { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var (sortedScores, sortedIndices) = scores.sort(dim: -1, descending: false);
        var cumulative = sortedScores.softmax(-1).cumsum(-1);
        // Ascending order: drop the unlikely head whose mass stays within 1 - top_p; the most likely tokens sit at the end.
        var sortedToRemove = cumulative.le(1 - TopP);
        var vocab = scores.shape[1];
        var keep = Math.Min(MinTokensToKeep, vocab);
        sortedToRemove.narrow(-1, vocab - keep, keep).fill_(false);
        var toRemove = sortedToRemove.scatter(1, sortedIndices, sortedToRemove);
        return scores.masked_fill(toRemove, float.NegativeInfinity);
    }
}

/// <summary>
/// Hugging Face's <c>MinPLogitsWarper</c>: drops tokens whose probability is below <see cref="MinP"/> times the
/// probability of the most likely token.
/// </summary>
public sealed class MinPLogitsWarper : ILogitsProcessor
{
    /// <summary>Creates the warper.</summary>
    /// <param name="minP">The scaled probability floor, in [0, 1].</param>
    /// <param name="minTokensToKeep">Lower bound on the kept tokens; must be positive.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    public MinPLogitsWarper(double minP, int minTokensToKeep = 1)
    {
        if (!(minP >= 0 && minP <= 1))
            throw new ArgumentOutOfRangeException(nameof(minP), minP, "min_p has to be between 0 and 1.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minTokensToKeep);
        MinP = minP;
        MinTokensToKeep = minTokensToKeep;
    }

    /// <summary>The scaled probability floor.</summary>
    public double MinP { get; }

    /// <summary>Lower bound on the kept tokens.</summary>
    public int MinTokensToKeep { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var probs = scores.softmax(-1);
        var threshold = probs.amax([-1], keepdim: true) * MinP;
        var toRemove = probs.lt(threshold);
        var k = (int)Math.Min(MinTokensToKeep, scores.shape[1]);
        var mostLikely = probs.topk(k, dim: -1).indexes;
        toRemove = toRemove.scatter(-1, mostLikely, zeros_like(mostLikely, dtype: ScalarType.Bool));
        return scores.masked_fill(toRemove, float.NegativeInfinity);
    }
}

/// <summary>
/// Hugging Face's <c>TypicalLogitsWarper</c> (locally typical sampling): keeps the tokens whose surprisal is closest
/// to the distribution's entropy, up to probability mass <see cref="Mass"/>.
/// </summary>
public sealed class TypicalLogitsWarper : ILogitsProcessor
{
    /// <summary>Creates the warper.</summary>
    /// <param name="mass">Probability mass to keep, in (0, 1).</param>
    /// <param name="minTokensToKeep">Lower bound on the kept tokens; must be positive.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    public TypicalLogitsWarper(double mass = 0.9, int minTokensToKeep = 1)
    {
        if (!(mass > 0 && mass < 1))
            throw new ArgumentOutOfRangeException(nameof(mass), mass, "typical_p has to be greater than 0 and less than 1.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minTokensToKeep);
        Mass = mass;
        MinTokensToKeep = minTokensToKeep;
    }

    /// <summary>The probability mass kept.</summary>
    public double Mass { get; }

    /// <summary>Lower bound on the kept tokens.</summary>
    public int MinTokensToKeep { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var logProbs = scores.log_softmax(-1);
        var probs = logProbs.exp();
        // Masked tokens give -inf * 0 = NaN; Hugging Face sums with nansum, i.e. counts them as 0.
        var plogp = logProbs * probs;
        var entropy = -plogp.masked_fill(plogp.isnan(), 0).sum([-1], keepdim: true);

        var (sortedShifted, sortedIndices) = (-logProbs - entropy).abs().sort(dim: -1, descending: false);
        var cumulative = scores.gather(-1, sortedIndices).softmax(-1).cumsum(-1);
        var vocab = scores.shape[1];
        var lastIndex = cumulative.lt(Mass).sum([1]).clamp_max(vocab - 1);
        var sortedToRemove = sortedShifted.gt(sortedShifted.gather(1, lastIndex.view(-1, 1)));
        var keep = Math.Min(MinTokensToKeep, vocab);
        sortedToRemove.narrow(-1, 0, keep).fill_(false);
        var toRemove = sortedToRemove.scatter(1, sortedIndices, sortedToRemove);
        return scores.masked_fill(toRemove, float.NegativeInfinity);
    }
}

/// <summary>Hugging Face's <c>EpsilonLogitsWarper</c>: drops tokens whose probability is below <see cref="Epsilon"/>.</summary>
public sealed class EpsilonLogitsWarper : ILogitsProcessor
{
    /// <summary>Creates the warper.</summary>
    /// <param name="epsilon">The probability cutoff, in (0, 1).</param>
    /// <param name="minTokensToKeep">Lower bound on the kept tokens; must be positive.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    public EpsilonLogitsWarper(double epsilon, int minTokensToKeep = 1)
    {
        if (!(epsilon > 0 && epsilon < 1))
            throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "epsilon_cutoff has to be greater than 0 and less than 1.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minTokensToKeep);
        Epsilon = epsilon;
        MinTokensToKeep = minTokensToKeep;
    }

    /// <summary>The probability cutoff.</summary>
    public double Epsilon { get; }

    /// <summary>Lower bound on the kept tokens.</summary>
    public int MinTokensToKeep { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var toRemove = scores.softmax(-1).lt(Epsilon);
        return scores.masked_fill(TruncationWarping.SpareMostLikely(scores, toRemove, MinTokensToKeep), float.NegativeInfinity);
    }
}

/// <summary>
/// Hugging Face's <c>EtaLogitsWarper</c>: drops tokens whose probability is below
/// <c>min(epsilon, sqrt(epsilon) * exp(-entropy))</c>.
/// </summary>
public sealed class EtaLogitsWarper : ILogitsProcessor
{
    /// <summary>Creates the warper.</summary>
    /// <param name="epsilon">The cutoff parameter, in (0, 1).</param>
    /// <param name="minTokensToKeep">Lower bound on the kept tokens; must be positive.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    public EtaLogitsWarper(double epsilon, int minTokensToKeep = 1)
    {
        if (!(epsilon > 0 && epsilon < 1))
            throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "eta_cutoff has to be greater than 0 and less than 1.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minTokensToKeep);
        Epsilon = epsilon;
        MinTokensToKeep = minTokensToKeep;
    }

    /// <summary>The cutoff parameter.</summary>
    public double Epsilon { get; }

    /// <summary>Lower bound on the kept tokens.</summary>
    public int MinTokensToKeep { get; }

    /// <inheritdoc />
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        var probs = scores.softmax(-1);
        // torch.distributions.Categorical(logits=scores).entropy(): normalized logits clamped to the dtype's lowest
        // finite value so that masked tokens contribute 0 instead of NaN.
        var normalized = (scores - scores.logsumexp(-1, keepdim: true)).clamp_min(LowestFinite(scores.dtype));
        var entropy = -(normalized * probs).sum([-1]);
        // Hugging Face keeps epsilon as a tensor, so the cutoff is computed in floating point of the tensor type, not in double.
        using var epsilon = tensor(Epsilon, dtype: scores.dtype, device: scores.device);
        var eta = minimum(epsilon, epsilon.sqrt() * (-entropy).exp()).unsqueeze(-1);
        var toRemove = probs.lt(eta);
        return scores.masked_fill(TruncationWarping.SpareMostLikely(scores, toRemove, MinTokensToKeep), float.NegativeInfinity);
    }

    private static double LowestFinite(ScalarType dtype) => dtype switch
    {
        ScalarType.Float64 => double.MinValue,
        ScalarType.Float16 => -65504.0,
        ScalarType.BFloat16 => -3.3895313892515355e38,
        _ => float.MinValue,
    };
}

/// <summary>What the epsilon and eta warpers share.</summary>
internal static class TruncationWarping
{
    /// <summary>Clears the removal mask for the <paramref name="minTokensToKeep"/> highest scores (ties included).</summary>
    public static Tensor SpareMostLikely(Tensor scores, Tensor toRemove, int minTokensToKeep)
    {
        var k = (int)Math.Min(minTokensToKeep, scores.shape[1]);
        var kthScore = scores.topk(k, dim: -1).values.narrow(-1, k - 1, 1);
        return toRemove.logical_and(scores.lt(kthScore));
    }
}
