using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model;

public class KeyValueCacheTests
{
    private static KeyValueCache Filled(out Tensor keys, out Tensor values)
    {
        var cache = new KeyValueCache(1, reservedLength: 8);
        keys = arange(3 * 2 * 4 * 2, ScalarType.Float32).view(3, 2, 4, 2);
        values = keys.neg();
        cache.Write(0, keys, values, past: 0);
        cache.Advance(4, 3);
        return cache;
    }

    [Fact]
    public void ReorderGathersRowsInPlace()
    {
        using var cache = Filled(out var keys, out var values);
        var before = cache.Storage(0, 3, 2, 2, ScalarType.Float32, ScalarType.Float32, CPU, 4, 4).Keys;
        cache.Reorder(tensor(new long[] { 2, 0, 0 }));
        var (k, v) = cache.Storage(0, 3, 2, 2, ScalarType.Float32, ScalarType.Float32, CPU, 4, 4);
        Assert.Equal(before.Handle, k.Handle);
        Assert.True(k.narrow(2, 0, 4).equal(keys.index_select(0, tensor(new long[] { 2, 0, 0 }))).all().item<bool>());
        Assert.True(v.narrow(2, 0, 4).equal(values.index_select(0, tensor(new long[] { 2, 0, 0 }))).all().item<bool>());
        Assert.Throws<ArgumentException>(() => cache.Reorder(tensor(new long[] { 0, 1 })));
    }

    [Fact]
    public void TruncateForgetsLaterPositionsOnly()
    {
        using var cache = Filled(out var keys, out _);
        cache.Truncate(2);
        Assert.Equal(2, cache.Length);
        var (k, _) = cache.Write(0, keys.narrow(2, 3, 1), keys.narrow(2, 3, 1), past: 2);
        Assert.Equal(3, k.size(2));
        Assert.True(k.narrow(2, 0, 2).equal(keys.narrow(2, 0, 2)).all().item<bool>());
        Assert.True(k.narrow(2, 2, 1).equal(keys.narrow(2, 3, 1)).all().item<bool>());
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(3));
    }

    [Fact]
    public void GrowthByDoublingStopsAtTheMaximumLength()
    {
        using var cache = new KeyValueCache(1, reservedLength: 4, maxLength: 10);
        using var token = ones(1, 2, 1, 2);
        for (int past = 0; past < 10; past++)
        {
            cache.Write(0, token, token, past);
            cache.Advance(1, 1);
            // 4, then 8, then 10 rather than 16.
            Assert.InRange(cache.Capacity, past + 1, 10);
        }
        Assert.Equal(10, cache.Capacity);
    }
}
