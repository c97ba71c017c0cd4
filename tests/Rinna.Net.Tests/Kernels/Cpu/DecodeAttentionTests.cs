using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model;
using Rinna.Net.Model.Attention;
using Rinna.Net.Native;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Tests.Kernels.Cpu;

public class DecodeAttentionTests
{
    public DecodeAttentionTests() => TorchSharpNativeLoader.EnsureInstalled();

    public static TheoryData<int, int, int, int, int, bool, string> Cases
    {
        get
        {
            // batch, heads, cached positions, head size, rotary dims, bfloat16: an empty cache, odd sizes, partial rotation
            // (pythia's 25 %), no rotation, rinna-4b's 22 × 128 with full rotation, a batch of two, a cache that must grow;
            // each in every vector width.
            (int, int, int, int, int, bool)[] shapes =
            [
                (1, 1, 0, 8, 8, false), (1, 3, 5, 7, 4, true), (1, 22, 96, 128, 128, true), (2, 4, 33, 80, 20, true),
                (1, 2, 300, 19, 0, false), (2, 8, 63, 64, 16, false),
            ];
            var data = new TheoryData<int, int, int, int, int, bool, string>();
            foreach (var variant in Enum.GetNames<LaneWidth>())
                foreach (var (batch, heads, past, headSize, rotaryDims, bfloat16) in shapes) data.Add(batch, heads, past, headSize, rotaryDims, bfloat16, variant);
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EqualsTheOperatorPathOfRotationCacheWriteAndAttention(int batch, int heads, int past, int headSize, int rotaryDims, bool bfloat16,
        string variantName)
    {
        var variant = Enum.Parse<LaneWidth>(variantName);
        if (!LaneWidths.IsAccelerated(variant)) Assert.Skip($"this CPU does not accelerate the {variant} variant.");
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)(batch * 1000 + heads * 100 + past + headSize));
        var dtype = bfloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
        var projected = randn(batch, 1, heads * 3L * headSize, generator: gen).mul(2).to(dtype);
        var angles = rand(batch, 1, 1, rotaryDims, generator: gen).mul(50);
        var (cos, sin) = (angles.cos(), angles.sin());
        // Two caches with the same history: one written by the operator path, one by the managed step.
        var pastKeys = randn(batch, heads, past, headSize, generator: gen);
        var pastValues = randn(batch, heads, past, headSize, generator: gen).to(dtype);
        using var expectedCache = new KeyValueCache(1, past + 1);
        using var actualCache = new KeyValueCache(1, past == 63 ? 0 : past + 1); // 63: reserved for the history only, so the step grows it
        foreach (var cache in new[] { expectedCache, actualCache })
            if (past > 0) cache.Write(0, pastKeys, pastValues, 0);

        // The default width through the model's backend, which prepares (and here grows) the cache storage the kernel
        // writes into; another width straight into storage prepared as the backend does.
        Tensor actual;
        if (variant == DecodeAttention.DefaultVariant)
            Assert.True(new CpuDecodeAttention().TryAttend(new AttentionCall(projected, cos, sin, null, actualCache, 0, past, headSize, rotaryDims), out actual));
        else
        {
            var (storeKeys, storeValues) = actualCache.Storage(0, batch, heads, headSize, ScalarType.Float32, dtype, CPU, past, past + 1);
            Assert.True(DecodeAttention.TryStep(projected, cos, sin, storeKeys, storeValues, past, headSize, rotaryDims, variant, out actual));
        }

        // HF's order: split the heads, rotate q and k in float32, append to the cache, attend.
        var qkv = projected.view(batch, 1, heads, 3 * headSize).permute(0, 2, 1, 3);
        var query = Rotate(qkv.narrow(-1, 0, headSize), cos, sin, rotaryDims);
        var key = Rotate(qkv.narrow(-1, headSize, headSize), cos, sin, rotaryDims);
        var (keys, values) = expectedCache.Write(0, key, qkv.narrow(-1, 2 * headSize, headSize).contiguous(), past);
        var expected = F.scaled_dot_product_attention(query, keys, values.to(ScalarType.Float32))
            .permute(0, 2, 1, 3).reshape(batch, 1, heads * headSize);
        var (actualKeys, actualValues) = actualCache.Write(0, empty(batch, heads, 0, headSize), empty(batch, heads, 0, headSize, dtype), past + 1);

        // The cache holds exactly what the operator path stores, new position included.
        Assert.Equal(keys.contiguous().bytes.ToArray(), actualKeys.contiguous().bytes.ToArray());
        Assert.Equal(values.contiguous().bytes.ToArray(), actualValues.contiguous().bytes.ToArray());
        Assert.Equal(dtype, actual.dtype);
        Assert.Equal(new long[] { batch, 1, heads * headSize }, actual.shape);
        if (bfloat16)
        {
            // One bfloat16 rounding of values of order one, after float32 arithmetic in a different order.
            var difference = (actual.to(ScalarType.Float32) - expected).abs() - expected.abs().mul(Math.Pow(2, -8)) - 1e-5;
            Assert.True(difference.max().item<float>() <= 0, $"beyond one bfloat16 rounding by {difference.max().item<float>()}");
        }
        else
        {
            var error = (actual - expected).abs().max().item<float>();
            Assert.True(error < 4e-6f, $"max abs difference {error}");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RowsWithTheirOwnCachesInOneCallEqualEachRowAloneBitForBit(bool bfloat16)
    {
        using var scope = NewDisposeScope();
        const int Heads = 3, HeadSize = 16, Rotary = 8;
        int[] pasts = [0, 5, 40, 17]; // an empty cache, and one (40: reserved for its history only) that must grow
        var gen = new Generator(23);
        var dtype = bfloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
        var projected = randn(pasts.Length, 1, Heads * 3L * HeadSize, generator: gen).to(dtype);
        var angles = rand(pasts.Length, 1, 1, Rotary, generator: gen).mul(50);
        var (cos, sin) = (angles.cos(), angles.sin());
        var together = new List<KeyValueCache>();
        var alone = new List<KeyValueCache>();
        foreach (int past in pasts)
        {
            var (keys, values) = (randn(1, Heads, past, HeadSize, generator: gen), randn(1, Heads, past, HeadSize, generator: gen).to(dtype));
            foreach (var caches in new[] { together, alone })
            {
                var cache = new KeyValueCache(1, past == 40 ? 0 : past + 1);
                if (past > 0) cache.Write(0, keys, values, 0);
                cache.Advance(past, 1);
                caches.Add(cache);
            }
        }
        try
        {
            var backend = new CpuDecodeAttention();
            Assert.True(backend.TryAttendRows(new AttentionRowsCall(projected, cos, sin, together, 0, HeadSize, Rotary), out var actual));
            for (int row = 0; row < pasts.Length; row++)
            {
                Assert.True(backend.TryAttend(new AttentionCall(projected.narrow(0, row, 1), cos.narrow(0, row, 1), sin.narrow(0, row, 1), null,
                    alone[row], 0, pasts[row], HeadSize, Rotary), out var expected));
                Assert.Equal(expected.bytes.ToArray(), actual.narrow(0, row, 1).contiguous().bytes.ToArray());
                var (k1, v1) = together[row].Write(0, empty(1, Heads, 0, HeadSize), empty(1, Heads, 0, HeadSize, dtype), pasts[row] + 1);
                var (k2, v2) = alone[row].Write(0, empty(1, Heads, 0, HeadSize), empty(1, Heads, 0, HeadSize, dtype), pasts[row] + 1);
                Assert.Equal(k2.contiguous().bytes.ToArray(), k1.contiguous().bytes.ToArray());
                Assert.Equal(v2.contiguous().bytes.ToArray(), v1.contiguous().bytes.ToArray());
            }
        }
        finally
        {
            foreach (var cache in together.Concat(alone)) cache.Dispose();
        }
    }

    [Fact]
    public void RefusesOtherInputsWithoutTouchingTheCache()
    {
        using var scope = NewDisposeScope();
        var projected = randn(1, 1, 2 * 3 * 8);
        var (cos, sin) = (ones(1, 1, 1, 8), zeros(1, 1, 1, 8));
        var (keys, values) = (zeros(1, 2, 4, 8), zeros(1, 2, 4, 8));
        bool Step(Tensor p, Tensor c, Tensor s, int past = 0, int rotary = 8, Tensor? k = null, Tensor? v = null) =>
            DecodeAttention.TryStep(p, c, s, k ?? keys, v ?? values, past, 8, rotary, out _);
        Assert.False(Step(randn(1, 2, 2 * 3 * 8), cos, sin)); // two tokens
        Assert.False(Step(projected.to(ScalarType.Float16), cos, sin));
        Assert.False(Step(randn(1, 1, 2 * 3 * 8 + 1), cos, sin)); // not whole heads
        Assert.False(Step(randn(1, 48, 2).select(2, 0).unsqueeze(1), cos, sin)); // strided
        Assert.False(Step(projected, cos.to(ScalarType.BFloat16), sin));
        Assert.False(Step(projected, ones(1, 1, 1, 4), sin)); // rotary rows of another width
        Assert.False(Step(projected, ones(1, 1, 1, 7), zeros(1, 1, 1, 7), rotary: 7)); // odd rotary width
        Assert.False(Step(projected, cos, sin, past: DecodeAttention.MaxKeys));
        Assert.False(Step(projected, cos, sin, past: 4)); // no room for the new position
        Assert.False(Step(projected, cos, sin, k: zeros(1, 2, 4, 8, ScalarType.BFloat16))); // keys must be float32
        Assert.False(Step(projected, cos, sin, v: zeros(1, 3, 4, 8))); // another head count
        Assert.Equal(0, keys.abs().sum().item<float>());
        Assert.Equal(0, values.abs().sum().item<float>());
    }

    [Fact]
    public void TheBackendLeavesPaddedAndMultiTokenCallsToTheModelWithoutGrowingTheCache()
    {
        using var scope = NewDisposeScope();
        using var cache = new KeyValueCache(1);
        var backend = new CpuDecodeAttention();
        var (cos, sin) = (ones(1, 1, 1, 8), zeros(1, 1, 1, 8));
        Assert.False(backend.TryAttend(new AttentionCall(randn(1, 2, 2 * 3 * 8), ones(1, 1, 2, 8), zeros(1, 1, 2, 8), null, cache, 0, 0, 8, 8), out _));
        Assert.False(backend.TryAttend(new AttentionCall(randn(1, 1, 2 * 3 * 8), cos, sin, zeros(1, 1, 1, 1), cache, 0, 0, 8, 8), out _));
        Assert.False(backend.TryAttend(new AttentionCall(randn(1, 1, 2 * 3 * 8), cos, sin, null, null, 0, 0, 8, 8), out _));
        Assert.Equal(0, cache.Capacity);
    }

    /// <summary>HF's rotary embedding in libtorch operations, the reference for the managed attention kernels' rotation.</summary>
    internal static Tensor Rotate(Tensor x, Tensor cos, Tensor sin, int rotaryDims)
    {
        var x32 = x.to(ScalarType.Float32);
        if (rotaryDims == 0) return x32.contiguous();
        var rotated = x32.narrow(-1, 0, rotaryDims);
        int half = rotaryDims / 2;
        var rotatedHalf = cat([rotated.narrow(-1, half, half).neg(), rotated.narrow(-1, 0, half)], -1);
        var embedded = rotated.mul(cos).add_(rotatedHalf.mul_(sin));
        return cat([embedded, x32.narrow(-1, rotaryDims, x.shape[^1] - rotaryDims)], -1);
    }
}
