using Rinna.Net.Kernels.Cpu;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Attention;

/// <summary>The attention backends a model offers each call to, in order, before computing attention itself.</summary>
internal static class AttentionBackends
{
    private static readonly IAttentionBackend[] Backends = [new CpuDecodeAttention(), new CpuChunkAttention()];

    /// <summary>The first backend that takes <paramref name="call"/>, or false.</summary>
    public static bool TryAttend(in AttentionCall call, out Tensor context)
    {
        foreach (var backend in Backends)
            if (backend.TryAttend(call, out context)) return true;
        context = null!;
        return false;
    }

    /// <summary>The first backend that takes <paramref name="call"/>'s rows in one call, or false.</summary>
    public static bool TryAttendRows(in AttentionRowsCall call, out Tensor context)
    {
        foreach (var backend in Backends)
            if (backend.TryAttendRows(call, out context)) return true;
        context = null!;
        return false;
    }
}

/// <summary>
/// A decode step on the CPU (one new token, no padding, a cache): <see cref="DecodeAttention"/> does the rotation, the
/// cache write and the attention in one managed pass instead of some twenty libtorch calls per layer.
/// </summary>
internal sealed class CpuDecodeAttention : IAttentionBackend
{
    public bool TryAttend(in AttentionCall call, out Tensor context)
    {
        context = null!;
        var projected = call.Projected;
        if (call.Cache is not { } cache || call.PaddingBias is not null
            || !DecodeAttention.Accepts(projected, call.Cos, call.Sin, call.Past, call.HeadSize, call.RotaryDims))
            return false;
        long batch = projected.size(0), heads = projected.size(2) / (3 * call.HeadSize);
        var (keys, values) = cache.Storage(call.Layer, batch, heads, call.HeadSize, ScalarType.Float32, projected.dtype,
            projected.device, call.Past, call.Past + 1);
        return DecodeAttention.TryStep(projected, call.Cos, call.Sin, keys, values, call.Past, call.HeadSize, call.RotaryDims, out context);
    }

    public bool TryAttendRows(in AttentionRowsCall call, out Tensor context)
    {
        context = null!;
        var projected = call.Projected;
        foreach (var cache in call.Caches)
            if (cache.Length > 0 && cache.BatchSize != 1
                || !DecodeAttention.Accepts(projected, call.Cos, call.Sin, cache.Length, call.HeadSize, call.RotaryDims))
                return false;
        long heads = projected.size(2) / (3 * call.HeadSize);
        var rows = new (Tensor Keys, Tensor Values, int Past)[call.Caches.Count];
        for (int i = 0; i < rows.Length; i++)
        {
            var cache = call.Caches[i];
            var (keys, values) = cache.Storage(call.Layer, 1, heads, call.HeadSize, ScalarType.Float32, projected.dtype, projected.device,
                cache.Length, cache.Length + 1);
            rows[i] = (keys, values, cache.Length);
        }
        return DecodeAttention.TryStepRows(projected, call.Cos, call.Sin, rows, call.HeadSize, call.RotaryDims, out context);
    }
}

/// <summary>
/// Several new tokens after a cache on an AVX-512 CPU (no padding): <see cref="ChunkAttention"/> does the rotation, the
/// cache write and the causal attention over the cache in one managed pass, where libtorch multiplied each head's
/// queries by the whole history at a third of the machine's rate. A prompt without a cache stays with libtorch's fused
/// causal kernel.
/// </summary>
internal sealed class CpuChunkAttention : IAttentionBackend
{
    public bool TryAttend(in AttentionCall call, out Tensor context)
    {
        context = null!;
        var projected = call.Projected;
        if (call.Cache is not { } cache || call.PaddingBias is not null || call.Past == 0 || ChunkAttention.DefaultVariant is null
            || !ChunkAttention.Accepts(projected, call.Cos, call.Sin, call.Past, call.HeadSize, call.RotaryDims))
            return false;
        long batch = projected.size(0), tokens = projected.size(1), heads = projected.size(2) / (3 * call.HeadSize);
        var (keys, values) = cache.Storage(call.Layer, batch, heads, call.HeadSize, ScalarType.Float32, projected.dtype,
            projected.device, call.Past, call.Past + (int)tokens);
        return ChunkAttention.TryStep(projected, call.Cos, call.Sin, keys, values, call.Past, call.HeadSize, call.RotaryDims, out context);
    }

    public bool TryAttendRows(in AttentionRowsCall call, out Tensor context)
    {
        context = null!;
        return false;
    }
}
