using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// One step of Hugging Face's logits pipeline (a <c>LogitsProcessor</c> or <c>LogitsWarper</c>): turns the next-token
/// scores of a batch into new scores.
/// </summary>
/// <remarks>
/// Implementations never modify <c>scores</c> in place (some Hugging Face processors do); they return a new tensor on
/// the same device, with the same dtype. Call them inside a <c>torch.NewDisposeScope()</c> so temporaries are freed.
/// </remarks>
public interface ILogitsProcessor
{
    /// <summary>Processes one step's scores.</summary>
    /// <param name="inputIds">Every token so far, prompt (left padding included) and generated: <c>[batch, length]</c>, int64.</param>
    /// <param name="scores">Next-token scores: <c>[batch, vocab]</c>, floating point.</param>
    /// <returns>The processed scores, <c>[batch, vocab]</c>; forbidden tokens are <c>-inf</c>.</returns>
    Tensor Process(Tensor inputIds, Tensor scores);
}

/// <summary>Shared argument checks and helpers of the processors.</summary>
internal static class LogitsProcessing
{
    public static void CheckShapes(Tensor inputIds, Tensor scores)
    {
        if (scores.dim() != 2)
            throw new ArgumentException($"scores must be [batch, vocab], got [{string.Join(", ", scores.shape)}].", nameof(scores));
        if (inputIds.dim() != 2 || inputIds.shape[0] != scores.shape[0])
            throw new ArgumentException(
                $"inputIds must be [batch, length] with the batch of scores ({scores.shape[0]}), got [{string.Join(", ", inputIds.shape)}].",
                nameof(inputIds));
        if (inputIds.dtype != ScalarType.Int64)
            throw new ArgumentException($"inputIds must be int64, got {inputIds.dtype}.", nameof(inputIds));
    }

    public static void CheckTokenIds(IEnumerable<int> ids, long vocabSize, string what)
    {
        foreach (var id in ids)
            if (id >= vocabSize)
                throw new ArgumentException($"{what} contains token id {id}, but the vocabulary has only {vocabSize} tokens.");
    }

    public static Tensor MaskTokens(Tensor scores, IReadOnlyList<int> tokenIds)
    {
        using var index = tensor(tokenIds.Select(id => (long)id).ToArray(), dtype: ScalarType.Int64, device: scores.device);
        return scores.index_fill(1, index, float.NegativeInfinity);
    }
}
