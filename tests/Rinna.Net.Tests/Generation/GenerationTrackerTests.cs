using System.Text;
using Rinna.Net.Generation;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

public class GenerationTrackerTests
{
    private const int Pad = 0, Eos = 3, Eos2 = 7;

    // A byte-level vocabulary shaped like rinna's: whole pieces, and byte-fallback ids that spell 猫 (E7 8C AB) in three tokens.
    private static readonly Dictionary<int, byte[]> Vocabulary = new()
    {
        [10] = "こん"u8.ToArray(), [11] = "にち"u8.ToArray(), [12] = "は"u8.ToArray(),
        [13] = "ユー"u8.ToArray(), [14] = "ザー"u8.ToArray(), [15] = ":"u8.ToArray(), [16] = " "u8.ToArray(),
        [20] = [0xE7], [21] = [0x8C], [22] = [0xAB],
    };

    // Special ids decode to nothing, like a tokenizer's decode(skip_special_tokens: true).
    private static string Decode(int[] ids) =>
        Encoding.UTF8.GetString(ids.SelectMany(id => Vocabulary.TryGetValue(id, out var bytes) ? bytes : []).ToArray());

    public GenerationTrackerTests() => TorchSharpNativeLoader.EnsureInstalled();

    [Fact]
    public void ByteFallbackCharactersAreReleasedOnlyWhenComplete()
    {
        var tracker = new GenerationTracker(new GenerationConfig { MaxNewTokens = 10 }, 1, 4, Decode);
        var pieces = new List<string>();
        foreach (var token in new long[] { 10, 20, 21, 22, 12 })
        {
            tracker.Advance([token]);
            pieces.Add(tracker.TakeText(0));
        }
        Assert.Equal(["こん", "", "", "猫", "は"], pieces);
        tracker.Cancel();
        var result = Assert.Single(tracker.GetSequences());
        Assert.Equal("こん猫は", result.Text);
        Assert.Equal(FinishReason.Cancelled, result.FinishReason);
    }

    [Fact]
    public void AnIncompleteCharacterAtTheEndIsFlushedAsReplacementCharacter()
    {
        var tracker = new GenerationTracker(new GenerationConfig { MaxNewTokens = 2 }, 1, 4, Decode);
        tracker.Advance([10]);
        tracker.Advance([20]);
        Assert.Equal(FinishReason.Length, tracker.GetFinishReason(0));
        Assert.Equal("こん\uFFFD", tracker.TakeText(0));
    }

    [Fact]
    public void AStopStringSpanningTokensFinishesItsRowWhichThenGetsPadding()
    {
        var config = new GenerationConfig { MaxNewTokens = 6, StopStrings = ["ユーザー:"], EosTokenId = [Eos], PadTokenId = Pad };
        var tracker = new GenerationTracker(config, batchSize: 2, promptLength: 5, Decode);
        var steps = new long[][] { [10, 10], [13, 11], [14, 12], [15, 13], [16, 14], [12, 16] };
        var appended = steps.Select(step => tracker.Advance(step)).ToArray();
        var streamed = tracker.TakeText(0);

        Assert.Equal([10, 13, 14, 15, Pad, Pad], appended.Select(a => a[0]));
        Assert.Equal([10, 11, 12, 13, 14, 16], appended.Select(a => a[1]));
        var rows = tracker.GetSequences();
        Assert.Equal(new GeneratedSequence([10, 13, 14, 15], FinishReason.StopString, "こん", "ユーザー:"), rows[0], SequenceComparer);
        Assert.Equal("こん", streamed);
        Assert.Equal(FinishReason.Length, rows[1].FinishReason);
        Assert.Equal("こんにちはユーザー ", rows[1].Text);
    }

