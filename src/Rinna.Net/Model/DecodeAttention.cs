using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Model;

/// <summary>
/// Attention for one new token against the cache on the CPU (a decode step without padding): for each head,
/// <c>softmax(q·Kᵀ / √d) · V</c> in float32, in managed code on libtorch's OpenMP threads.
/// </summary>
/// <remarks>
/// Why: libtorch's fused SDPA for a single query took 0.3–0.4 ms per rinna-4b layer (11–16 ms of a 250 ms float16 decode
/// step, 2026-11-28), mostly setup around a few hundred thousand multiply-adds, plus a conversion of the whole value cache
/// to float32 and of the result back. Here the value cache is read in its own dtype and the result is written
/// straight into the <c>[batch, 1, heads · head_size]</c> layout the output projection reads. The arithmetic is the
/// textbook form in float32 (max-subtracted exponentials, then the weighted sum), so it differs from libtorch's blocked
/// online softmax only in rounding.
/// </remarks>
internal static unsafe class DecodeAttention
{
    /// <summary>Longest cache handled here; the scores of one head live on the stack.</summary>
    internal const int MaxKeys = 16384;

    private struct Job
    {
        public float* Query;
        public float* Key;
        public void* Value;
        public bool ValueIsBFloat16;
        public void* Output;
        public bool OutputIsBFloat16;
        public long QueryBatchStride, QueryHeadStride, KeyBatchStride, KeyHeadStride, KeyRowStride;
        public long ValueBatchStride, ValueHeadStride, ValueRowStride;
        public int Heads, Units, Keys, HeadSize, NextUnit;
        public float Scale;
    }

    /// <summary>
    /// <paramref name="query"/> <c>[batch, heads, 1, d]</c> float32, <paramref name="key"/> <c>[batch, heads, keys, d]</c>
    /// float32 and <paramref name="value"/> the same shape in bfloat16 or float32, each with contiguous rows of <c>d</c>
    /// (views of the cache are fine); the result is <c>[batch, 1, heads · d]</c> in the value's dtype. Returns false, doing
    /// nothing, for anything else.
    /// </summary>
    public static bool TryAttend(Tensor query, Tensor key, Tensor value, out Tensor output)
    {
        output = null!;
        if (!Eligible(query, key, value)) return false;
        int batch = (int)query.shape[0], heads = (int)query.shape[1], keys = (int)key.shape[2], headSize = (int)query.shape[3];
        var result = empty(batch, 1, (long)heads * headSize, dtype: value.dtype);
        var job = new Job
        {
            Query = (float*)Address(query), Key = (float*)Address(key), Value = (void*)Address(value),
            ValueIsBFloat16 = value.dtype == ScalarType.BFloat16, Output = (void*)Address(result), OutputIsBFloat16 = value.dtype == ScalarType.BFloat16,
            QueryBatchStride = query.stride(0), QueryHeadStride = query.stride(1),
            KeyBatchStride = key.stride(0), KeyHeadStride = key.stride(1), KeyRowStride = key.stride(2),
            ValueBatchStride = value.stride(0), ValueHeadStride = value.stride(1), ValueRowStride = value.stride(2),
            Heads = heads, Units = batch * heads, Keys = keys, HeadSize = headSize, Scale = 1.0f / MathF.Sqrt(headSize),
        };
        if (LibTorchOpenMp.IsAvailable) LibTorchOpenMp.Run(&RunHeads, &job, get_num_threads());
        else AttendHeads(&job);
        output = result;
        return true;
    }

