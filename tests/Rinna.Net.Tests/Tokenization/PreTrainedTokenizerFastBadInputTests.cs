using System.Text.Json.Nodes;
using Rinna.Net.Tokenization;
using static Rinna.Net.Tests.Tokenization.FastTokenizerFixture;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>Malformed, truncated or unsupported <c>tokenizer.json</c> files and bad ids give a <see cref="TokenizerException"/> naming the file and reason.</summary>
public sealed class PreTrainedTokenizerFastBadInputTests : IDisposable
{
    private static readonly Lazy<string> OriginalJson = new(() => File.ReadAllText(Path.Combine(FastTokenizerFixture.Directory, "tokenizer.json")));
    private readonly TempDirectory directory = Copy();

    public void Dispose() => directory.Dispose();

    private string JsonFile => directory.File("tokenizer.json");

    private TokenizerException LoadFails()
    {
        var e = Assert.Throws<TokenizerException>(() => AutoTokenizer.FromDirectory(directory.Path));
        Assert.Equal(JsonFile, e.File);
        return e;
    }

    private void Edit(Action<JsonObject> edit)
    {
        var root = JsonNode.Parse(OriginalJson.Value)!.AsObject();
        edit(root);
        File.WriteAllText(JsonFile, root.ToJsonString());
    }

    [Fact]
    public void TheCopyLoads() => Assert.IsType<PreTrainedTokenizerFast>(AutoTokenizer.FromDirectory(directory.Path));

    [Theory]
    [InlineData("{not json")]
    [InlineData("[1, 2]")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"added_tokens\": [")]
    public void MalformedJsonIsRejected(string text)
    {
        File.WriteAllText(JsonFile, text);
        var e = LoadFails();
        Assert.True(e.Message.Contains("invalid JSON") || e.Message.Contains("expected a JSON object"), e.Message);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(5_000)]
    [InlineData(1_000_000)]
    [InlineData(2_467_000)]
    public void TruncatedFileIsRejected(int length)
    {
        var bytes = File.ReadAllBytes(JsonFile);
        File.WriteAllBytes(JsonFile, bytes[..length]);
        Assert.Contains("invalid JSON", LoadFails().Message);
    }

    [Fact]
    public void EmptyFileIsRejected()
    {
        File.WriteAllBytes(JsonFile, []);
        Assert.Contains("empty or not a regular file", LoadFails().Message);
    }

    [Fact]
    public void DeviceBehindALinkIsRefusedUnread()
    {
        File.Delete(JsonFile);
        File.CreateSymbolicLink(JsonFile, "/dev/zero");
        Assert.Contains("not a regular file", LoadFails().Message);
    }

    [Fact]
    public void FileAboveTheSizeLimitIsRefusedUnread()
    {
        using (var stream = new FileStream(JsonFile, FileMode.Create)) stream.SetLength((64L << 20) + 1); // sparse: no disk use
        Assert.Contains("64 MiB limit", LoadFails().Message);
    }

    [Theory]
    [InlineData("WordPiece")]
    [InlineData("Unigram")]
    [InlineData("WordLevel")]
    public void UnknownModelTypeIsNamed(string type)
    {
        Edit(root => root["model"]!["type"] = type);
        var e = LoadFails();
        Assert.Equal("model.type", e.Field);
        Assert.Contains($"'{type}'", e.Message);
    }

    [Fact]
    public void UnknownNormalizerIsNamedEvenInsideASequence()
    {
        Edit(root => root["normalizer"] = JsonNode.Parse("{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"BertNormalizer\"}]}"));
        var e = LoadFails();
        Assert.Equal("normalizer.normalizers[1]", e.Field);
        Assert.Contains("'BertNormalizer'", e.Message);
    }

    [Theory]
    [InlineData("pre_tokenizer", "{\"type\": \"Metaspace\", \"replacement\": \"▁\"}", "'Metaspace'")]
    [InlineData("pre_tokenizer", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\"}, {\"type\": \"ByteLevel\"}]}", "Digits, ByteLevel")]
    [InlineData("post_processor", "{\"type\": \"Mystery\"}", "'Mystery'")]
    [InlineData("decoder", "{\"type\": \"WordPiece\"}", "'WordPiece'")]
    [InlineData("normalizer", "{\"type\": \"Replace\", \"pattern\": {\"Regex\": \"\\\\s+\"}, \"content\": \" \"}", "Regex")]
    [InlineData("normalizer", "{\"no_type\": 1}", "no 'type'")]
    public void UnknownComponentsAreNamed(string component, string json, string expected)
    {
        Edit(root => root[component] = JsonNode.Parse(json));
        var e = LoadFails();
        Assert.StartsWith(component, e.Field);
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("Ġ zzzz-not-a-piece", "'zzzz-not-a-piece', which is not in the vocabulary")]
    [InlineData("Ġt he", "makes 'Ġthe', which is not in the vocabulary")]
    [InlineData("a b c", "not two pieces")]
    public void MergesNamingPiecesOutsideTheVocabularyAreRejected(string merge, string expected)
    {
        Edit(root =>
        {
            if (expected.Contains("Ġthe")) root["model"]!["vocab"]!.AsObject().Remove("Ġthe");
            root["model"]!["merges"]!.AsArray().Add(merge);
        });
        var e = LoadFails();
        Assert.StartsWith("model.merges", e.Field);
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(1 << 30)]
    public void VocabularyIdsOutOfRangeAreRejected(int id)
    {
        Edit(root => root["model"]!["vocab"]!["Ġthe"] = id);
        Assert.Contains("is not a token id", LoadFails().Message);
    }

    [Fact]
    public void AddedTokenContradictingTheVocabularyIsRejected()
    {
        Edit(root => root["added_tokens"]!.AsArray().Add(JsonNode.Parse("{\"id\": 50300, \"content\": \"Ġthe\", \"special\": false}")));
        Assert.Contains("vocabulary has it at", LoadFails().Message);
    }

    [Fact]
    public void TemplateNamingAnUndefinedSpecialTokenIsRejected()
    {
        Edit(root => root["post_processor"] = JsonNode.Parse(
            "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [], \"special_tokens\": {}}"));
        var e = LoadFails();
        Assert.Equal("post_processor.single[0]", e.Field);
        Assert.Contains("'<s>' is not defined", e.Message);
    }

    [Fact]
    public void MissingModelIsNamed()
    {
        Edit(root => root.Remove("model"));
        Assert.Equal("model", LoadFails().Field);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(50277)]
    [InlineData(int.MaxValue)]
    public void IdsOutsideTheVocabularyAreRejected(int id)
    {
        var tokenizer = Tokenizer;
        Assert.Contains($"token id {id}", Assert.Throws<TokenizerException>(() => tokenizer.Decode([12092, id])).Message);
        Assert.Throws<TokenizerException>(() => tokenizer.Decode([id], skipSpecialTokens: true));
        Assert.Throws<TokenizerException>(() => tokenizer.ConvertIdsToTokens([id]));
        Assert.Throws<TokenizerException>(() => tokenizer.CreateStreamingDecoder().Append(id));
    }

    [Fact]
    public void UnpairedSurrogatesAreRejected()
    {
        Assert.Throws<ArgumentException>(() => Tokenizer.Encode("a\uD800b"));
        Assert.Throws<ArgumentException>(() => Tokenizer.Tokenize("\uDC00"));
        Assert.Equal(Tokenizer.Encode("😀"), Tokenizer.Encode("\uD83D\uDE00"));
    }
}
