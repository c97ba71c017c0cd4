using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Rinna.Net.Tokenization;
using Rinna.Net.Tokenization.Fast;
using static Rinna.Net.Tests.Tokenization.FastTokenizerFixture;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>
/// The parts of Hugging Face's fast-tokenizer semantics the GPT-NeoX file does not exercise: added-token options,
/// normalizer sequences, add_prefix_space, post-processors, batching, and which tokenizer <c>UseFast</c> picks.
/// </summary>
public sealed class PreTrainedTokenizerFastBehaviourTests : IDisposable
{
    private static readonly Lazy<string> OriginalJson = new(() => File.ReadAllText(Path.Combine(FastTokenizerFixture.Directory, "tokenizer.json")));
    private readonly TempDirectory directory = Copy();

    public void Dispose() => directory.Dispose();

    private PreTrainedTokenizerFast Load(Action<JsonObject>? edit = null, string? config = null)
    {
        if (edit is not null)
        {
            var root = JsonNode.Parse(OriginalJson.Value)!.AsObject();
            edit(root);
            File.WriteAllText(directory.File("tokenizer.json"), root.ToJsonString());
        }

        if (config is not null) File.WriteAllText(directory.File("tokenizer_config.json"), config);
        return (PreTrainedTokenizerFast)AutoTokenizer.FromDirectory(directory.Path);
    }

    private static Action<JsonObject> AddToken(string content, bool special = true, bool lstrip = false, bool rstrip = false, bool singleWord = false, bool normalized = false) =>
        root => root["added_tokens"]!.AsArray().Add(new JsonObject
        {
            ["id"] = 50277, ["content"] = content, ["special"] = special, ["lstrip"] = lstrip, ["rstrip"] = rstrip,
            ["single_word"] = singleWord, ["normalized"] = normalized,
        });

    private static int Id(string token) => Tokenizer.ConvertTokensToIds([token])[0];

    [Fact]
    public void AddedTokenWithoutOptionsSplitsTheTextAsIs()
    {
        var t = Load(AddToken("<mask>"));
        Assert.Equal([Id("I"), Id("Ġsaw"), Id("Ġa"), Id("Ġ"), 50277, Id("Ġx")], t.Encode("I saw a <mask> x", false));
        Assert.Equal("I saw a <mask> x", t.Decode(t.Encode("I saw a <mask> x", false)));
        Assert.Equal("I saw a  x", t.Decode(t.Encode("I saw a <mask> x", false), skipSpecialTokens: true));
    }

    [Fact]
    public void LStripAndRStripTakeTheNeighbouringWhitespace()
    {
        var left = Load(AddToken("<mask>", lstrip: true));
        Assert.Equal([Id("I"), Id("Ġsaw"), Id("Ġa"), 50277, Id("Ġx")], left.Encode("I saw a \t <mask> x", false));
        var right = Load(AddToken("<mask>", rstrip: true));
        Assert.Equal([Id("I"), Id("Ġsaw"), Id("Ġa"), Id("Ġ"), 50277, Id("x")], right.Encode("I saw a <mask>   x", false));
        // The whitespace belongs to the token, so decoding gives back only its content.
        Assert.Equal("I saw a <mask>x", right.Decode(right.Encode("I saw a <mask>   x", false)));
    }

    [Fact]
    public void SingleWordTokensMatchOnlyBetweenNonWordCharacters()
    {
        var t = Load(AddToken("zqmask", special: false, singleWord: true));
        Assert.Contains(50277, t.Encode("a zqmask b", false));
        Assert.Contains(50277, t.Encode("zqmask, then", false));
        Assert.DoesNotContain(50277, t.Encode("unzqmasked", false));
        Assert.DoesNotContain(50277, t.Encode("zqmasks", false));
        Assert.DoesNotContain(50277, t.Encode("_zqmask", false));
        Assert.DoesNotContain(50277, t.Encode("zqmask\u0301", false));
    }

