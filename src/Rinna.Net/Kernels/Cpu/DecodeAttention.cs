using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// The attention of one new token on the CPU (a decode step without padding), from the fused query/key/value projection
/// to the context the output projection reads: rotary embedding of q and k, the write of k and v into the cache, and
/// <c>softmax(q·Kᵀ / √d) · V</c> over every cached position, per head, in managed code on libtorch's OpenMP threads.
/// </summary>
/// <remarks>
/// Why: done as libtorch operations this was some twenty calls per layer (splitting heads, the rotation, two cache
/// copies, SDPA with a conversion of the whole value cache to float32) around a few hundred thousand multiply-adds,
/// about half of which time this one pass saves. The rotation repeats HF's
/// float32 arithmetic operation by operation (<c>q·cos + rotate_half(q)·sin</c>, each product rounded, no fused
/// multiply-add), so the cached keys are bit for bit those of the operator path. The attention is the textbook form in
/// float32 (max-subtracted exponentials, then the weighted sum), which differs from libtorch's blocked online softmax
/// only in rounding. The value cache is read in its own dtype and the context is written straight into the
/// <c>[batch, 1, heads · head_size]</c> layout the output projection reads.
/// </remarks>
internal static unsafe class DecodeAttention
{
    /// <summary>Longest cache handled here; the scores of one head live on the stack.</summary>
    internal const int MaxKeys = 16384;

    /// <summary>One step's arguments, shared by the threads that claim its heads (also a stage of <see cref="DecodeLayer"/>).</summary>
    internal struct Job
    {
        public void* Projected;
        public bool ProjectedIsBFloat16;
        public float* Cos, Sin;
        public CacheRow* Rows;
        public void* Output;
        public int Heads, Units, MaxKeys, HeadSize, RotaryDims, NextUnit;
        public float Scale;
        public LaneWidth Variant;
    }

    /// <summary>
    /// The vector width steps use (<see cref="LaneWidths.Default"/>), or none where not even 128-bit vectors run in
    /// hardware: libtorch's operators then do the step.
    /// </summary>
    public static LaneWidth? DefaultVariant { get; } = LaneWidths.IsAccelerated(LaneWidths.Default) ? LaneWidths.Default : null;

    /// <summary>Where one batch row's cache of this layer lives: its keys and values at head 0, the distance between heads, the tokens before this one.</summary>
    internal struct CacheRow
    {
        public float* Keys;
        public byte* Values;
        public long HeadStride;
        public int Past;
    }

    /// <summary>
    /// For <paramref name="projected"/> <c>[batch, 1, heads · 3 · d]</c> (bfloat16 or float32, contiguous: the fused
    /// projection's output, each head's q, k and v side by side) and the rotary rows <paramref name="cos"/>,
    /// <paramref name="sin"/> <c>[batch, 1, 1, rotary_dims]</c> float32 of its position: rotates q and k, stores k and v at
    /// position <paramref name="past"/> of the layer's cache storage <paramref name="keys"/> (float32) and
    /// <paramref name="values"/> (the projection's dtype), both <c>[batch, heads, capacity, d]</c>, and attends over
    /// positions <c>0 .. past</c>. The context is <c>[batch, 1, heads · d]</c> in the projection's dtype. Returns false,
    /// touching nothing, for anything else.
    /// </summary>
    public static bool TryStep(Tensor projected, Tensor cos, Tensor sin, Tensor keys, Tensor values, int past, int headSize,
        int rotaryDims, out Tensor context)
    {
        context = null!;
        return DefaultVariant is { } variant && TryStep(projected, cos, sin, keys, values, past, headSize, rotaryDims, variant, out context);
    }