    [Fact]
    public void AnyOfSeveralEosIdsFinishesARowAndIsKeptInItsTokensButNotItsText()
    {
        var config = new GenerationConfig { MaxNewTokens = 5, EosTokenId = [Eos, Eos2], PadTokenId = Pad };
        var tracker = new GenerationTracker(config, batchSize: 3, promptLength: 2, Decode);
        tracker.Advance([10, 10, 10]);
        tracker.Advance([Eos2, 12, 12]);
        tracker.Advance([11, Eos, 12]);
        Assert.False(tracker.IsDone);
        Assert.Equal([Pad, Pad, 12], tracker.Advance([11, 11, 12]));
        tracker.Advance([11, 11, 12]);
        Assert.True(tracker.IsDone);

        var rows = tracker.GetSequences();
        Assert.Equal(new GeneratedSequence([10, Eos2], FinishReason.EndOfSequence, "こん", null), rows[0], SequenceComparer);
        Assert.Equal(new GeneratedSequence([10, 12, Eos], FinishReason.EndOfSequence, "こんは", null), rows[1], SequenceComparer);
        Assert.Equal(new GeneratedSequence([10, 12, 12, 12, 12], FinishReason.Length, "こんはははは", null), rows[2], SequenceComparer);
        Assert.Throws<InvalidOperationException>(() => tracker.Advance([1L, 1L, 1L]));
    }

    [Fact]
    public void WithoutAPadIdTheFirstEosIdPadsAsInHuggingFace()
    {
        var tracker = new GenerationTracker(new GenerationConfig { MaxNewTokens = 3, EosTokenId = [Eos2, Eos] }, 2, 1);
        tracker.Advance([Eos, 10]);
        Assert.Equal([Eos2, 10], tracker.Advance([10, 10]));
        Assert.Equal(Eos2, tracker.PadTokenId);
    }

    [Fact]
    public void CancelFinishesOnlyTheRowsStillGenerating()
    {
        var config = new GenerationConfig { MaxNewTokens = 10, EosTokenId = [Eos], PadTokenId = Pad };
        var tracker = new GenerationTracker(config, 2, 3);
        tracker.Advance([Eos, 10]);
        Assert.Throws<InvalidOperationException>(tracker.GetSequences);
        tracker.Cancel();
        Assert.Equal([FinishReason.EndOfSequence, FinishReason.Cancelled], tracker.GetSequences().Select(s => s.FinishReason));
        Assert.Null(tracker.GetSequences()[1].Text);
        Assert.Throws<InvalidOperationException>(() => tracker.TakeText(0));
    }

    [Fact]
    public void TheBudgetComesFromMaxLengthWhenMaxNewTokensIsUnset()
    {
        var tracker = new GenerationTracker(new GenerationConfig { MaxLength = 7 }, 1, promptLength: 5);
        Assert.Equal(2, tracker.MaxNewTokens);
        tracker.Advance([10]);
        tracker.Advance([10]);
        Assert.Equal(FinishReason.Length, tracker.GetFinishReason(0));
        Assert.Equal(2, tracker.Steps);
    }

    [Fact]
    public void TheTensorOverloadReturnsInt64OnTheSameDevice()
    {
        using var scope = NewDisposeScope();
        var config = new GenerationConfig { MaxNewTokens = 4, EosTokenId = [Eos], PadTokenId = Pad };
        var tracker = new GenerationTracker(config, 2, 1);
        tracker.Advance(tensor(new int[] { Eos, 10 }));
        var appended = tracker.Advance(tensor(new long[] { 11, 12 }));
        Assert.Equal(ScalarType.Int64, appended.dtype);
        Assert.Equal([Pad, 12L], appended.data<long>().ToArray());
        Assert.Throws<ArgumentException>(() => tracker.Advance(tensor(new long[] { 1, 2, 3 })));
    }

    [Fact]
    public void SettingsThatCannotWorkAreRejectedUpFront()
    {
        // Stop strings can only be found in decoded text.
        Assert.Throws<ArgumentException>(() => new GenerationTracker(new GenerationConfig { StopStrings = ["x"] }, 1, 1));
        // A row of a batch can stop early, but nothing could fill it.
        Assert.Throws<ArgumentException>(() => new GenerationTracker(new GenerationConfig { StopStrings = ["x"] }, 2, 1, Decode));
        // A single row needs no padding.
        _ = new GenerationTracker(new GenerationConfig { StopStrings = ["x"] }, 1, 1, Decode);
        Assert.Throws<ArgumentException>(() => new GenerationTracker(new GenerationConfig { DoSample = true, Temperature = 0 }, 1, 1));
        var tracker = new GenerationTracker(new GenerationConfig(), 1, 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => tracker.Advance([-1L]));
    }

    private static readonly IEqualityComparer<GeneratedSequence> SequenceComparer = EqualityComparer<GeneratedSequence>.Create(
        (a, b) => a!.TokenIds.SequenceEqual(b!.TokenIds) && a.FinishReason == b.FinishReason && a.Text == b.Text && a.StopString == b.StopString);
}
