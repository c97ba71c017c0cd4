using Rinna.Net.Generation;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>Processors the shared fixtures do not cover, checked against hand-computed Hugging Face semantics.</summary>
public class LogitsProcessorTests
{
    public LogitsProcessorTests() => TorchSharpNativeLoader.EnsureInstalled();

    private static float[] Row(Tensor t, int row) => t[row].data<float>().ToArray();

    [Fact]
    public void NoBadWordsBansSingleTokensAlwaysAndTheLastTokenOfASequenceWhoseRestWasJustGenerated()
    {
        using var scope = NewDisposeScope();
        var inputIds = tensor(new long[,] { { 1, 4, 5 }, { 1, 4, 6 } });
        var scores = zeros(2, 8);
        // [2] always; [4, 5, 7]: 7 after "4 5" (row 0 only); [3]: an eos alone is not a bad word; [5, 6, 2, 1] is longer than the context, so ignored.
        var processor = new NoBadWordsLogitsProcessor([[2], [4, 5, 7], [3], [5, 6, 2, 1]], eosTokenId: [3]);
        var output = processor.Process(inputIds, scores);
        var ninf = float.NegativeInfinity;
        Assert.Equal([0, 0, ninf, 0, 0, 0, 0, ninf], Row(output, 0));
        Assert.Equal([0, 0, ninf, 0, 0, 0, 0, 0], Row(output, 1));
        Assert.Throws<ArgumentException>(() => new NoBadWordsLogitsProcessor([[9]]).Process(inputIds, scores));
    }

    [Fact]
    public void NoRepeatUnigramsBanEveryTokenAlreadyPresent()
    {
        using var scope = NewDisposeScope();
        var output = new NoRepeatNGramLogitsProcessor(1).Process(tensor(new long[,] { { 2, 0, 2 } }), zeros(1, 4));
        Assert.Equal([float.NegativeInfinity, 0, float.NegativeInfinity, 0], Row(output, 0));
    }

    [Fact]
    public void MinPKeepsTokensAtLeastMinPTimesTheTopProbability()
    {
        using var scope = NewDisposeScope();
        double[] logits = [3.0, 2.0, 0.5, -1.0, 2.9];
        var probabilities = logits.Select(Math.Exp).Select(e => e / logits.Sum(Math.Exp)).ToArray();
        const double minP = 0.2;
        var threshold = minP * probabilities.Max();

        var output = new MinPLogitsWarper(minP).Process(zeros(1, 1, dtype: ScalarType.Int64), tensor(logits.Select(l => (float)l).ToArray()).unsqueeze(0));

        var expected = logits.Select((l, i) => probabilities[i] < threshold ? float.NegativeInfinity : (float)l).ToArray();
        Assert.Equal(expected, Row(output, 0));
        Assert.Contains(float.NegativeInfinity, expected); // the case does filter something
        // With min_p = 1 only the top token survives, and min_tokens_to_keep widens that.
        Assert.Equal(1, Row(new MinPLogitsWarper(1.0).Process(zeros(1, 1, dtype: ScalarType.Int64), tensor(logits.Select(l => (float)l).ToArray()).unsqueeze(0)), 0).Count(float.IsFinite));
        Assert.Equal(3, Row(new MinPLogitsWarper(1.0, minTokensToKeep: 3).Process(zeros(1, 1, dtype: ScalarType.Int64), tensor(logits.Select(l => (float)l).ToArray()).unsqueeze(0)), 0).Count(float.IsFinite));
    }

    [Fact]
    public void TopPZeroKeepsOnlyTheMostLikelyToken()
    {
        using var scope = NewDisposeScope();
        var output = new TopPLogitsWarper(0).Process(zeros(1, 1, dtype: ScalarType.Int64), tensor(new float[] { 1, 3, 2 }).unsqueeze(0));
        Assert.Equal([float.NegativeInfinity, 3, float.NegativeInfinity], Row(output, 0));
    }

    [Fact]
    public void RenormalizationAppearsAfterProcessorsAndAfterWarpersLikeHuggingFace()
    {
        var names = LogitsProcessorList.Create(new GenerationConfig { DoSample = true, RenormalizeLogits = true, MinP = 0.1, TypicalP = 0.9, EpsilonCutoff = 3e-4, EtaCutoff = 3e-4 }, 4)
            .Select(p => p.GetType().Name);
        Assert.Equal(["LogitNormalization", "TopKLogitsWarper", "MinPLogitsWarper", "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper", "LogitNormalization"], names);
        // Greedy decoding applies processors only, so sampling-only settings add nothing.
        Assert.Empty(LogitsProcessorList.Create(new GenerationConfig { Temperature = 0.5, TopK = 5, TopP = 0.5 }, 4));
    }

    [Fact]
    public void WarpersRejectWhatHuggingFaceRejects()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new TemperatureLogitsWarper(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new TopKLogitsWarper(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new TopPLogitsWarper(1.5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new TypicalLogitsWarper(1.0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new EpsilonLogitsWarper(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new EtaLogitsWarper(1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new MinPLogitsWarper(-0.1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new RepetitionPenaltyLogitsProcessor(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new NoRepeatNGramLogitsProcessor(0));
        Assert.Throws<ArgumentException>(() => new MinLengthLogitsProcessor(3, []));
    }

    [Fact]
    public void MismatchedShapesAreRejected()
    {
        using var scope = NewDisposeScope();
        var processor = new RepetitionPenaltyLogitsProcessor(1.2);
        Assert.Throws<ArgumentException>(() => processor.Process(zeros(3, 2, dtype: ScalarType.Int64), zeros(2, 8)));
        Assert.Throws<ArgumentException>(() => processor.Process(zeros(2, 2, dtype: ScalarType.Int32), zeros(2, 8)));
        Assert.Throws<ArgumentException>(() => processor.Process(zeros(2, 2, dtype: ScalarType.Int64), zeros(8)));
    }

    [Fact]
    public void ATemperatureSoSmallThatDivisionOverflowsIsTakenAtItsLimit()
    {
        using var scope = NewDisposeScope();
        var inputIds = tensor(new long[,] { { 1 }, { 1 } });
        // Row 0 overflows float32 at 1e-300; row 1 is masked but for its ties, which share the probability.
        var scores = tensor(new float[,] { { 1.5f, -2f, 3f, 0.25f }, { 2f, float.NegativeInfinity, 2f, -1f } });
        var warped = new TemperatureLogitsWarper(1e-300).Process(inputIds, scores);
        Assert.Equal([float.NegativeInfinity, float.NegativeInfinity, 0f, float.NegativeInfinity], Row(warped, 0));
        Assert.Equal([0f, float.NegativeInfinity, 0f, float.NegativeInfinity], Row(warped, 1));
        var probabilities = warped.softmax(-1);
        Assert.False(probabilities.isnan().any().item<bool>());

        // Where nothing overflows the warper is HF's plain division.
        var ordinary = new TemperatureLogitsWarper(0.5).Process(inputIds, scores);
        Assert.Equal([3f, -4f, 6f, 0.5f], Row(ordinary, 0));
    }
}