    /// <summary><see cref="TryStep(Tensor, Tensor, Tensor, Tensor, Tensor, int, int, int, out Tensor)"/> with a chosen width, which must be accelerated; for tests.</summary>
    internal static bool TryStep(Tensor projected, Tensor cos, Tensor sin, Tensor keys, Tensor values, int past, int headSize,
        int rotaryDims, LaneWidth variant, out Tensor context)
    {
        context = null!;
        if (!LaneWidths.IsAccelerated(variant) || !Accepts(projected, cos, sin, past, headSize, rotaryDims, variant)) return false;
        int batch = (int)projected.size(0), heads = (int)(projected.size(2) / (3 * headSize));
        if (!HoldsPositions(keys, ScalarType.Float32, batch, heads, headSize, past + 1) || !HoldsPositions(values, projected.dtype, batch, heads, headSize, past + 1)) return false;

        var rows = new (Tensor Keys, Tensor Values, int Past)[batch];
        for (int b = 0; b < batch; b++) rows[b] = (keys, values, past);
        context = Run(projected, cos, sin, rows, headSize, rotaryDims, sameStorage: true, variant);
        return true;
    }

    /// <summary>
    /// <see cref="TryStep(Tensor, Tensor, Tensor, Tensor, Tensor, int, int, int, out Tensor)"/> for rows that each have their own cache (continuous batching): row <c>b</c> of
    /// <paramref name="projected"/> <c>[rows, 1, heads · 3 · d]</c> is stored at position <c>past_b</c> of its own storage
    /// <c>[1, heads, capacity, d]</c> and attends over its positions <c>0 .. past_b</c>, as a call for it alone would;
    /// one pass on the OpenMP team for all rows and heads. Returns false, touching nothing, for anything else.
    /// </summary>
    public static bool TryStepRows(Tensor projected, Tensor cos, Tensor sin, IReadOnlyList<(Tensor Keys, Tensor Values, int Past)> rows,
        int headSize, int rotaryDims, out Tensor context)
    {
        context = null!;
        if (DefaultVariant is not { } variant || rows.Count == 0 || rows.Count != projected.size(0)) return false;
        foreach (var row in rows)
            if (!Accepts(projected, cos, sin, row.Past, headSize, rotaryDims)) return false;
        int heads = (int)(projected.size(2) / (3 * headSize));
        foreach (var row in rows)
            if (!HoldsPositions(row.Keys, ScalarType.Float32, 1, heads, headSize, row.Past + 1) || !HoldsPositions(row.Values, projected.dtype, 1, heads, headSize, row.Past + 1)) return false;
        context = Run(projected, cos, sin, rows, headSize, rotaryDims, sameStorage: false, variant);
        return true;
    }

    /// <summary>Runs a step whose arguments were checked; with <paramref name="sameStorage"/> row b is batch row b of one storage, else each row's batch row 0.</summary>
    private static Tensor Run(Tensor projected, Tensor cos, Tensor sin, IReadOnlyList<(Tensor Keys, Tensor Values, int Past)> rows, int headSize,
        int rotaryDims, bool sameStorage, LaneWidth variant)
    {
        int batch = rows.Count, heads = (int)(projected.size(2) / (3 * headSize));
        var result = empty(batch, 1, (long)heads * headSize, dtype: projected.dtype);
        var cacheRows = new CacheRow[batch];
        int maxKeys = 0;
        fixed (byte* projectedBytes = projected.bytes)
        fixed (byte* cosBytes = cos.bytes)
        fixed (byte* sinBytes = sin.bytes)
        fixed (byte* outputBytes = result.bytes)
        fixed (CacheRow* cacheRowPointers = cacheRows)
        {
            // Each storage is pinned by its tensor (libtorch never moves it); fixed only yields the address.
            for (int b = 0; b < batch; b++)
            {
                var (keys, values, past) = rows[b];
                long offset = sameStorage ? b * keys.stride(0) : 0;
                fixed (byte* keyBytes = keys.bytes)
                fixed (byte* valueBytes = values.bytes)
                    cacheRows[b] = new CacheRow
                    {
                        Keys = (float*)keyBytes + offset, Values = valueBytes + offset * values.element_size(), HeadStride = keys.stride(1), Past = past,
                    };
                maxKeys = Math.Max(maxKeys, past + 1);
            }
            var job = new Job
            {
                Projected = projectedBytes, ProjectedIsBFloat16 = projected.dtype == ScalarType.BFloat16,
                Cos = (float*)cosBytes, Sin = (float*)sinBytes, Rows = cacheRowPointers, Output = outputBytes,
                Heads = heads, Units = batch * heads, MaxKeys = maxKeys, HeadSize = headSize, RotaryDims = rotaryDims,
                Scale = 1.0f / MathF.Sqrt(headSize), Variant = variant,
            };
            if (LibTorchOpenMp.IsAvailable) LibTorchOpenMp.Run(&RunHeads, &job, get_num_threads());
            else StepHeads(&job);
        }
        return result;
    }

