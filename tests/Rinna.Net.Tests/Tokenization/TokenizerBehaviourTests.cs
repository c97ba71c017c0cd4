using System.Diagnostics;
using System.Text;
using Rinna.Net.Native;
using Rinna.Net.Tokenization;
using TorchSharp;
using static Rinna.Net.Tests.Tokenization.TokenizerFixtureCases;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>Batching, streaming and scaling behaviour beyond the per-case fixtures.</summary>
public class TokenizerBehaviourTests
{
    [Fact]
    public void SpecialTokenPropertiesComeFromTheConfiguration()
    {
        var rinna = Tokenizer("bilingual-lookalike");
        Assert.IsType<T5Tokenizer>(rinna);
        Assert.Equal((2, 3, 0, 1), (rinna.BosTokenId, rinna.EosTokenId, rinna.PadTokenId, rinna.UnkTokenId));
        Assert.Equal(("<s>", "</s>", "[PAD]", "[UNK]"), (rinna.BosToken, rinna.EosToken, rinna.PadToken, rinna.UnkToken));
        Assert.Equal((4, 5, 6), (rinna.ClsTokenId, rinna.SepTokenId, rinna.MaskTokenId));
        Assert.Equal(["<s>", "</s>", "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"], rinna.AllSpecialTokens);
        Assert.Equal(1000, rinna.VocabSize);

        var llama = Tokenizer("llama-style-bpe");
        Assert.IsType<LlamaTokenizer>(llama);
        Assert.Equal((1, 2, null, 0), (llama.BosTokenId, llama.EosTokenId, llama.PadTokenId, llama.UnkTokenId));
        Assert.Equal(4096, llama.ModelMaxLength);
    }

    [Fact]
    public void OptionsOverrideTheConfiguredPaddingSideAndMaxLength()
    {
        var directory = Fixtures.Tokenizer("llama-style-bpe");
        var configured = AutoTokenizer.FromDirectory(directory, new TokenizerOptions { UseFast = false });
        Assert.Equal((PaddingSide.Right, 4096), (configured.PaddingSide, configured.ModelMaxLength));
        Assert.Equal(int.MaxValue, Tokenizer("bilingual-lookalike").ModelMaxLength);

        var overridden = AutoTokenizer.FromDirectory(directory, new TokenizerOptions { UseFast = false, PaddingSide = PaddingSide.Left, ModelMaxLength = 128 });
        Assert.Equal((PaddingSide.Left, 128), (overridden.PaddingSide, overridden.ModelMaxLength));
    }

    [Fact]
    public void BatchEncodePadsOnTheRequestedSideWithMasks()
    {
        var tokenizer = Tokenizer("bilingual-lookalike");
        var texts = new[] { "吾輩は猫である", "Hello" };
        var first = tokenizer.Encode(texts[0], addSpecialTokens: false);
        var second = tokenizer.Encode(texts[1], addSpecialTokens: false);
        Assert.True(first.Length > second.Length);

        var left = tokenizer.BatchEncode(texts, addSpecialTokens: false, paddingSide: PaddingSide.Left);
        Assert.Equal((2, first.Length), (left.BatchSize, left.SequenceLength));
        var pad = first.Length - second.Length;
        Assert.Equal(first.Select(i => (long)i), Row(left.InputIds, 0));
        Assert.Equal(Enumerable.Repeat(0L, pad).Concat(second.Select(i => (long)i)), Row(left.InputIds, 1));
        Assert.Equal(Enumerable.Repeat(0L, pad).Concat(Enumerable.Repeat(1L, second.Length)), Row(left.AttentionMask, 1));
        Assert.All(Row(left.AttentionMask, 0), m => Assert.Equal(1L, m));

        var right = tokenizer.BatchEncode(texts, addSpecialTokens: false, paddingSide: PaddingSide.Right);
        Assert.Equal(second.Select(i => (long)i).Concat(Enumerable.Repeat(0L, pad)), Row(right.InputIds, 1));
        Assert.Equal(Enumerable.Repeat(1L, second.Length).Concat(Enumerable.Repeat(0L, pad)), Row(right.AttentionMask, 1));
    }

