using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using Rinna.Net.Tokenization.Fast;
using static Rinna.Net.Tests.Tokenization.FastTokenizerFixture;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>
/// How far raw Microsoft.ML.Tokenizers 2.0.1 gets on the GPT-NeoX cases when configured as closely as its API allows;
/// the counts are the ones docs/tokenizers.md reports, so a package update that changes them fails here.
/// </summary>
public class MicrosoftMLTokenizersAgreementTests
{
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static readonly Lazy<(List<KeyValuePair<string, int>> Vocabulary, List<string> Merges, Dictionary<string, int> Added)> File = new(() =>
    {
        using var document = JsonDocument.Parse(System.IO.File.ReadAllText(Path.Combine(FastTokenizerFixture.Directory, "tokenizer.json")));
        var model = document.RootElement.GetProperty("model");
        return (
            model.GetProperty("vocab").EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value.GetInt32())).ToList(),
            model.GetProperty("merges").EnumerateArray().Select(m => m.GetString()!).ToList(),
            document.RootElement.GetProperty("added_tokens").EnumerateArray().ToDictionary(a => a.GetProperty("content").GetString()!, a => a.GetProperty("id").GetInt32()));
    });

    /// <summary>Byte-level BPE with GPT-2's pattern as a .NET regex and the added tokens as its special tokens.</summary>
    private static BpeTokenizer Closest(bool withAddedTokens)
    {
        var (vocabulary, merges, added) = File.Value;
        return BpeTokenizer.Create(new BpeOptions(vocabulary)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = new RegexPreTokenizer(new Regex(Gpt2Pattern), withAddedTokens ? added : null),
            SpecialTokens = withAddedTokens ? added : null,
        });
    }

    private static int Agreeing(Func<Case, bool> agrees) => Cases.Count(agrees);

    [Fact]
    public void RawCountsAreTheDocumentedOnes()
    {
        var closest = Closest(withAddedTokens: true);
        var withoutAdded = Closest(withAddedTokens: false);
        var counts = new Dictionary<string, int>
        {
            ["ids"] = Agreeing(c => closest.EncodeToIds(c.Text).SequenceEqual(c.Ids)),
            ["ids-nfc-input"] = Agreeing(c => closest.EncodeToIds(c.Text.Normalize()).SequenceEqual(c.Ids)),
            ["ids-no-added-tokens"] = Agreeing(c => withoutAdded.EncodeToIds(c.Text.Normalize()).SequenceEqual(c.Ids)),
            ["decode"] = Agreeing(c => closest.Decode(c.Ids) == c.Decode),
            ["decode-skip-special"] = Agreeing(c => closest.Decode(c.Ids, considerSpecialTokens: false) == c.DecodeSkipSpecial),
            ["decode-clean-up"] = Agreeing(c => closest.Decode(c.Ids) == c.DecodeCleanUp),
        };
        var expected = new Dictionary<string, int>
        {
            ["ids"] = 171,
            ["ids-nfc-input"] = 173,
            ["ids-no-added-tokens"] = 155,
            ["decode"] = 173,
            ["decode-skip-special"] = 158,
            ["decode-clean-up"] = 170,
        };
        Assert.Equal(expected, counts);
    }

    [Fact]
    public void NonByteLevelModeLeavesNonAsciiMergesUndone()
    {
        // Fed words already in byte-level characters, BpeTokenizer without ByteLevel leaves merges such as "è ¼" undone.
        var (vocabulary, merges, _) = File.Value;
        var plain = BpeTokenizer.Create(new BpeOptions(vocabulary) { Merges = merges });
        Assert.Equal([164, 122], plain.EncodeToIds("è¼"));
        Assert.Equal([49070], FastTokenizerFixture.Tokenizer.ConvertTokensToIds(["è¼"]));
    }

    [Fact]
    public void DotNetRegexClassesSplitSupplementaryLettersOffTheWord()
    {
        // The reason the pre-tokenizer is matched by hand: .NET's \p{L} does not see 𠮷 (U+20BB7) as a letter.
        Assert.Equal(["𠮷", "野家"], new Regex(Gpt2Pattern).Matches("𠮷野家").Select(m => m.Value));
        var words = new List<string>();
        long work = 0;
        new ByteLevelPreTokenizer(false, true).Split("𠮷野家", words, ref work);
        Assert.Equal(["𠮷野家"], words);
    }
}
