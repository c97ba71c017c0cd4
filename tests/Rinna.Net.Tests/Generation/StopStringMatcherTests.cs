using Rinna.Net.Generation;

namespace Rinna.Net.Tests.Generation;

public class StopStringMatcherTests
{
    [Fact]
    public void AStopStringSpanningPiecesIsHeldBackAndNeverEmitted()
    {
        var matcher = new StopStringMatcher(["ユーザー:"]);
        var emitted = "";
        foreach (var piece in new[] { "はい、", "どうぞ。\nユ", "ーザ", "ー", ":", " 次" })
        {
            var scan = matcher.Push(piece);
            emitted += scan.SafeText;
            Assert.DoesNotContain("ユ", emitted);
            if (scan.Stopped) break;
        }
        Assert.Equal("はい、どうぞ。\n", emitted);
        Assert.Equal("ユーザー:", matcher.StopString);
        Assert.Throws<InvalidOperationException>(() => matcher.Push("more"));
    }

    [Fact]
    public void APrefixThatDoesNotContinueIsReleased()
    {
        var matcher = new StopStringMatcher(["</s>"]);
        Assert.Equal(new StopStringScan("a", null), matcher.Push("a</"));
        Assert.Equal("</", matcher.HeldText);
        Assert.Equal(new StopStringScan("</b>", null), matcher.Push("b>"));
        Assert.Equal(new StopStringScan("x", null), matcher.Push("x<"));
        Assert.Equal("<", matcher.Flush());
        Assert.Null(matcher.StopString);
    }

    [Fact]
    public void TheEarliestStopStringWinsAndTextAfterItIsDropped()
    {
        var matcher = new StopStringMatcher(["world", "o w"]);
        var scan = matcher.Push("hello world, bye");
        Assert.Equal("hell", scan.SafeText);
        Assert.Equal("o w", scan.StopString);
        Assert.Equal("", matcher.Flush());
    }

    [Fact]
    public void WhenTwoStopStringsStartTogetherTheShorterOneCompletesFirst()
    {
        var matcher = new StopStringMatcher(["\n\nユーザー", "\n\n"]);
        var scan = matcher.Push("答え\n\nユーザー");
        Assert.Equal("答え", scan.SafeText);
        Assert.Equal("\n\n", scan.StopString);
    }

    [Fact]
    public void AStopStringInsideOnePieceStopsAtOnce()
    {
        var matcher = new StopStringMatcher(["END"]);
        var scan = matcher.Push("abcENDdef");
        Assert.True(scan.Stopped);
        Assert.Equal("abc", scan.SafeText);
    }

    [Fact]
    public void EmptyStopStringsAreRejected()
    {
        Assert.Throws<ArgumentException>(() => new StopStringMatcher([]));
        Assert.Throws<ArgumentException>(() => new StopStringMatcher(["a", ""]));
    }
}
