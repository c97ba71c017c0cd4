using System.Text.Json;
using Google.Protobuf;
using Rinna.Net;
using Rinna.Net.Tokenization;
using Rinna.Net.Tokenization.Training;

namespace Rinna.Net.Tests.Tokenization.Training;

/// <summary>
/// The trainer's output against rinna's layout (the bilingual-lookalike fixture made by the real SentencePiece) and against
/// independent readers of the format (the library's AutoTokenizer and Google.Protobuf's wire reader).
/// </summary>
public sealed class UnigramTrainerTests : IClassFixture<UnigramTrainerTests.TrainedOnce>
{
    private readonly TrainedOnce trained;
    private readonly UnigramModel model;
    private readonly byte[] proto;

    public UnigramTrainerTests(TrainedOnce trained)
    {
        this.trained = trained;
        model = trained.Model;
        proto = trained.Proto;
    }

    /// <summary>Trains once per test class on the corpus dialogues and two short books (a few seconds).</summary>
    public sealed class TrainedOnce
    {
        public TrainedOnce()
        {
            Sentences = File.ReadAllLines(Fixtures.Path("corpus", "chat", "dialogues.txt"))
                .Concat(File.ReadAllLines(Fixtures.Path("corpus", "ja", "akutagawa_ryunosuke_rashomon.txt")))
                .Concat(File.ReadAllLines(Fixtures.Path("corpus", "en", "carroll_alices_adventures_in_wonderland.txt")).Take(400))
                .Where(line => line.Length > 0).ToList();
            Model = UnigramTrainer.Train(Sentences, new UnigramTrainerOptions { VocabSize = 1000, CharacterCoverage = 0.98, NumThreads = 2 });
            Proto = Model.ToModelProto();
        }

        public List<string> Sentences { get; }
        public UnigramModel Model { get; }
        public byte[] Proto { get; }
    }

    private static readonly string[] Samples =
    [
        "ユーザー: こんにちは。\nシステム: ",
        "ある日の暮方の事である。一人の下人が、羅生門の下で雨やみを待っていた。",
        "Alice was beginning to get very tired of sitting by her sister on the bank.",
        "  two  spaces\tand a tab\n\nand newlines  ",
        "ＡＢＣ ｶﾞ 123 ４５６",
    ];

    [Fact]
    public void LayoutMatchesRinnasBilingualTokenizer()
    {
        var fixture = File.ReadLines(Path.Combine(Fixtures.Tokenizer("bilingual-lookalike"), "vocab.jsonl"))
            .Select(line => JsonDocument.Parse(line).RootElement).Take(UnigramTrainer.FixedPieceCount).ToList();
        Assert.Equal(1000, model.Pieces.Count);
        for (int id = 0; id < fixture.Count; id++)
        {
            Assert.Equal(fixture[id].GetProperty("piece").GetString(), model.Pieces[id].Piece);
            Assert.Equal(fixture[id].GetProperty("type").GetString(), model.Pieces[id].Type switch
            {
                SentencePieceType.Control => "CONTROL",
                SentencePieceType.Unknown => "UNKNOWN",
                SentencePieceType.UserDefined => "USER_DEFINED",
                SentencePieceType.Byte => "BYTE",
                var other => other.ToString(),
            });
        }
        var normal = model.Pieces.Skip(UnigramTrainer.FixedPieceCount).ToList();
        Assert.All(normal, p => Assert.Equal(SentencePieceType.Normal, p.Type));
        Assert.DoesNotContain(normal, p => p.Piece.Contains('▁') || p.Piece.Contains(' ') || p.Piece.Contains('\n') || p.Piece.Contains('\t'));
        Assert.All(normal, p => Assert.True(p.Score < 0, $"{p.Piece} has score {p.Score}"));
        Assert.True(normal.Zip(normal.Skip(1)).All(pair => pair.First.Score >= pair.Second.Score), "pieces are not sorted by score");
        Assert.Equal(normal.Count, normal.Select(p => p.Piece).Distinct().Count());
        // A genuine Unigram vocabulary: frequent multi-character words were learnt, not just characters.
        Assert.Contains(normal, p => p.Piece == "the");
        Assert.Contains(normal, p => p.Piece == "システム");
        Assert.True(normal.Count(p => p.Piece.Length > 1) > 300, "too few multi-character pieces");
    }

    [Fact]
    public void ProtobufFieldsAreAsSpecified()
    {
        var fields = ReadMessage(proto);
        Assert.Equal(1000, fields.Count(f => f.Number == 1));
        var trainer = ReadMessage(fields.Single(f => f.Number == 2).Bytes!);
        long Varint(int number) => trainer.Single(f => f.Number == number).Varint;
        Assert.Equal(1, Varint(3));      // model_type UNIGRAM
        Assert.Equal(1000, Varint(4));   // vocab_size
        Assert.Equal(1, Varint(35));     // byte_fallback
        Assert.Equal(1, Varint(40));     // unk_id
        Assert.Equal(2, Varint(41));     // bos_id
        Assert.Equal(3, Varint(42));     // eos_id
        Assert.Equal(0, Varint(43));     // pad_id
        Assert.Equal(["▁", "\n", "\t"], trainer.Where(f => f.Number == 31).Select(f => f.Text));
        Assert.Equal(["[CLS]", "[SEP]", "[MASK]"], trainer.Where(f => f.Number == 30).Select(f => f.Text));
        var normalizer = ReadMessage(fields.Single(f => f.Number == 3).Bytes!);
        Assert.Equal("identity", normalizer.Single(f => f.Number == 1).Text);
        Assert.Equal(0, normalizer.Single(f => f.Number == 3).Varint);  // add_dummy_prefix
        Assert.Equal(0, normalizer.Single(f => f.Number == 4).Varint);  // remove_extra_whitespaces
        Assert.Equal(1, normalizer.Single(f => f.Number == 5).Varint);  // escape_whitespaces

        var first = ReadMessage(fields.First(f => f.Number == 1).Bytes!);
        Assert.Equal("[PAD]", first.Single(f => f.Number == 1).Text);
        Assert.Equal(3, first.Single(f => f.Number == 3).Varint);       // CONTROL
    }

