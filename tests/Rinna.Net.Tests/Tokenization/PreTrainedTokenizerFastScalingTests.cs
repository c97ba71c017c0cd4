using Rinna.Net.Tokenization;
using Rinna.Net.Tokenization.Fast;
using static Rinna.Net.Tests.Tokenization.FastTokenizerFixture;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>
/// Encoding work against text length, counted (characters scanned, merge steps) rather than timed, so the check is
/// exact on a busy machine: 8x the text must cost about 8x the work, including the inputs that make naive
/// implementations quadratic.
/// </summary>
public class PreTrainedTokenizerFastScalingTests
{
    private static string Corpus() => string.Join('\n',
        System.IO.Directory.GetFiles(Fixtures.Path("corpus", "ja")).Concat(System.IO.Directory.GetFiles(Fixtures.Path("corpus", "en"))).Order().Select(File.ReadAllText));

    /// <summary>Japanese and English lines interleaved, about 10k characters, so that any cut of its repetition has the same mix.</summary>
    private static string MixedUnit()
    {
        var ja = File.ReadAllLines(System.IO.Directory.GetFiles(Fixtures.Path("corpus", "ja")).Order().First()).Where(l => l.Length > 0);
        var en = File.ReadAllLines(System.IO.Directory.GetFiles(Fixtures.Path("corpus", "en")).Order().First()).Where(l => l.Length > 0);
        var mixed = string.Join('\n', ja.Zip(en, (j, e) => j + "\n" + e));
        return mixed[..Math.Min(10_000, mixed.Length)];
    }

    private static string Repeat(string unit, int length) => string.Concat(Enumerable.Repeat(unit, 1 + length / unit.Length))[..length];

    public static TheoryData<string> Inputs() => new()
    {
        "corpus",        // mixed Japanese and English prose
        "one-word",      // Japanese letters with no space or punctuation: a single \p{L}+ word
        "spaces",        // one whitespace run, matched by the added whitespace tokens
        "near-special",  // "<|endoftext|" over and over: every '<' starts a match that fails at the end
        "digits",
    };

    private static string Text(string input, int length) => input switch
    {
        "corpus" => Repeat(MixedUnit(), length),
        "one-word" => Repeat("吾輩猫名前無何処生見当付", length),
        "spaces" => new string(' ', length),
        "near-special" => Repeat("<|endoftext|", length),
        _ => Repeat("3141592653589793", length),
    };

    [Theory]
    [MemberData(nameof(Inputs))]
    public void WorkGrowsLinearlyWithTextLength(string input)
    {
        var tokenizer = Tokenizer;
        var shortText = Text(input, 20_000);
        var longText = Text(input, 160_000);
        var shortIds = tokenizer.Encode(shortText, false).Length;
        var shortWork = PreTrainedTokenizerFast.LastEncodeWork;
        var longIds = tokenizer.Encode(longText, false).Length;
        var longWork = PreTrainedTokenizerFast.LastEncodeWork;

        Assert.InRange(longIds, 7 * shortIds, 9 * shortIds);
        Assert.InRange(longWork, 7 * shortWork, 9 * shortWork);
        // Bounded work per character, whatever the input.
        Assert.True(longWork < 40L * longText.Length, $"{longWork} units for {longText.Length} characters");
    }

    [Fact]
    public void LongWordsAreMergedByTheHeapAndAgreeWithMicrosoftMLTokenizers()
    {
        // The two merge paths meet at MaxWordLengthForMLTokenizers; on every word of the cases and the corpus (and
        // the long words cut down to its length) they must agree.
        var model = Tokenizer.Definition.Model;
        Assert.True(model.UsesMLTokenizers);
        var pre = new ByteLevelPreTokenizer(false, true);
        var words = new List<string>();
        long work = 0;
        foreach (var text in Cases.Select(c => c.Text).Append(Corpus()))
            pre.Split(text.Normalize(System.Text.NormalizationForm.FormC), words, ref work);
        var checkedWords = 0;
        foreach (var word in words.Distinct().SelectMany(w => w.Length > BpeModel.MaxWordLengthForMLTokenizers
                     ? [w, CutAtCharacter(w, BpeModel.MaxWordLengthForMLTokenizers)] : new[] { w }))
        {
            var mapped = new System.Text.StringBuilder();
            ByteLevelAlphabet.Map(word, mapped);
            var heap = new List<int>();
            model.EncodeWithHeap(mapped.ToString(), heap, ref work);
            Assert.Equal(model.EncodeWithMLTokenizers(word)!, heap);
            checkedWords++;
        }

        Assert.True(checkedWords > 3000, $"{checkedWords} words");

        // Whole texts, where runs of short words go to Microsoft.ML.Tokenizers in one call, give the same ids as the
        // heap merge word by word.
        foreach (var text in Cases.Select(c => c.Text.Normalize(System.Text.NormalizationForm.FormC)).Append(Corpus()[..50_000]))
        {
            var perWord = new List<int>();
            var textWords = new List<string>();
            pre.Split(text, textWords, ref work);
            foreach (var word in textWords)
            {
                var mapped = new System.Text.StringBuilder();
                ByteLevelAlphabet.Map(word, mapped);
                model.EncodeWithHeap(mapped.ToString(), perWord, ref work);
            }

            var inRuns = new List<int>();
            model.EncodeByteLevel(text, useRegex: true, inRuns, ref work);
            Assert.Equal(perWord, inRuns);
        }
    }

    private static string CutAtCharacter(string word, int length) =>
        char.IsHighSurrogate(word[length - 1]) ? word[..(length - 1)] : word[..length];
}