    [Fact]
    public void NormalizedTokensMatchTheNormalizedTextAndRawOnesTheOriginal()
    {
        Action<JsonObject> lowercase = root => root["normalizer"] = JsonNode.Parse("{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"Lowercase\"}]}");
        var normalized = Load(root => { lowercase(root); AddToken("<MASK>", special: false, normalized: true)(root); });
        Assert.Equal([Id("hello"), Id("Ġ"), 50277], normalized.Encode("HELLO <MaSk>", false));
        var raw = Load(root => { lowercase(root); AddToken("<MASK>", normalized: false)(root); });
        Assert.Equal([Id("hello"), Id("Ġ"), 50277], raw.Encode("HELLO <MASK>", false));
        Assert.DoesNotContain(50277, raw.Encode("HELLO <MaSk>", false));
    }

    [Fact]
    public void LeftmostLongestPrefersTheLongerAddedToken()
    {
        // GPT-NeoX's whitespace-run tokens: 24 spaces take the 24-space token, 25 take it plus one space token.
        Assert.Equal([50254], Tokenizer.Encode(new string(' ', 24), false));
        Assert.Equal([50254, Id("Ġ")], Tokenizer.Encode(new string(' ', 25), false));
        Assert.Equal([50254, 50276, Id("a")], Tokenizer.Encode(new string(' ', 26) + "a", false));
        Assert.Equal([0, 50276, Id("a")], Tokenizer.Encode("<|endoftext|>  a", false));
    }

    [Fact]
    public void AddPrefixSpaceComesFromTheConfigurationForGptNeoX()
    {
        var plain = Tokenizer.Encode("Hello world", false);
        Assert.Equal([Id("Hello"), Id("Ġworld")], plain);
        var prefixed = Load(config: "{\"tokenizer_class\": \"GPTNeoXTokenizer\", \"add_prefix_space\": true, \"eos_token\": \"<|endoftext|>\"}");
        Assert.True(prefixed.AddPrefixSpace);
        Assert.Equal([Id("ĠHello"), Id("Ġworld")], prefixed.Encode("Hello world", false));
        // Each stretch between added tokens gets its own prefix space, as in the Rust pipeline.
        Assert.Equal([Id("ĠHello"), 0, Id("Ġworld")], prefixed.Encode("Hello<|endoftext|>world", false));
        Assert.Equal(" Hello world", prefixed.Decode(prefixed.Encode("Hello world", false)));
        var fromJson = Load(root => root["pre_tokenizer"]!["add_prefix_space"] = true, "{\"eos_token\": \"<|endoftext|>\"}");
        Assert.Equal([Id("ĠHello"), Id("Ġworld")], fromJson.Encode("Hello world", false));
    }

    [Fact]
    public void TemplateProcessingAddsItsTokensOnlyWithSpecialTokens()
    {
        var t = Load(root => root["post_processor"] = JsonNode.Parse("""
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|unk|>", "type_id": 0}}],
             "pair": [], "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}, "<|unk|>": {"id": "<|unk|>", "ids": [1], "tokens": ["<|unk|>"]}}}
            """));
        var hello = Id("Hello");
        Assert.Equal([0, hello, 1], t.Encode("Hello"));
        Assert.Equal([hello], t.Encode("Hello", addSpecialTokens: false));
        Assert.Equal([0, 1], t.Encode(""));
        Assert.Equal("Hello", t.Decode(t.Encode("Hello"), skipSpecialTokens: true));
        var batch = t.BatchEncode(["Hello world"], maxLength: 3);
        Assert.Equal(new long[,] { { 0, hello, 1 } }, batch.InputIds);
        Assert.Throws<ArgumentOutOfRangeException>(() => t.BatchEncode(["Hello"], maxLength: 1));
    }

    [Theory]
    [InlineData("{\"type\": \"BertProcessing\", \"sep\": [\"<|unk|>\", 1], \"cls\": [\"<|endoftext|>\", 0]}")]
    [InlineData("{\"type\": \"Sequence\", \"processors\": [{\"type\": \"ByteLevel\", \"trim_offsets\": false}, {\"type\": \"RobertaProcessing\", \"sep\": [\"<|unk|>\", 1], \"cls\": [\"<|endoftext|>\", 0]}]}")]
    public void BertRobertaAndSequencePostProcessorsWrapTheSequence(string json)
    {
        var t = Load(root => root["post_processor"] = JsonNode.Parse(json));
        Assert.Equal([0, Id("Hello"), 1], t.Encode("Hello"));
    }