    [Fact]
    public void ProductTokenizerLoadsTheSavedModelAndAgreesWithTheTrainer()
    {
        var directory = Directory.CreateTempSubdirectory("rinna-tok-").FullName;
        try
        {
            model.Save(directory);
            var tokenizer = AutoTokenizer.FromDirectory(directory);
            foreach (var text in Samples.Append("a𩸽😀Ωz"))
            {
                var ids = model.Encode(text);
                Assert.Equal(ids, tokenizer.Encode(text, addSpecialTokens: false));
                // HF's T5Tokenizer strips the decoded string; SentencePiece itself (model.Decode) returns it whole.
                Assert.Equal(text.Trim(), tokenizer.Decode(ids));
                Assert.Equal(text, model.Decode(ids));
            }
            Assert.Equal(UnigramModel.EosId, tokenizer.Encode("ユーザー: x", addSpecialTokens: true)[^1]);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void SpacesAreTokensOfTheirOwnAsInRinna()
    {
        var ids = model.Encode("Hello world");
        Assert.Contains(UnigramModel.SpaceId, ids);
        int space = Array.IndexOf(ids, UnigramModel.SpaceId);
        Assert.Equal("Hello", model.Decode(ids[..space]));
        Assert.Equal("world", model.Decode(ids[(space + 1)..]));
        Assert.Equal([UnigramModel.NewlineId, UnigramModel.TabId, UnigramModel.SpaceId, UnigramModel.SpaceId], model.Encode("\n\t  "));
    }

    [Fact]
    public void UnknownCharactersFallBackToUtf8Bytes()
    {
        const string rare = "𩸽😀Ω";
        var ids = model.Encode(rare);
        var expected = System.Text.Encoding.UTF8.GetBytes(rare).Select(b => UnigramModel.ByteOffset + b).ToArray();
        Assert.Equal(expected, ids);
        Assert.DoesNotContain(UnigramModel.UnkId, ids);
        Assert.Equal(rare, model.Decode(ids));
    }

    [Fact]
    public void TrainingTextRoundTripsExactly()
    {
        Assert.All(trained.Sentences, s => Assert.Equal(s, model.Decode(model.Encode(s))));
    }

    [Fact]
    public void HuggingFaceFilesHaveRinnasShape()
    {
        var directory = Directory.CreateTempSubdirectory("rinna-tok-").FullName;
        try
        {
            model.Save(directory);
            var fixture = Fixtures.Tokenizer("bilingual-lookalike");
            Assert.Equal(File.ReadAllText(Path.Combine(fixture, "tokenizer_config.json")).Trim(),
                File.ReadAllText(Path.Combine(directory, "tokenizer_config.json")).Trim());
            Assert.Equal(JsonSerializer.Serialize(JsonDocument.Parse(File.ReadAllText(Path.Combine(fixture, "special_tokens_map.json")))),
                JsonSerializer.Serialize(JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "special_tokens_map.json")))));
            Assert.Equal(proto, File.ReadAllBytes(Path.Combine(directory, "spiece.model")));
            Assert.Equal(3, Directory.GetFiles(directory).Length);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void TrainingIsDeterministic()
    {
        var sentences = File.ReadAllLines(Fixtures.Path("corpus", "chat", "dialogues.txt"));
        var options = new UnigramTrainerOptions { VocabSize = 800, CharacterCoverage = 0.95, NumThreads = 2 };
        Assert.Equal(UnigramTrainer.Train(sentences, options).ToModelProto(), UnigramTrainer.Train(sentences, options).ToModelProto());
    }

    [Fact]
    public void VocabularyTooSmallForTheCoveredCharactersIsRejected()
    {
        var sentences = File.ReadAllLines(Fixtures.Path("corpus", "chat", "dialogues.txt"));
        var error = Assert.Throws<ArgumentException>(() => UnigramTrainer.Train(sentences, new UnigramTrainerOptions { VocabSize = 400 }));
        Assert.Contains("CharacterCoverage", error.Message);
    }

    [Fact]
    public void EmptyTextIsRejected() =>
        Assert.Throws<ArgumentException>(() => UnigramTrainer.Train(["", " \n "], new UnigramTrainerOptions { VocabSize = 300 }));

    private sealed record Field(int Number, long Varint, byte[]? Bytes)
    {
        public string Text => System.Text.Encoding.UTF8.GetString(Bytes!);
    }

    private static List<Field> ReadMessage(byte[] bytes)
    {
        var input = new CodedInputStream(bytes);
        var fields = new List<Field>();
        for (uint tag; (tag = input.ReadTag()) != 0;)
        {
            int number = WireFormat.GetTagFieldNumber(tag);
            switch (WireFormat.GetTagWireType(tag))
            {
                case WireFormat.WireType.Varint: fields.Add(new(number, input.ReadInt64(), null)); break;
                case WireFormat.WireType.Fixed32: fields.Add(new(number, input.ReadFixed32(), null)); break;
                case WireFormat.WireType.LengthDelimited: fields.Add(new(number, 0, input.ReadBytes().ToByteArray())); break;
                default: throw new InvalidDataException($"unexpected wire type in field {number}");
            }
        }
        return fields;
    }
}