    [Fact]
    public void BatchEncodeTruncatesAndKeepsTheEndOfSequenceToken()
    {
        var tokenizer = Tokenizer("bilingual-lookalike");
        var full = tokenizer.Encode("吾輩は猫である", addSpecialTokens: false);
        var batch = tokenizer.BatchEncode(["吾輩は猫である"], maxLength: 4);
        Assert.Equal(full.Take(3).Append(3).Select(i => (long)i), Row(batch.InputIds, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.BatchEncode(["x"], maxLength: 0));
    }

    [Fact]
    public void BatchEncodeWithoutPadTokenFailsOnlyWhenPaddingIsNeeded()
    {
        var llama = Tokenizer("llama-style-bpe");
        Assert.Equal(2, llama.BatchEncode(["abc", "abc"]).BatchSize);
        Assert.Throws<InvalidOperationException>(() => llama.BatchEncode(["a", "a much longer text"]));
    }

    [Fact]
    public void BatchEncodingConvertsToInt64Tensors()
    {
        TorchSharpNativeLoader.EnsureInstalled();
        var batch = Tokenizer("bilingual-lookalike").BatchEncode(["吾輩は猫である", "Hello"], paddingSide: PaddingSide.Left);
        using var ids = batch.InputIdsTensor();
        using var mask = batch.AttentionMaskTensor();
        Assert.Equal(torch.ScalarType.Int64, ids.dtype);
        Assert.Equal(new long[] { 2, batch.SequenceLength }, ids.shape);
        Assert.Equal(batch.InputIds[1, batch.SequenceLength - 1], ids[1, -1].item<long>());
        Assert.Equal(Row(batch.AttentionMask, 1).Sum(), mask[1].sum().item<long>());
    }

    [Fact]
    public void ByteFallbackCharacterStreamsWholeOnItsLastByte()
    {
        var tokenizer = Tokenizer("bilingual-lookalike");
        var ids = tokenizer.Encode("吾", addSpecialTokens: false);
        Assert.Equal([239, 154, 200], ids);
        var decoder = tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        Assert.Equal(["", "", "吾"], ids.Select(decoder.Append));
        Assert.Equal("", decoder.Flush());
    }

    [Theory]
    [InlineData("bilingual-lookalike")]
    [InlineData("ja-3.6b-lookalike")]
    [InlineData("llama-style-bpe")]
    public void StreamingEmitsTextBeforeTheEnd(string model)
    {
        var tokenizer = Tokenizer(model);
        var text = EncodeCase(model, "prompt-001").GetProperty("text").GetString()! + " 吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。";
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        var decoder = tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        var beforeFlush = string.Concat(ids.Select(decoder.Append));
        var all = beforeFlush + decoder.Flush();
        Assert.Equal(tokenizer.Decode(ids, skipSpecialTokens: true), all);
        Assert.True(beforeFlush.Length >= all.Length - 2, $"only {beforeFlush.Length} of {all.Length} characters streamed before Flush");
    }

    [Theory]
    [InlineData("bilingual-lookalike")]
    [InlineData("ja-3.6b-lookalike")]
    [InlineData("llama-style-bpe")]
    public void StreamingEqualsDecodeOnRandomIdSequences(string model)
    {
        var tokenizer = Tokenizer(model);
        var random = new Random(20261127);
        // Bias towards the ids with special decoding rules: specials, user-defined, bytes, unknown.
        var interesting = Enumerable.Range(0, 300).ToArray();
        var decoder = tokenizer.CreateStreamingDecoder();
        var skippingDecoder = tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        for (var round = 0; round < 300; round++)
        {
            var ids = Enumerable.Range(0, random.Next(0, 25))
                .Select(_ => random.Next(3) == 0 ? random.Next(tokenizer.VocabSize) : interesting[random.Next(interesting.Length)])
                .ToArray();
            foreach (var (d, skip) in new[] { (decoder, false), (skippingDecoder, true) })
            {
                var streamed = new StringBuilder();
                foreach (var id in ids) streamed.Append(d.Append(id));
                streamed.Append(d.Flush());
                Assert.True(tokenizer.Decode(ids, skip) == streamed.ToString(),
                    $"ids [{string.Join(", ", ids)}] skip={skip}: decode '{tokenizer.Decode(ids, skip)}' streamed '{streamed}'");
            }
        }
    }

    private static long[] Row(long[,] matrix, int row) =>
        Enumerable.Range(0, matrix.GetLength(1)).Select(col => matrix[row, col]).ToArray();
}