    [Fact]
    public void AddBosAndEosTokenRebuildTheGptNeoXPostProcessor()
    {
        var t = Load(config: "{\"tokenizer_class\": \"GPTNeoXTokenizer\", \"bos_token\": \"<|endoftext|>\", \"eos_token\": \"<|endoftext|>\", \"add_bos_token\": true, \"add_eos_token\": true}");
        Assert.Equal([0, Id("Hello"), 0], t.Encode("Hello"));
        Assert.Equal([Id("Hello")], t.Encode("Hello", false));
    }

    [Fact]
    public void ConfiguredSpecialTokensMissingFromTheFileAreAddedAfterTheVocabulary()
    {
        var t = Load(config: "{\"eos_token\": \"<|endoftext|>\", \"pad_token\": \"<|pad|>\", \"additional_special_tokens\": [\"<|im_end|>\"]}");
        Assert.Equal(50277, t.PadTokenId);
        Assert.Equal(50278, t.ConvertTokensToIds(["<|im_end|>"])[0]);
        Assert.Equal(50279, t.Count);
        Assert.Equal([Id("a"), 50278, 50277], t.Encode("a<|im_end|><|pad|>", false));
        Assert.Equal("a", t.Decode([Id("a"), 50278, 50277], skipSpecialTokens: true));
    }

    [Fact]
    public void BatchEncodePadsTruncatesAndMasks()
    {
        Assert.Throws<InvalidOperationException>(() => Tokenizer.BatchEncode(["Hello world", "Hi"]));
        var t = Load(config: "{\"tokenizer_class\": \"GPTNeoXTokenizer\", \"eos_token\": \"<|endoftext|>\", \"pad_token\": \"<|endoftext|>\", \"padding_side\": \"left\"}");
        var (hello, world, hi) = (Id("Hello"), Id("Ġworld"), Id("Hi"));
        var left = t.BatchEncode(["Hello world", "Hi"]);
        Assert.Equal(new long[,] { { hello, world }, { 0, hi } }, left.InputIds);
        Assert.Equal(new long[,] { { 1, 1 }, { 0, 1 } }, left.AttentionMask);
        var right = t.BatchEncode(["Hello world", "Hi"], paddingSide: PaddingSide.Right);
        Assert.Equal(new long[,] { { hello, world }, { hi, 0 } }, right.InputIds);
        Assert.Equal(new long[,] { { 1, 1 }, { 1, 0 } }, right.AttentionMask);
        var truncated = t.BatchEncode(["Hello world", "Hi"], maxLength: 1);
        Assert.Equal(new long[,] { { hello }, { hi } }, truncated.InputIds);
        Assert.Equal(new long[,] { { 1 }, { 1 } }, truncated.AttentionMask);
    }

    [Fact]
    public void UseFastPicksTheTokenizerJsonAndFalsePicksSentencePiece()
    {
        foreach (var file in System.IO.Directory.GetFiles(Fixtures.Tokenizer("bilingual-lookalike")).Where(f => Path.GetFileName(f) is "spiece.model"))
            File.Copy(file, directory.File(Path.GetFileName(file)));
        File.WriteAllText(directory.File("tokenizer_config.json"), "{\"tokenizer_class\": \"T5Tokenizer\", \"eos_token\": \"</s>\", \"unk_token\": \"[UNK]\"}");
        var logs = new CollectingLoggerFactory();
        Assert.IsType<PreTrainedTokenizerFast>(AutoTokenizer.FromDirectory(directory.Path, new TokenizerOptions { LoggerFactory = logs }));
        Assert.IsType<T5Tokenizer>(AutoTokenizer.FromDirectory(directory.Path, new TokenizerOptions { UseFast = false, LoggerFactory = logs }));
        Assert.Empty(logs.Messages);
    }