    /// <summary>Whether <see cref="TryStep(Tensor, Tensor, Tensor, Tensor, Tensor, int, int, int, out Tensor)"/> takes a step of this shape, before any cache storage is prepared for it.</summary>
    public static bool Accepts(Tensor projected, Tensor cos, Tensor sin, int past, int headSize, int rotaryDims) =>
        DefaultVariant is { } variant && Accepts(projected, cos, sin, past, headSize, rotaryDims, variant);

    private static bool Accepts(Tensor projected, Tensor cos, Tensor sin, int past, int headSize, int rotaryDims, LaneWidth variant)
    {
        static bool OnCpuContiguous(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();
        bool RotaryRows(Tensor t) => OnCpuContiguous(t) && t.dtype == ScalarType.Float32 && t.numel() == projected.size(0) * rotaryDims;
        // Without hardware vectors the managed loops would lose to libtorch's kernels.
        return LaneWidths.IsAccelerated(variant) && OnCpuContiguous(projected) && projected.dim() == 3 && projected.size(1) == 1
            && projected.dtype is ScalarType.BFloat16 or ScalarType.Float32 && projected.numel() > 0
            && headSize > 0 && projected.size(2) % (3 * headSize) == 0 && rotaryDims >= 0 && rotaryDims <= headSize && rotaryDims % 2 == 0
            && RotaryRows(cos) && RotaryRows(sin) && past >= 0 && past < MaxKeys;
    }

    /// <summary>Whether <paramref name="store"/> is a contiguous CPU cache storage <c>[batch, heads, ≥ needed, head_size]</c> of <paramref name="dtype"/>.</summary>
    internal static bool HoldsPositions(Tensor store, ScalarType dtype, int batch, int heads, int headSize, int needed) =>
        store.dtype == dtype && store.device_type == TorchSharp.DeviceType.CPU && store.is_contiguous() && store.dim() == 4
        && store.size(0) == batch && store.size(1) == heads && store.size(2) >= needed && store.size(3) == headSize;

    /// <summary>
    /// The arguments of a step of one sequence (batch 1) whose cache row <paramref name="row"/> the caller keeps in place
    /// until the step ends: the projection <c>[heads · 3 · d]</c> and the context <c>[heads · d]</c> in bfloat16.
    /// </summary>
    internal static Job OneRow(ushort* projected, float* cos, float* sin, CacheRow* row, ushort* context, int heads, int headSize, int rotaryDims,
        LaneWidth variant) => new()
    {
        Projected = projected, ProjectedIsBFloat16 = true, Cos = cos, Sin = sin, Rows = row, Output = context,
        Heads = heads, Units = heads, MaxKeys = row->Past + 1, HeadSize = headSize, RotaryDims = rotaryDims, Scale = 1.0f / MathF.Sqrt(headSize),
        Variant = variant,
    };

    /// <summary>Where batch row 0 of a layer's cache storage (checked with <see cref="HoldsPositions"/>) lives; the tensors must outlive its use.</summary>
    internal static CacheRow RowOf(Tensor keys, Tensor values, int past)
    {
        fixed (byte* keyBytes = keys.bytes)
        fixed (byte* valueBytes = values.bytes)
            return new CacheRow { Keys = (float*)keyBytes, Values = valueBytes, HeadStride = keys.stride(1), Past = past };
    }

    [UnmanagedCallersOnly]
    private static void RunHeads(void* state) => StepHeads((Job*)state);

    /// <summary>Claims heads of <paramref name="job"/> until none are left and attends over each.</summary>
    internal static void StepHeads(Job* job)
    {
        if (job->Variant == LaneWidth.Vector128) StepHeads<Vector128<float>, FloatLanes128>(job);
        else StepHeads<Vector256<float>, FloatLanes256>(job);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void StepHeads<TVector, TLanes>(Job* job) where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        int d = job->HeadSize;
        float* scores = stackalloc float[job->MaxKeys];
        float* query = stackalloc float[d];
        float* sum = stackalloc float[d];
        int unit;
        while ((unit = Interlocked.Increment(ref job->NextUnit) - 1) < job->Units)
        {
            int b = unit / job->Heads, h = unit % job->Heads;
            var row = job->Rows[b];
            int past = row.Past, keys = past + 1;
            long cacheHead = h * row.HeadStride;
            long source = (long)unit * 3 * d; // [batch, 1, heads, 3, d]: unit = b * heads + h
            float* cos = job->Cos + (long)b * job->RotaryDims, sin = job->Sin + (long)b * job->RotaryDims;
            float* keyRows = row.Keys + cacheHead;
            void* valueRows = job->ProjectedIsBFloat16 ? (ushort*)row.Values + cacheHead : (float*)row.Values + cacheHead;
            // q, then k straight into its cache row
            RotaryEmbedding.RotateFrom(job->Projected, job->ProjectedIsBFloat16, source, cos, sin, d, job->RotaryDims, query);
            RotaryEmbedding.RotateFrom(job->Projected, job->ProjectedIsBFloat16, source + d, cos, sin, d, job->RotaryDims, keyRows + (long)past * d);
            if (job->ProjectedIsBFloat16)
                new ReadOnlySpan<ushort>((ushort*)job->Projected + source + 2 * d, d).CopyTo(new Span<ushort>((ushort*)valueRows + (long)past * d, d));
            else
                new ReadOnlySpan<float>((float*)job->Projected + source + 2 * d, d).CopyTo(new Span<float>((float*)valueRows + (long)past * d, d));

            float max = float.NegativeInfinity;
            int t = 0;
            for (; t + 4 <= keys; t += 4)
            {
                Prefetch(keyRows + (long)(t + 16) * d, 4 * d * sizeof(float));
                DotFour<TVector, TLanes>(query, keyRows + (long)t * d, d, scores + t);
                max = MathF.Max(max, MathF.Max(MathF.Max(scores[t], scores[t + 1]), MathF.Max(scores[t + 2], scores[t + 3])));
            }
            for (; t < keys; t++) max = MathF.Max(max, scores[t] = Dot<TVector, TLanes>(query, keyRows + (long)t * d, d));
            float total = Exponentiate<TVector, TLanes>(scores, keys, max, job->Scale);

            if (job->ProjectedIsBFloat16) WeightedSum<ushort, TVector, TLanes>(scores, (ushort*)valueRows, keys, d, sum);
            else WeightedSum<float, TVector, TLanes>(scores, (float*)valueRows, keys, d, sum);

            long outputOffset = (long)unit * d;
            for (int i = 0; i < d; i++)
            {
                float value = sum[i] / total;
                if (job->ProjectedIsBFloat16) ((ushort*)job->Output)[outputOffset + i] = BFloat16Bits.Round(value);
                else ((float*)job->Output)[outputOffset + i] = value;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot<TVector, TLanes>(float* a, float* b, int length) where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        var acc = TLanes.Broadcast(0);
        int i = 0;
        for (; i + TLanes.Count <= length; i += TLanes.Count)
            acc = TLanes.MultiplyAdd(TLanes.Load(a + i), TLanes.Load(b + i), acc);
        float result = TLanes.Sum(acc);
        for (; i < length; i++) result += a[i] * b[i];
        return result;
    }

    /// <summary>Replaces each score s by <c>exp((s − max) · scale)</c> and returns their sum; vectorized, as a call per key cost as much as the rest of a head.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Exponentiate<TVector, TLanes>(float* scores, int count, float max, float scale)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        var (maxes, scales, sums) = (TLanes.Broadcast(max), TLanes.Broadcast(scale), TLanes.Broadcast(0));
        int t = 0;
        for (; t + TLanes.Count <= count; t += TLanes.Count)
        {
            var e = TLanes.Exp(TLanes.Multiply(TLanes.Subtract(TLanes.Load(scores + t), maxes), scales));
            TLanes.Store(e, scores + t);
            sums = TLanes.Add(sums, e);
        }
        float total = TLanes.Sum(sums);
        for (; t < count; t++) total += scores[t] = MathF.Exp((scores[t] - max) * scale);
        return total;
    }

    /// <summary>q · k for four consecutive key rows: four independent accumulator chains sharing each load of q.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotFour<TVector, TLanes>(float* q, float* keys, int d, float* scores)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        TVector a0 = TLanes.Broadcast(0), a1 = a0, a2 = a0, a3 = a0;
        int i = 0;
        for (; i + TLanes.Count <= d; i += TLanes.Count)
        {
            var x = TLanes.Load(q + i);
            a0 = TLanes.MultiplyAdd(x, TLanes.Load(keys + i), a0);
            a1 = TLanes.MultiplyAdd(x, TLanes.Load(keys + d + i), a1);
            a2 = TLanes.MultiplyAdd(x, TLanes.Load(keys + 2 * d + i), a2);
            a3 = TLanes.MultiplyAdd(x, TLanes.Load(keys + 3 * d + i), a3);
        }
        float s0 = TLanes.Sum(a0), s1 = TLanes.Sum(a1), s2 = TLanes.Sum(a2), s3 = TLanes.Sum(a3);
        for (; i < d; i++)
        {
            s0 += q[i] * keys[i];
            s1 += q[i] * keys[d + i];
            s2 += q[i] * keys[2 * d + i];
            s3 += q[i] * keys[3 * d + i];
        }
        (scores[0], scores[1], scores[2], scores[3]) = (s0, s1, s2, s3);
    }

    /// <summary>
    /// <c>sum = Σₜ weights[t] · values[t]</c>, row after row: the value rows are read once, in address order, which is
    /// what counts when they come from memory (as they do in a model, after the layer's weights went through the caches).
    /// Column blocks with accumulators held over all rows were faster with hot caches and slower in the model. Values
    /// are float32 or bfloat16 (<typeparamref name="TValue"/> <c>float</c> or <c>ushort</c>), widened exactly.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightedSum<TValue, TVector, TLanes>(float* weights, TValue* values, int rows, int d, float* sum)
        where TValue : unmanaged where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        bool bfloat16 = typeof(TValue) == typeof(ushort);
        new Span<float>(sum, d).Clear();
        for (int t = 0; t < rows; t++)
        {
            TValue* row = values + (long)t * d;
            Prefetch(row + 16 * d, d * sizeof(TValue));
            var w = TLanes.Broadcast(weights[t]);
            int i = 0;
            for (; i + TLanes.Count <= d; i += TLanes.Count)
            {
                var value = bfloat16 ? TLanes.LoadBFloat16((ushort*)row + i) : TLanes.Load((float*)row + i);
                TLanes.Store(TLanes.MultiplyAdd(value, w, TLanes.Load(sum + i)), sum + i);
            }
            for (; i < d; i++) sum[i] += (bfloat16 ? BFloat16Bits.Widen(((ushort*)row)[i]) : ((float*)row)[i]) * weights[t];
        }
    }

    /// <summary>
    /// Asks for the cache lines of <paramref name="bytes"/> bytes at <paramref name="address"/>, sixteen rows ahead of use:
    /// the cache of a layer comes from memory, and its rows are read too briefly for the hardware prefetcher to ramp up.
    /// Prefetches never fault, so addresses past the end are harmless.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(void* address, int bytes)
    {
        if (!Sse.IsSupported) return;
        for (int offset = 0; offset < bytes; offset += 64) Sse.Prefetch0((byte*)address + offset);
    }
}
