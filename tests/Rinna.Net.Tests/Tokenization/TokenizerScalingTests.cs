using System.Diagnostics;
using static Rinna.Net.Tests.Tokenization.TokenizerFixtureCases;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>
/// Encoding time against text length. It compares two timings, so it runs with no other test beside it: model loads in
/// parallel tests (which populate hundreds of MB of pages at once) slowed single runs of the long text enough to fail it.
/// </summary>
[Collection(SerialMemoryCollection.Name)]
public class TokenizerScalingTests
{
    [Fact]
    public void EncodingTimeGrowsLinearlyWithTextLength()
    {
        var tokenizer = Tokenizer("ja-3.6b-lookalike");
        var source = string.Concat(Directory.GetFiles(Fixtures.Path("corpus", "ja")).Order().Select(File.ReadAllText));
        var longText = string.Concat(Enumerable.Repeat(source, 1 + 400_000 / source.Length))[..400_000];
        var shortText = longText[..50_000];
        tokenizer.Encode(shortText, addSpecialTokens: false);

        // A ratio of two timings from the same run, interleaved so a slow spell of a shared machine hits both lengths;
        // a disturbed attempt is measured again rather than failed. 8x the text: a quadratic encoder takes ~64x.
        var attempts = new List<string>();
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var (shortTime, longTime) = (TimeSpan.MaxValue, TimeSpan.MaxValue);
            for (var i = 0; i < 5; i++)
            {
                shortTime = Min(shortTime, Time(() => tokenizer.Encode(shortText, addSpecialTokens: false)));
                longTime = Min(longTime, Time(() => tokenizer.Encode(longText, addSpecialTokens: false)));
            }
            if (longTime < shortTime * 24) return;
            attempts.Add($"50k chars: {shortTime.TotalMilliseconds} ms, 400k chars: {longTime.TotalMilliseconds} ms");
        }
        Assert.Fail(string.Join("; ", attempts));
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    /// <summary>One run, after a full collection so that garbage from earlier tests is not collected inside it.</summary>
    private static TimeSpan Time(Action action)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var watch = Stopwatch.StartNew();
        action();
        return watch.Elapsed;
    }
}