    [Fact]
    public void UseFastFalseWithOnlyTokenizerJsonUsesItWithANote()
    {
        var logs = new CollectingLoggerFactory();
        Assert.IsType<PreTrainedTokenizerFast>(AutoTokenizer.FromDirectory(directory.Path, new TokenizerOptions { UseFast = false, LoggerFactory = logs }));
        Assert.Contains(logs.Messages, m => m.Level == LogLevel.Warning && m.Text.Contains("fast tokenizer from tokenizer.json"));
        logs = new CollectingLoggerFactory();
        AutoTokenizer.FromDirectory(directory.Path, new TokenizerOptions { LoggerFactory = logs });
        Assert.Empty(logs.Messages);
    }

    [Fact]
    public void WithoutAPreTokenizerOrDecoderTheModelSeesTheTextAndTokensJoinWithSpaces()
    {
        var t = Load(root =>
        {
            root["pre_tokenizer"] = null;
            root["decoder"] = null;
        });
        // The raw space is not in the byte-level vocabulary and, without an unknown token, is dropped before merging.
        Assert.Equal([Id("abc")], t.Encode("ab c", false));
        Assert.Equal("a b", t.Decode([Id("a"), Id("b")]));
        Assert.Equal("a b", string.Concat(new[] { Id("a"), Id("b") }.Select(t.CreateStreamingDecoder().Append)));
    }

    [Fact]
    public void APairListedTwiceTakesItsLastRank()
    {
        // "Ġ t" is the second merge; listed again at the end, " the" can no longer start with "Ġt".
        var t = Load(root => root["model"]!["merges"]!.AsArray().Add("Ġ t"));
        Assert.False(t.Definition.Model.UsesMLTokenizers);
        Assert.Equal(Tokenizer.Encode("Hello world", false), t.Encode("Hello world", false));
        Assert.NotEqual(Tokenizer.Encode(" the", false), t.Encode(" the", false));
    }

    [Fact]
    public void UnknownTokenStringsNeedAnUnknownToken()
    {
        var t = Load(config: "{\"eos_token\": \"<|endoftext|>\"}");
        Assert.Null(t.UnkTokenId);
        Assert.Equal([Id("Hello"), 50276], t.ConvertTokensToIds(["Hello", "  "]));
        Assert.Throws<ArgumentException>(() => t.ConvertTokensToIds(["no such token"]));
    }

    [Fact]
    public void CleanUpDefaultsToTransformers436()
    {
        Assert.True(Load(config: "{\"eos_token\": \"<|endoftext|>\"}").CleanUpTokenizationSpaces);
        Assert.Equal("Hello, world.", Load(config: "{}").Decode(Tokenizer.Encode("Hello , world .", false)));
    }

    /// <summary>On text without supplementary-plane characters .NET's regex classes are the code-point ones, so it is an exact oracle.</summary>
    [Fact]
    public void PreTokenizerSplitsAsTheGpt2PatternOnBmpText()
    {
        var pattern = new Regex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+");
        const string alphabet = "aZé吾はカ1２³Ⅻ '\"sStrvelmd.,!?-_\t\n\r\u3000\u00a0\u0085\u2028\u200b\u0301\u001c\ufeff";
        var random = new Random(20);
        var pre = new ByteLevelPreTokenizer(addPrefixSpace: false, useRegex: true);
        for (var n = 0; n < 3000; n++)
        {
            var text = new string(Enumerable.Range(0, random.Next(1, 24)).Select(_ => alphabet[random.Next(alphabet.Length)]).ToArray());
            var words = new List<string>();
            long work = 0;
            pre.Split(text, words, ref work);
            Assert.Equal(pattern.Matches(text).Select(m => m.Value), words);
        }
    }

    [Fact]
    public void SupplementaryLettersAreLettersForThePreTokenizer()
    {
        var words = new List<string>();
        long work = 0;
        new ByteLevelPreTokenizer(false, true).Split("𠮷野家 a😀b", words, ref work);
        Assert.Equal(["𠮷野家", " a", "😀", "b"], words);
    }
}
