using Rinna.Net.Model;
using Rinna.Net.Native;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Tests.Model;

public class DecodeAttentionTests
{
    public DecodeAttentionTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<int, int, int, int, bool> Cases => new()
    {
        // batch, heads, keys, head size, bfloat16 values: one key, odd sizes, rinna-4b's 22 × 128, a batch of two.
        { 1, 1, 1, 8, false }, { 1, 3, 5, 7, true }, { 1, 22, 97, 128, true }, { 2, 4, 33, 80, true },
        { 1, 2, 300, 19, false }, { 2, 8, 64, 64, false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesLibTorchsScaledDotProductAttentionOnCacheViews(int batch, int heads, int keys, int headSize, bool bfloat16Values)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(batch * 1000 + heads * 100 + keys + headSize));
        // As in the model: q is one slot of an interleaved [.., 2, d] tensor, and the cache is a narrowed view of a larger store.
        var query = randn(new long[] { batch, heads, 1, 2, headSize }, generator: gen).select(3, 0);
        var keyStore = randn(batch, heads, keys + 11, headSize, generator: gen).mul(2);
        var valueDType = bfloat16Values ? ScalarType.BFloat16 : ScalarType.Float32;
        var valueStore = randn(batch, heads, keys + 11, headSize, generator: gen).to(valueDType);
        var key = keyStore.narrow(2, 0, keys);
        var value = valueStore.narrow(2, 0, keys);

        Assert.True(DecodeAttention.TryAttend(query, key, value, out var actual));

        var expected = F.scaled_dot_product_attention(query, key, value.to(ScalarType.Float32))
            .permute(0, 2, 1, 3).reshape(batch, 1, heads * headSize);
        Assert.Equal(valueDType, actual.dtype);
        Assert.Equal(new long[] { batch, 1, heads * headSize }, actual.shape);
        if (bfloat16Values)
        {
            // One bfloat16 rounding of values of order one, after float32 arithmetic in a different order.
            var difference = (actual.to(ScalarType.Float32) - expected).abs() - expected.abs().mul(Math.Pow(2, -8)) - 1e-5;
            Assert.True(difference.max().item<float>() <= 0, $"beyond one bfloat16 rounding by {difference.max().item<float>()}");
        }
        else
        {
            var error = (actual - expected).abs().max().item<float>();
            Assert.True(error < 2e-6f, $"max abs difference {error}");
        }
    }

    [Fact]
    public void LeavesOtherShapesAndDTypesToLibTorch()
    {
        using var scope = NewDisposeScope();
        var query = randn(1, 2, 1, 8);
        var key = randn(1, 2, 5, 8);
        Assert.False(DecodeAttention.TryAttend(randn(1, 2, 3, 8), randn(1, 2, 5, 8), randn(1, 2, 5, 8), out _)); // three queries
        Assert.False(DecodeAttention.TryAttend(query, key, randn(1, 2, 5, 8).to(ScalarType.Float16), out _));
        Assert.False(DecodeAttention.TryAttend(query.to(ScalarType.BFloat16), key, randn(1, 2, 5, 8), out _));
        Assert.False(DecodeAttention.TryAttend(query, key, randn(1, 2, 6, 8), out _));
        Assert.False(DecodeAttention.TryAttend(query, randn(1, 2, 8, 5).transpose(2, 3), randn(1, 2, 5, 8), out _)); // rows not contiguous
        Assert.False(DecodeAttention.TryAttend(query, randn(1, 2, 0, 8), randn(1, 2, 0, 8), out _));
        Assert.False(DecodeAttention.TryAttend(randn(1, 2, 1, 8), randn(1, 2, DecodeAttention.MaxKeys + 1, 8), randn(1, 2, DecodeAttention.MaxKeys + 1, 8), out _));
    }
}