    private static bool Eligible(Tensor query, Tensor key, Tensor value)
    {
        static bool RowsContiguousOnCpu(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.dim() == 4 && t.stride(3) == 1;
        // Without hardware vectors the managed loops would lose to libtorch's kernel.
        return Vector256.IsHardwareAccelerated && RowsContiguousOnCpu(query) && RowsContiguousOnCpu(key) && RowsContiguousOnCpu(value)
            && query.dtype == ScalarType.Float32 && key.dtype == ScalarType.Float32 && value.dtype is ScalarType.BFloat16 or ScalarType.Float32
            && query.shape[2] == 1 && query.numel() > 0 && key.shape[2] is > 0 and <= MaxKeys
            && key.shape[0] == query.shape[0] && key.shape[1] == query.shape[1] && key.shape[3] == query.shape[3]
            && value.shape.SequenceEqual(key.shape);
    }

    /// <summary>The address of the first element of a 4-D tensor or view (<see cref="Tensor.bytes"/> needs a contiguous tensor).</summary>
    private static IntPtr Address(Tensor t)
    {
        using var first = t.as_strided([1], [1], t.storage_offset());
        fixed (byte* address = first.bytes) return (IntPtr)address;
    }

    [UnmanagedCallersOnly]
    private static void RunHeads(void* state) => AttendHeads((Job*)state);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AttendHeads(Job* job)
    {
        int keys = job->Keys, d = job->HeadSize;
        float* scores = stackalloc float[keys];
        float* sum = stackalloc float[d];
        int unit;
        while ((unit = Interlocked.Increment(ref job->NextUnit) - 1) < job->Units)
        {
            int b = unit / job->Heads, h = unit % job->Heads;
            float* q = job->Query + b * job->QueryBatchStride + h * job->QueryHeadStride;
            float* k = job->Key + b * job->KeyBatchStride + h * job->KeyHeadStride;
            long valueOffset = b * job->ValueBatchStride + h * job->ValueHeadStride;

            float max = float.NegativeInfinity;
            for (int t = 0; t < keys; t++)
            {
                scores[t] = Dot(q, k + t * job->KeyRowStride, d) * job->Scale;
                max = MathF.Max(max, scores[t]);
            }
            float total = 0;
            for (int t = 0; t < keys; t++) total += scores[t] = MathF.Exp(scores[t] - max);

            new Span<float>(sum, d).Clear();
            for (int t = 0; t < keys; t++)
            {
                long row = valueOffset + t * job->ValueRowStride;
                if (job->ValueIsBFloat16) AddScaledBFloat16(sum, (ushort*)job->Value + row, scores[t], d);
                else AddScaled(sum, (float*)job->Value + row, scores[t], d);
            }

            long outputOffset = (long)unit * d; // [batch, 1, heads * d]: unit = b * heads + h
            for (int i = 0; i < d; i++)
            {
                float value = sum[i] / total;
                if (job->OutputIsBFloat16) ((ushort*)job->Output)[outputOffset + i] = BFloat16Bits.Round(value);
                else ((float*)job->Output)[outputOffset + i] = value;
            }
        }
    }

    private static float Dot(float* a, float* b, int length)
    {
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i + Vector256<float>.Count <= length; i += Vector256<float>.Count)
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
        float result = Vector256.Sum(acc);
        for (; i < length; i++) result += a[i] * b[i];
        return result;
    }

    private static void AddScaled(float* sum, float* row, float weight, int length)
    {
        var w = Vector256.Create(weight);
        int i = 0;
        for (; i + Vector256<float>.Count <= length; i += Vector256<float>.Count)
            Vector256.FusedMultiplyAdd(Vector256.Load(row + i), w, Vector256.Load(sum + i)).Store(sum + i);
        for (; i < length; i++) sum[i] += row[i] * weight;
    }

    private static void AddScaledBFloat16(float* sum, ushort* row, float weight, int length)
    {
        var w = Vector256.Create(weight);
        int i = 0;
        for (; i + Vector256<float>.Count <= length; i += Vector256<float>.Count)
        {
            var widened = Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load(row + i).ToVector256Unsafe()), 16).AsSingle();
            Vector256.FusedMultiplyAdd(widened, w, Vector256.Load(sum + i)).Store(sum + i);
        }
        for (; i < length; i++) sum[i] += BFloat16Bits.Widen(row[i]) * weight;
    }

}
