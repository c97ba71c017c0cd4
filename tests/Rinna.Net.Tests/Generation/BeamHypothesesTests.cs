using Rinna.Net.Generation;

namespace Rinna.Net.Tests.Generation;

/// <summary>HF's BeamHypotheses bookkeeping: which finished hypotheses are kept, and when a prompt's search is done.</summary>
public class BeamHypothesesTests
{
    [Fact]
    public void KeepsTheBestAndTracksTheWorst()
    {
        var hypotheses = new BeamHypotheses(beams: 2, lengthPenalty: 1.0, EarlyStopping.False, maxNewTokens: 10);
        hypotheses.Add([1], -4, generatedLength: 2, atEos: true);   // score -2
        hypotheses.Add([2], -3, generatedLength: 3, atEos: true);   // score -1
        hypotheses.Add([3], -9, generatedLength: 3, atEos: true);   // score -3: not better than the worst, dropped
        Assert.Equal([-2.0, -1.0], hypotheses.Beams.Select(h => h.Score));
        hypotheses.Add([4], -1, generatedLength: 2, atEos: true);   // score -0.5 evicts -2
        Assert.Equal([-1.0, -0.5], hypotheses.Beams.Select(h => h.Score));
    }

    [Theory]
    // Heuristic: the best running sum scored at the current length against the worst finished score (-1).
    [InlineData(EarlyStopping.False, 1.0, -5.0, 4, true)]    // -1.25 cannot beat -1
    [InlineData(EarlyStopping.False, 1.0, -3.0, 4, false)]   // -0.75 could
    [InlineData(EarlyStopping.True, 1.0, -0.1, 4, true)]
    // Never, positive penalty: scored at the maximum length (10): -5 / 10 = -0.5 could still beat -1.
    [InlineData(EarlyStopping.Never, 1.0, -5.0, 4, false)]
    [InlineData(EarlyStopping.Never, 1.0, -12.0, 4, true)]
    // Never, negative penalty: scored at the current length as the heuristic does.
    [InlineData(EarlyStopping.Never, -1.0, -0.3, 4, true)]    // -0.3 · 4 = -1.2
    [InlineData(EarlyStopping.Never, -1.0, -0.2, 4, false)]   // -0.8
    public void IsDoneFollowsEarlyStopping(EarlyStopping mode, double lengthPenalty, double best, int length, bool done)
    {
        var hypotheses = new BeamHypotheses(beams: 1, lengthPenalty, mode, maxNewTokens: 10);
        hypotheses.Add([1], lengthPenalty > 0 ? -2 : -0.5, generatedLength: 2, atEos: true);   // score -1 either way
        Assert.Equal(-1.0, hypotheses.Beams[0].Score, 12);
        Assert.Equal(done, hypotheses.IsDone(best, length));
    }

    [Fact]
    public void IsNotDoneBeforeHoldingNumBeamsHypotheses()
    {
        var hypotheses = new BeamHypotheses(beams: 2, lengthPenalty: 1.0, EarlyStopping.True, maxNewTokens: 10);
        hypotheses.Add([1], -1, generatedLength: 1, atEos: true);
        Assert.False(hypotheses.IsDone(-100, 5));
    }
}
