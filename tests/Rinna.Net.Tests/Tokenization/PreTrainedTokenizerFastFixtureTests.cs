using Rinna.Net.Tokenization;
using static Rinna.Net.Tests.Tokenization.FastTokenizerFixture;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>Every reference case of the GPT-NeoX <c>tokenizer.json</c>: ids, tokens and the three decodes.</summary>
public class PreTrainedTokenizerFastFixtureTests
{
    private static void AllAgree(Func<Case, (object Expected, object Actual)> check)
    {
        var failures = new List<string>();
        foreach (var c in Cases)
        {
            var (expected, actual) = check(c);
            var equal = expected is System.Collections.IEnumerable e && actual is System.Collections.IEnumerable a && expected is not string
                ? e.Cast<object>().SequenceEqual(a.Cast<object>())
                : Equals(expected, actual);
            if (!equal) failures.Add(c.Id);
        }

        Assert.True(failures.Count == 0, $"{failures.Count}/{Cases.Count} cases differ: {string.Join(", ", failures)}");
    }

    [Fact]
    public void FixtureHasAllCases() => Assert.Equal(173, Cases.Count);

    [Fact]
    public void EncodeWithoutSpecialTokensGivesTheReferenceIds() =>
        AllAgree(c => (c.Ids, Tokenizer.Encode(c.Text, addSpecialTokens: false)));

    [Fact]
    public void EncodeWithSpecialTokensAddsNothingForTheByteLevelPostProcessor() =>
        AllAgree(c => (c.Ids, Tokenizer.Encode(c.Text)));

    [Fact]
    public void TokenizeGivesTheReferenceTokens() => AllAgree(c => (c.Tokens, Tokenizer.Tokenize(c.Text)));

    [Fact]
    public void ConvertIdsToTokensGivesTheReferenceTokens() => AllAgree(c => (c.Tokens, Tokenizer.ConvertIdsToTokens(c.Ids)));

    [Fact]
    public void ConvertTokensToIdsInvertsThem() => AllAgree(c => (c.Ids, Tokenizer.ConvertTokensToIds(c.Tokens)));

    [Fact]
    public void DecodeGivesTheReferenceText() => AllAgree(c => (c.Decode, Tokenizer.Decode(c.Ids)));

    [Fact]
    public void DecodeSkippingSpecialTokensGivesTheReferenceText() =>
        AllAgree(c => (c.DecodeSkipSpecial, Tokenizer.Decode(c.Ids, skipSpecialTokens: true)));

    [Fact]
    public void DecodeWithCleanUpGivesTheReferenceText()
    {
        using var copy = Copy();
        File.WriteAllText(copy.File("tokenizer_config.json"), File.ReadAllText(copy.File("tokenizer_config.json"))
            .Replace("\"clean_up_tokenization_spaces\": false", "\"clean_up_tokenization_spaces\": true", StringComparison.Ordinal));
        var cleaning = (PreTrainedTokenizerFast)AutoTokenizer.FromDirectory(copy.Path);
        Assert.True(cleaning.CleanUpTokenizationSpaces);
        AllAgree(c => (c.DecodeCleanUp, cleaning.Decode(c.Ids)));
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void StreamingDecoderEqualsDecodeOnEveryCaseAndNeverEmitsHalfACharacter(bool skipSpecialTokens, bool cleanUp)
    {
        var tokenizer = Tokenizer;
        using var copy = Copy();
        if (cleanUp)
        {
            File.WriteAllText(copy.File("tokenizer_config.json"), "{\"tokenizer_class\": \"GPTNeoXTokenizer\", \"eos_token\": \"<|endoftext|>\"}");
            tokenizer = (PreTrainedTokenizerFast)AutoTokenizer.FromDirectory(copy.Path);
            Assert.True(tokenizer.CleanUpTokenizationSpaces);
        }

        var decoder = tokenizer.CreateStreamingDecoder(skipSpecialTokens);
        var failures = new List<string>();
        foreach (var c in Cases)
        {
            var expected = tokenizer.Decode(c.Ids, skipSpecialTokens);
            var streamed = new System.Text.StringBuilder();
            foreach (var id in c.Ids)
            {
                var piece = decoder.Append(id);
                // Text already emitted is final: a prefix of the whole decode, with no replacement character that
                // the whole decode does not have and no half of a surrogate pair.
                streamed.Append(piece);
                if (!expected.StartsWith(streamed.ToString(), StringComparison.Ordinal) || (piece.Length > 0 && char.IsHighSurrogate(piece[^1])))
                {
                    failures.Add($"{c.Id} (after id {id})");
                    break;
                }
            }

            streamed.Append(decoder.Flush());
            if (streamed.ToString() != expected) failures.Add(c.Id);
        }

        Assert.True(failures.Count == 0, string.Join(", ", failures));
    }

    [Fact]
    public void StreamingEqualsDecodeOnEveryPrefixOfTheIds()
    {
        // Cutting the ids anywhere leaves partial UTF-8 at the end; both paths must replace it the same way.
        var decoder = Tokenizer.CreateStreamingDecoder();
        foreach (var c in Cases.Where(c => c.Ids.Length <= 600))
        {
            for (var length = 0; length <= c.Ids.Length; length++)
            {
                var prefix = c.Ids[..length];
                var streamed = string.Concat(prefix.Select(decoder.Append)) + decoder.Flush();
                Assert.Equal(Tokenizer.Decode(prefix), streamed);
            }
        }
    }

    [Fact]
    public void SpecialTokenPropertiesFollowTheConfiguration()
    {
        var t = Tokenizer;
        Assert.Equal(50254, t.VocabSize);
        Assert.Equal(50277, t.Count);
        Assert.Equal("<|endoftext|>", t.EosToken);
        Assert.Equal("<|endoftext|>", t.BosToken);
        Assert.Equal("<|endoftext|>", t.UnkToken);
        Assert.Equal(0, t.EosTokenId);
        Assert.Equal(0, t.BosTokenId);
        Assert.Equal(0, t.UnkTokenId);
        Assert.Null(t.PadToken);
        Assert.Null(t.PadTokenId);
        Assert.Equal(["<|endoftext|>"], t.AllSpecialTokens);
        Assert.Equal([0], t.AllSpecialIds);
        Assert.Equal(2048, t.ModelMaxLength);
        Assert.False(t.CleanUpTokenizationSpaces);
        Assert.False(t.AddPrefixSpace);
    }

    [Fact]
    public void ConvertIdsToTokensSkipsTheConfiguredSpecialTokens()
    {
        Assert.Equal(["<|endoftext|>", "Hello", "<|unk|>", "  "], Tokenizer.ConvertIdsToTokens([0, 12092, 1, 50276]));
        // all_special_ids holds only the configured tokens; <|unk|> is special to the backend (decode skips it) but not there.
        Assert.Equal(["Hello", "<|unk|>", "  "], Tokenizer.ConvertIdsToTokens([0, 12092, 1, 50276], skipSpecialTokens: true));
        Assert.Equal("Hello  ", Tokenizer.Decode([0, 12092, 1, 50276], skipSpecialTokens: true));
        Assert.Equal([0, 12092, 0], Tokenizer.ConvertTokensToIds(["<|endoftext|>", "Hello", "no such token"]));
    }
}
