using System.Text;
using System.Text.Json;
using Rinna.Net.Tokenization;
using static Rinna.Net.Tests.Tokenization.TokenizerFixtureCases;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>Every reference case of the three fixture models: SentencePiece ids, Hugging Face encode/decode, streaming.</summary>
public class SlowTokenizerFixtureTests
{
    public static TheoryData<string, string> EncodeCases => EncodeCaseIds();

    public static TheoryData<string, string> DecodeCases => DecodeCaseIds();

    [Theory]
    [MemberData(nameof(EncodeCases))]
    public void SentencePieceSegmentationMatchesTheCLibrary(string model, string caseId)
    {
        var c = EncodeCase(model, caseId);
        var tokenizer = Tokenizer(model);
        var ids = new List<int>();
        tokenizer.Model.Encode(c.GetProperty("text").GetString()!, ids);

        Assert.Equal(Ints(c.GetProperty("sp_ids")), ids);
        Assert.Equal(c.GetProperty("sp_decoded").GetString(), DecodeWithSentencePiece(tokenizer, ids));
    }

    [Theory]
    [MemberData(nameof(EncodeCases))]
    public void EncodeMatchesHuggingFace(string model, string caseId)
    {
        var c = EncodeCase(model, caseId);
        var hf = c.GetProperty("hf_derived");
        var tokenizer = Tokenizer(model);
        var text = c.GetProperty("text").GetString()!;

        Assert.Equal(Strings(hf.GetProperty("tokens")), tokenizer.Tokenize(text));
        Assert.Equal(Ints(hf.GetProperty("ids_add_special_tokens_false")), tokenizer.Encode(text, addSpecialTokens: false));
        Assert.Equal(Ints(hf.GetProperty("ids_add_special_tokens_true")), tokenizer.Encode(text));
        Assert.Equal(Ints(hf.GetProperty("ids_add_special_tokens_false")), tokenizer.ConvertTokensToIds(Strings(hf.GetProperty("tokens"))));
    }

    [Theory]
    [MemberData(nameof(EncodeCases))]
    public void DecodeAndStreamingDecodeMatchHuggingFace(string model, string caseId)
    {
        var hf = EncodeCase(model, caseId).GetProperty("hf_derived");
        var tokenizer = Tokenizer(model);
        var withoutSpecials = Ints(hf.GetProperty("ids_add_special_tokens_false"));
        var withSpecials = Ints(hf.GetProperty("ids_add_special_tokens_true"));

        AssertDecodes(tokenizer, withoutSpecials, false, hf.GetProperty("decode_of_ids_add_special_tokens_false").GetString()!);
        AssertDecodes(tokenizer, withSpecials, false, hf.GetProperty("decode_of_ids_add_special_tokens_true").GetString()!);
        AssertDecodes(tokenizer, withSpecials, true, hf.GetProperty("decode_of_ids_add_special_tokens_true_skip_special").GetString()!);
    }

    [Theory]
    [MemberData(nameof(DecodeCases))]
    public void DecodeCasesMatchHuggingFaceAndSentencePiece(string model, string caseId)
    {
        var c = DecodeCase(model, caseId);
        var tokenizer = Tokenizer(model);
        var ids = Ints(c.GetProperty("ids"));
        var hf = c.GetProperty("hf_derived");

        Assert.Equal(Strings(c.GetProperty("pieces")), tokenizer.ConvertIdsToTokens(ids));
        AssertDecodes(tokenizer, ids, false, hf.GetProperty("decode").GetString()!);
        AssertDecodes(tokenizer, ids, true, hf.GetProperty("decode_skip_special").GetString()!);
        if (c.GetProperty("sp_decoded").ValueKind == JsonValueKind.String)
            Assert.Equal(c.GetProperty("sp_decoded").GetString(), DecodeWithSentencePiece(tokenizer, ids));
    }

    private static string DecodeWithSentencePiece(SlowSentencePieceTokenizer tokenizer, IEnumerable<int> ids) =>
        tokenizer.Model.Decode(ids);

    /// <summary>Decode and the streaming decoder both give <paramref name="expected"/>; no streamed chunk splits a character.</summary>
    private static void AssertDecodes(PreTrainedTokenizer tokenizer, int[] ids, bool skipSpecialTokens, string expected)
    {
        Assert.Equal(expected, tokenizer.Decode(ids, skipSpecialTokens));

        var decoder = tokenizer.CreateStreamingDecoder(skipSpecialTokens);
        var streamed = new StringBuilder();
        foreach (var id in ids)
        {
            var chunk = decoder.Append(id);
            AssertWholeCharacters(chunk);
            // A chunk is final: it must be exactly the next part of the full decode.
            Assert.True(expected.AsSpan(streamed.Length).StartsWith(chunk, StringComparison.Ordinal),
                $"chunk '{chunk}' after '{streamed}' is not a prefix of the rest of '{expected}'");
            streamed.Append(chunk);
        }

        var rest = decoder.Flush();
        AssertWholeCharacters(rest);
        streamed.Append(rest);
        Assert.Equal(expected, streamed.ToString());
    }

    private static void AssertWholeCharacters(string chunk)
    {
        if (chunk.Length == 0) return;
        Assert.False(char.IsHighSurrogate(chunk[^1]), $"chunk '{chunk}' ends inside a surrogate pair");
        Assert.False(char.IsLowSurrogate(chunk[0]), $"chunk '{chunk}' starts inside a surrogate pair");
    }
}
