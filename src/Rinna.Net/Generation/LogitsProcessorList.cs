using System.Collections;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// An ordered pipeline of <see cref="ILogitsProcessor"/>s applied one after the other, like Hugging Face's
/// <c>LogitsProcessorList</c>. <see cref="Create"/> builds the pipeline <c>generate()</c> would build.
/// </summary>
public sealed class LogitsProcessorList : IReadOnlyList<ILogitsProcessor>, ILogitsProcessor
{
    private readonly ILogitsProcessor[] processors;

    /// <summary>Creates a pipeline from processors in the order they run.</summary>
    public LogitsProcessorList(IEnumerable<ILogitsProcessor> processors)
    {
        ArgumentNullException.ThrowIfNull(processors);
        this.processors = processors.ToArray();
        if (this.processors.Any(p => p is null)) throw new ArgumentException("A processor is null.", nameof(processors));
    }

    /// <summary>
    /// The pipeline Hugging Face's <c>generate()</c> builds for <paramref name="config"/>
    /// (<c>_get_logits_processor</c>, then <c>_get_logits_warper</c> when sampling), in its order:
    /// RepetitionPenalty → NoRepeatNGram → NoBadWords → MinLength → MinNewTokensLength → user processors →
    /// LogitNormalization; then, only when <see cref="GenerationConfig.DoSample"/> is set, Temperature → TopK → TopP →
    /// MinP → Typical → Epsilon → Eta → LogitNormalization. Each is included only when its setting is active, under
    /// the same conditions as Hugging Face (e.g. <c>TopK</c> whenever it is not 0, so sampling with defaults keeps 50 tokens).
    /// </summary>
    /// <param name="config">The generation settings; validated first.</param>
    /// <param name="promptLength">Width of the prompt batch given to <c>Generate</c> (left padding included).</param>
    /// <param name="userProcessors">Extra processors, run after the built-in ones and before the normalization.</param>
    /// <exception cref="ArgumentException">The configuration is invalid (see <see cref="GenerationConfig.Validate"/>).</exception>
    public static LogitsProcessorList Create(GenerationConfig config, int promptLength, IEnumerable<ILogitsProcessor>? userProcessors = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentOutOfRangeException.ThrowIfNegative(promptLength);
        config.Validate();

        var pipeline = new List<ILogitsProcessor>();
        if (config.RepetitionPenalty != 1.0) pipeline.Add(new RepetitionPenaltyLogitsProcessor(config.RepetitionPenalty));
        if (config.NoRepeatNgramSize > 0) pipeline.Add(new NoRepeatNGramLogitsProcessor(config.NoRepeatNgramSize));
        if (config.BadWordsIds is { } badWords) pipeline.Add(new NoBadWordsLogitsProcessor(badWords, config.EosTokenId));
        if (config.EosTokenId is { } eos)
        {
            if (config.MinLength > 0) pipeline.Add(new MinLengthLogitsProcessor(config.MinLength, eos));
            if (config.MinNewTokens is > 0 and var minNew) pipeline.Add(new MinNewTokensLengthLogitsProcessor(promptLength, minNew, eos));
        }
        if (userProcessors is not null) pipeline.AddRange(userProcessors);
        if (config.RenormalizeLogits) pipeline.Add(new LogitNormalization());

        if (config.DoSample)
        {
            // Hugging Face keeps 2 tokens only for beam search; plain sampling keeps 1.
            const int minTokensToKeep = 1;
            if (config.Temperature != 1.0) pipeline.Add(new TemperatureLogitsWarper(config.Temperature));
            if (config.TopK != 0) pipeline.Add(new TopKLogitsWarper(config.TopK, minTokensToKeep));
            if (config.TopP < 1.0) pipeline.Add(new TopPLogitsWarper(config.TopP, minTokensToKeep));
            if (config.MinP is { } minP) pipeline.Add(new MinPLogitsWarper(minP, minTokensToKeep));
            if (config.TypicalP < 1.0) pipeline.Add(new TypicalLogitsWarper(config.TypicalP, minTokensToKeep));
            if (config.EpsilonCutoff is > 0 and < 1) pipeline.Add(new EpsilonLogitsWarper(config.EpsilonCutoff, minTokensToKeep));
            if (config.EtaCutoff is > 0 and < 1) pipeline.Add(new EtaLogitsWarper(config.EtaCutoff, minTokensToKeep));
            if (config.RenormalizeLogits) pipeline.Add(new LogitNormalization());
        }
        return new LogitsProcessorList(pipeline);
    }

    /// <summary>Runs every processor in order; with no processors, returns a copy of <paramref name="scores"/>.</summary>
    /// <param name="inputIds">Every token so far: <c>[batch, length]</c>, int64.</param>
    /// <param name="scores">Next-token scores: <c>[batch, vocab]</c>.</param>
    public Tensor Process(Tensor inputIds, Tensor scores)
    {
        LogitsProcessing.CheckShapes(inputIds, scores);
        if (processors.Length == 0) return scores.clone();
        var current = scores;
        foreach (var processor in processors) current = processor.Process(inputIds, current);
        return current;
    }

    /// <inheritdoc />
    public int Count => processors.Length;

    /// <inheritdoc />
    public ILogitsProcessor this[int index] => processors[index];

    /// <inheritdoc />
    public IEnumerator<ILogitsProcessor> GetEnumerator() => ((IEnumerable<ILogitsProcessor>)processors).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
