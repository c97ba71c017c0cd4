using System.Text.Json;
using Rinna.Net.Tokenization.Training;

namespace Rinna.Net.Tests.Tokenization.Training;

/// <summary>
/// The nmt_nfkc rule copied from the bilingual-lookalike fixture (compiled by the real SentencePiece) rewrites text as
/// SentencePiece did when it made the fixture's cases, and a model trained with it is read back identically.
/// </summary>
public sealed class SentencePieceNormalizationTests
{
    private static string FixtureModel => Path.Combine(Fixtures.Tokenizer("bilingual-lookalike"), "spiece.model");

    [Fact]
    public void ReadsTheFixturesNmtNfkcRule()
    {
        var normalization = SentencePieceNormalization.FromModel(FixtureModel);
        Assert.Equal("nmt_nfkc", normalization.Name);
        Assert.Equal(237561, normalization.PrecompiledCharsMap.Length);
        Assert.Equal("ABC ガ 123 456 ", normalization.Normalize("ＡＢＣ ｶﾞ 123 ４５６\u3000"));
        Assert.Equal("a\nb\tc▁d", normalization.Normalize("a\nb\tc▁d"));
    }

    [Fact]
    public void NormalizesEveryFixtureCaseAsSentencePieceDid()
    {
        var normalization = SentencePieceNormalization.FromModel(FixtureModel);
        int compared = 0;
        foreach (var line in File.ReadLines(Path.Combine(Fixtures.Tokenizer("bilingual-lookalike"), "cases.jsonl")))
        {
            var root = JsonDocument.Parse(line).RootElement;
            // [UNK] decodes to " ⁇ ", so those cases do not show the normalized text.
            if (root.GetProperty("sp_ids").EnumerateArray().Any(id => id.GetInt32() == 1)) continue;
            var text = root.GetProperty("text").GetString()!;
            // SentencePiece's decode turns the escaped space ▁ back into a space.
            Assert.Equal(root.GetProperty("sp_decoded").GetString(), normalization.Normalize(text).Replace('▁', ' '));
            compared++;
        }
        Assert.True(compared > 100, $"only {compared} cases compared");
    }

    [Fact]
    public void IdentityKeepsTextAsItIs()
    {
        Assert.Equal("identity", SentencePieceNormalization.Identity.Name);
        Assert.Equal("ＡＢＣ ｶﾞ\u3000", SentencePieceNormalization.Identity.Normalize("ＡＢＣ ｶﾞ\u3000"));
    }

    [Fact]
    public void TrainedModelCarriesTheRuleAndAgreesWithTheProductTokenizer()
    {
        var normalization = SentencePieceNormalization.FromModel(FixtureModel);
        var sentences = File.ReadAllLines(Fixtures.Path("corpus", "chat", "dialogues.txt")).Where(l => l.Length > 0).ToList();
        var model = UnigramTrainer.Train(sentences, new UnigramTrainerOptions { VocabSize = 800, CharacterCoverage = 0.95, NumThreads = 2, Normalization = normalization });
        var directory = Directory.CreateTempSubdirectory("rinna-tok-").FullName;
        try
        {
            model.Save(directory);
            var written = SentencePieceNormalization.FromModel(Path.Combine(directory, "spiece.model"));
            Assert.Equal("nmt_nfkc", written.Name);
            Assert.True(written.PrecompiledCharsMap.SequenceEqual(normalization.PrecompiledCharsMap));
            var tokenizer = AutoTokenizer.FromDirectory(directory);
            foreach (var text in sentences.Take(200).Append("ＡＢＣ ｶﾞ 123 ４５６\u3000全角スペース").Append("ユーザー: 日本のおすすめの観光地を教えてください。\nシステム: "))
                Assert.Equal(model.Encode(text), tokenizer.Encode(text, addSpecialTokens: false));
            Assert.Equal("ABC ガ 123 456 全角スペース", model.Decode(model.Encode("ＡＢＣ ｶﾞ 123 ４５６\u3000全角スペース")));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
