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

        var shortTime = Best(() => tokenizer.Encode(shortText, addSpecialTokens: false));
        var longTime = Best(() => tokenizer.Encode(longText, addSpecialTokens: false));
        // 8x the text; a quadratic encoder would take ~64x. Allow generous noise on a shared machine.
        Assert.True(longTime < shortTime * 24, $"50k chars: {shortTime.TotalMilliseconds} ms, 400k chars: {longTime.TotalMilliseconds} ms");
    }

    private static TimeSpan Best(Action action)
    {
        var best = TimeSpan.MaxValue;
        for (var i = 0; i < 3; i++)
        {
            var watch = Stopwatch.StartNew();
            action();
            if (watch.Elapsed < best) best = watch.Elapsed;
        }

        return best;
    }
}
