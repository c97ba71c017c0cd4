using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model;
using Rinna.Net.Model.Attention;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Kernels.Cpu;

public class ChunkAttentionTests
{
    public ChunkAttentionTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<string, int, int, int, int, int, int, bool> Cases()
    {
        // batch, heads, cached positions, new tokens, head size, rotary dims, bfloat16: a chat turn on rinna-4b's 22 × 128
        // after more than one key block of history, odd sizes with a head size that is no whole vector, pythia's 25 %
        // rotation, no rotation, a batch of two, a block of queries exactly full, several blocks of queries, one cached position.
        var data = new TheoryData<string, int, int, int, int, int, int, bool>();
        foreach (var variant in Enum.GetNames<ChunkAttentionVariant>())
        {
            data.Add(variant, 1, 22, 300, 41, 128, 128, false);
            data.Add(variant, 1, 3, 5, 7, 19, 4, true);
            data.Add(variant, 2, 4, 33, 9, 80, 20, true);
            data.Add(variant, 1, 2, 130, 48, 64, 0, false);
            data.Add(variant, 1, 2, 1, 100, 16, 16, false);
            data.Add(variant, 2, 3, 129, 2, 8, 8, true);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EqualsTheOperatorPathOfRotationCacheWriteAndCausalAttention(string variant, int batch, int heads, int past, int tokens,
        int headSize, int rotaryDims, bool bfloat16)
    {
        SkipUnlessAccelerated(variant);
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(batch * 1000 + heads * 100 + past + tokens + headSize));
        var dtype = bfloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
        var projected = randn(batch, tokens, heads * 3L * headSize, generator: gen).mul(2).to(dtype);
        var angles = rand(batch, 1, tokens, rotaryDims, generator: gen).mul(50);
        var (cos, sin) = (angles.cos(), angles.sin());
        var pastKeys = randn(batch, heads, past, headSize, generator: gen).mul(2);
        var pastValues = randn(batch, heads, past, headSize, generator: gen).to(dtype);
        using var expectedCache = new KeyValueCache(1, past + tokens);
        using var actualCache = new KeyValueCache(1, past + tokens + 5);
        foreach (var cache in new[] { expectedCache, actualCache }) cache.Write(0, pastKeys, pastValues, 0);

        var (keyStore, valueStore) = actualCache.Storage(0, batch, heads, headSize, ScalarType.Float32, dtype, projected.device, past, past + tokens);
        Assert.True(ChunkAttention.TryStep(projected, cos, sin, keyStore, valueStore, past, headSize, rotaryDims,
            Enum.Parse<ChunkAttentionVariant>(variant), out var actual));

        // HF's order: split the heads, rotate q and k in float32, append to the cache, then the explicit causal form.
        var qkv = projected.view(batch, tokens, heads, 3 * headSize).permute(0, 2, 1, 3);
        var query = DecodeAttentionTests.Rotate(qkv.narrow(-1, 0, headSize), cos, sin, rotaryDims);
        var key = DecodeAttentionTests.Rotate(qkv.narrow(-1, headSize, headSize), cos, sin, rotaryDims);
        var (keys, values) = expectedCache.Write(0, key, qkv.narrow(-1, 2 * headSize, headSize).contiguous(), past);
        var scores = matmul(query, keys.transpose(-1, -2)).mul(1.0 / Math.Sqrt(headSize));
        var allowed = ones(tokens, past + tokens, ScalarType.Bool).tril(past);
        var expected = matmul(scores.masked_fill(allowed.logical_not(), float.NegativeInfinity).softmax(-1), values.to(ScalarType.Float32))
            .permute(0, 2, 1, 3).reshape(batch, tokens, heads * headSize);

        // The cache holds exactly what the operator path stores, the new positions included.
        Assert.Equal(keys.contiguous().bytes.ToArray(), keyStore.narrow(2, 0, past + tokens).contiguous().bytes.ToArray());
        Assert.Equal(values.contiguous().bytes.ToArray(), valueStore.narrow(2, 0, past + tokens).contiguous().bytes.ToArray());
        Assert.Equal(dtype, actual.dtype);
        Assert.Equal(new long[] { batch, tokens, heads * headSize }, actual.shape);
        if (bfloat16)
        {
            // One bfloat16 rounding of values of order one, after float32 arithmetic in a different order.
            var difference = (actual.to(ScalarType.Float32) - expected).abs() - expected.abs().mul(Math.Pow(2, -8)) - 1e-5;
            Assert.True(difference.max().item<float>() <= 0, $"beyond one bfloat16 rounding by {difference.max().item<float>()}");
        }
        else
        {
            // Float32 sums of up to 1,400 terms in another order than libtorch's: a few units in the last place of values of order one.
            var error = (actual - expected).abs().max().item<float>();
            Assert.True(error < 1e-5f, $"max abs difference {error}");
        }
    }

    [Fact]
    public void ALaterTokenSeesTheEarlierTokensOfItsChunkAndNoLaterOne()
    {
        // Keys chosen so each new token's attention lands on one position: a wrong mask moves the answer by whole values.
        SkipUnlessAccelerated(nameof(ChunkAttentionVariant.Vector128));
        using var scope = NewDisposeScope();
        const int Past = 3, Tokens = 5, HeadSize = 8;
        var projected = zeros(1, Tokens, 3 * HeadSize);
        for (int t = 0; t < Tokens; t++)
        {
            projected[0, t, 0] = tensor(40f);               // every query looks along element 0
            projected[0, t, HeadSize] = tensor(40f + t);    // later keys score higher
            projected[0, t, 2 * HeadSize] = tensor(t + 1f); // the value names its token
        }
        var (cos, sin) = (ones(1, 1, Tokens, 0), zeros(1, 1, Tokens, 0));
        var (keys, values) = (zeros(1, 1, Past + Tokens, HeadSize), zeros(1, 1, Past + Tokens, HeadSize));
        Assert.True(ChunkAttention.TryStep(projected, cos, sin, keys, values, Past, HeadSize, 0, ChunkAttentionVariant.Vector128, out var context));
        for (int t = 0; t < Tokens; t++)
            Assert.Equal(t + 1f, context[0, t, 0].item<float>(), 3);
    }

    [Fact]
    public void RefusesOtherInputsWithoutTouchingTheCache()
    {
        using var scope = NewDisposeScope();
        var variant = ChunkAttentionVariant.Vector128;
        var projected = randn(1, 2, 2 * 3 * 8);
        var (cos, sin) = (ones(1, 1, 2, 8), zeros(1, 1, 2, 8));
        var (keys, values) = (zeros(1, 2, 6, 8), zeros(1, 2, 6, 8));
        bool Step(Tensor p, Tensor c, Tensor s, int past = 1, int rotary = 8, Tensor? k = null, Tensor? v = null) =>
            ChunkAttention.TryStep(p, c, s, k ?? keys, v ?? values, past, 8, rotary, variant, out _);
        Assert.False(Step(randn(1, 1, 2 * 3 * 8), ones(1, 1, 1, 8), zeros(1, 1, 1, 8))); // one token: the decode kernel's
        Assert.False(Step(projected.to(ScalarType.Float16), cos, sin));
        Assert.False(Step(randn(1, 2, 2 * 3 * 8 + 1), cos, sin)); // not whole heads
        Assert.False(Step(randn(1, 2, 96, 2).select(3, 0), cos, sin)); // strided
        Assert.False(Step(projected, cos.to(ScalarType.BFloat16), sin));
        Assert.False(Step(projected, ones(1, 1, 2, 4), sin)); // rotary rows of another width
        Assert.False(Step(projected, ones(1, 1, 2, 7), zeros(1, 1, 2, 7), rotary: 7)); // odd rotary width
        Assert.False(Step(projected, cos, sin, past: 5)); // no room for the new positions
        Assert.False(Step(projected, cos, sin, past: -1));
        Assert.False(Step(projected, cos, sin, k: zeros(1, 2, 6, 8, ScalarType.BFloat16))); // keys must be float32
        Assert.False(Step(projected, cos, sin, v: zeros(1, 3, 6, 8))); // another head count
        Assert.Equal(0, keys.abs().sum().item<float>());
        Assert.Equal(0, values.abs().sum().item<float>());
    }

    [Fact]
    public void TheBackendTakesTokensAfterACacheAndLeavesPromptsPaddingAndSingleTokensToOthers()
    {
        using var scope = NewDisposeScope();
        using var cache = new KeyValueCache(1);
        cache.Write(0, randn(1, 2, 4, 8), randn(1, 2, 4, 8), 0);
        var backend = new CpuChunkAttention();
        var (cos, sin) = (ones(1, 1, 3, 8), zeros(1, 1, 3, 8));
        var projected = randn(1, 3, 2 * 3 * 8);
        int capacity = cache.Capacity;
        Assert.False(backend.TryAttend(new AttentionCall(projected, cos, sin, null, cache, 0, 0, 8, 8), out _)); // a prompt: libtorch's causal kernel
        Assert.False(backend.TryAttend(new AttentionCall(projected, cos, sin, zeros(1, 1, 1, 7), cache, 0, 4, 8, 8), out _)); // padding
        Assert.False(backend.TryAttend(new AttentionCall(projected, cos, sin, null, null, 0, 4, 8, 8), out _)); // no cache
        Assert.False(backend.TryAttend(new AttentionCall(randn(1, 1, 48), ones(1, 1, 1, 8), zeros(1, 1, 1, 8), null, cache, 0, 4, 8, 8), out _));
        Assert.Equal(capacity, cache.Capacity); // refused without growing the storage
        if (ChunkAttention.DefaultVariant is null) Assert.Skip("this CPU keeps chunk attention with libtorch.");
        Assert.True(backend.TryAttend(new AttentionCall(projected, cos, sin, null, cache, 0, 4, 8, 8), out var context));
        Assert.Equal(new long[] { 1, 3, 16 }, context.shape);
        Assert.True(cache.Capacity >= 7, $"capacity {cache.Capacity}");
    }

    [Fact]
    public void TakesCallsWhereAvx512RunsItAndNarrowsForAFewTokens()
    {
        bool wide = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated;
        Assert.Equal(wide ? ChunkAttentionVariant.Vector512 : null, ChunkAttention.DefaultVariant);
        Assert.Equal(wide ? ChunkAttentionVariant.Vector256 : null, ChunkAttention.VariantFor(8));
        Assert.Equal(wide ? ChunkAttentionVariant.Vector512 : null, ChunkAttention.VariantFor(9));
    }

    private static void SkipUnlessAccelerated(string variant)
    {
        if (!ChunkAttention.IsAccelerated(Enum.Parse<ChunkAttentionVariant>(variant))) Assert.Skip($"this CPU does not accelerate the {variant} variant.");
    }
}
