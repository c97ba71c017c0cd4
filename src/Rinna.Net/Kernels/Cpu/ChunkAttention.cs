using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// The attention of several new tokens after a cache on the CPU (a chat turn after its kept history, a chunk of a long
/// prompt, a speculative step's proposals), from the fused query/key/value projection to the context: rotary embedding
/// of q and k, the write of k and v into the cache, and causal <c>softmax(q·Kᵀ / √d) · V</c> per head, in managed code
/// on libtorch's OpenMP threads.
/// </summary>
/// <remarks>
/// Why: libtorch computes this as a small product per head (40 queries × 1,400 keys × 128 for a chat's twentieth turn)
/// at a third of the machine's float32 multiply-add rate, around a mask, a softmax and conversions, and that was most of
/// what a long kept history added to a turn's time to first token. Here a block of a head's queries, transposed, lies
/// across the vector lanes, so each key element is broadcast once per block into register tiles, and the softmax runs
/// online over blocks of keys (flash attention's rescaling), so no scratch grows with the history. The rotation and the
/// cache write are bit for bit the operator path's (<see cref="RotaryEmbedding"/>); the attention differs from
/// libtorch's only in rounding. One source serves every vector width (<see cref="IFloatLanes{TVector}"/>).
/// </remarks>
internal static unsafe class ChunkAttention
{
    /// <summary>Keys whose scores are held at once: a block's scores and keys stay in the core's own caches.</summary>
    private const int KeyBlock = 128;

    /// <summary>Most vectors of queries in one block: three keep the score tile at 12 accumulators.</summary>
    private const int MaxQueryVectors = 3;

    /// <summary>
    /// The variant calls take on this CPU, or null to leave them to libtorch: the 512-bit one where AVX-512 runs it, which
    /// measured 1.09× (BenchmarkDotNet) to 1.15–1.6× (paired probes) libtorch's speed for a chat turn over its history
    /// (benchmarks/RESULTS.md). On AVX2 the 256-bit one measured about 5 % slower than libtorch's and Arm64 is unmeasured,
    /// so there libtorch keeps the call; tests run every width the CPU accelerates.
    /// </summary>
    public static ChunkAttentionVariant? DefaultVariant { get; } =
        Vector512.IsHardwareAccelerated ? ChunkAttentionVariant.Vector512 : null;

    /// <summary>Whether <paramref name="variant"/> runs on vector hardware here.</summary>
    public static bool IsAccelerated(ChunkAttentionVariant variant) => variant switch
    {
        ChunkAttentionVariant.Vector512 => FloatLanes512.IsHardwareAccelerated,
        ChunkAttentionVariant.Vector256 => FloatLanes256.IsHardwareAccelerated,
        _ => FloatLanes128.IsHardwareAccelerated,
    };

    private struct Job
    {
        public void* Projected;
        public bool IsBFloat16;
        public float* Cos, Sin;
        public float* Keys;
        public byte* Values;
        public long BatchStride, HeadStride;
        public float* Queries;
        public void* Output;
        public float* Scratch;
        public long ScratchFloats;
        public int Heads, Tokens, PaddedTokens, BlockQueries, Blocks, Past, HeadSize, RotaryDims, Units, NextUnit, NextScratch;
        public float Scale;
        public ChunkAttentionVariant Variant;
    }

    /// <summary>Whether <see cref="TryStep(Tensor, Tensor, Tensor, Tensor, Tensor, int, int, int, out Tensor)"/> takes a call of this shape, before any cache storage is prepared for it.</summary>
    public static bool Accepts(Tensor projected, Tensor cos, Tensor sin, int past, int headSize, int rotaryDims)
    {
        static bool OnCpuContiguous(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();
        bool RotaryRows(Tensor t) => OnCpuContiguous(t) && t.dtype == ScalarType.Float32 && t.numel() == projected.size(0) * projected.size(1) * rotaryDims;
        return OnCpuContiguous(projected) && projected.dim() == 3 && projected.size(1) > 1
            && projected.dtype is ScalarType.BFloat16 or ScalarType.Float32 && projected.numel() > 0
            && headSize > 0 && projected.size(2) % (3 * headSize) == 0 && rotaryDims >= 0 && rotaryDims <= headSize && rotaryDims % 2 == 0
            && RotaryRows(cos) && RotaryRows(sin) && past >= 0 && past + projected.size(1) <= int.MaxValue / 2;
    }

    /// <summary>
    /// For <paramref name="projected"/> <c>[batch, tokens, heads · 3 · d]</c> (bfloat16 or float32, contiguous, each head's
    /// q, k and v side by side) and the rotary rows <paramref name="cos"/>, <paramref name="sin"/>
    /// <c>[batch, 1, tokens, rotary_dims]</c> float32 of its positions: rotates q and k, stores k and v at positions
    /// <c>past .. past + tokens</c> of the layer's cache storage <paramref name="keys"/> (float32) and
    /// <paramref name="values"/> (the projection's dtype), both <c>[batch, heads, capacity, d]</c>, and lets token
    /// <c>t</c> attend over positions <c>0 .. past + t</c>. The context is <c>[batch, tokens, heads · d]</c> in the
    /// projection's dtype. Returns false, touching nothing, for anything else.
    /// </summary>
    public static bool TryStep(Tensor projected, Tensor cos, Tensor sin, Tensor keys, Tensor values, int past, int headSize, int rotaryDims,
        out Tensor context) =>
        TryStep(projected, cos, sin, keys, values, past, headSize, rotaryDims, VariantFor(projected.size(1)), out context);

    /// <summary>The default width, narrowed to 256 bits for up to eight tokens, which one 256-bit vector of queries holds without idle lanes.</summary>
    internal static ChunkAttentionVariant? VariantFor(long tokens) =>
        DefaultVariant == ChunkAttentionVariant.Vector512 && tokens <= 8 && IsAccelerated(ChunkAttentionVariant.Vector256)
            ? ChunkAttentionVariant.Vector256 : DefaultVariant;

    /// <summary><see cref="TryStep(Tensor, Tensor, Tensor, Tensor, Tensor, int, int, int, out Tensor)"/> with a chosen vector width (tests run each).</summary>
    internal static bool TryStep(Tensor projected, Tensor cos, Tensor sin, Tensor keys, Tensor values, int past, int headSize, int rotaryDims,
        ChunkAttentionVariant? variant, out Tensor context)
    {
        context = null!;
        if (variant is not { } chosen || !IsAccelerated(chosen) || !Accepts(projected, cos, sin, past, headSize, rotaryDims)) return false;
        int batch = (int)projected.size(0), tokens = (int)projected.size(1), heads = (int)(projected.size(2) / (3 * headSize));
        if (!DecodeAttention.HoldsPositions(keys, ScalarType.Float32, batch, heads, headSize, past + tokens)
            || !DecodeAttention.HoldsPositions(values, projected.dtype, batch, heads, headSize, past + tokens))
            return false;

        int lanes = chosen switch { ChunkAttentionVariant.Vector512 => 16, ChunkAttentionVariant.Vector256 => 8, _ => 4 };
        // A few tokens (speculative proposals) take blocks of one vector, so few score lanes are computed for nothing.
        int blockQueries = Math.Min(MaxQueryVectors, (tokens + lanes - 1) / lanes) * lanes, blocks = (tokens + blockQueries - 1) / blockQueries;
        var result = empty(batch, tokens, (long)heads * headSize, dtype: projected.dtype);
        long queryFloats = (long)batch * heads * headSize * blocks * blockQueries;
        // Per thread: a block's scores, the running maxima, sums and rescaling factors per query, the unnormalized context
        // rows, and a block of value rows widened to float32 when the cache holds bfloat16. Allocated here, where running
        // out of memory is an exception, not inside the OpenMP region.
        long scratchFloats = (long)KeyBlock * blockQueries + 3L * blockQueries + (long)blockQueries * headSize
            + (projected.dtype == ScalarType.BFloat16 ? (long)KeyBlock * headSize : 0);
        int threads = Math.Max(1, Math.Min(get_num_threads(), batch * heads * blocks));
        float* queries = (float*)NativeMemory.AlignedAlloc((nuint)(queryFloats * sizeof(float)), 64);
        float* scratch = null;
        try
        {
            scratch = (float*)NativeMemory.AlignedAlloc((nuint)(threads * scratchFloats * sizeof(float)), 64);
            fixed (byte* projectedBytes = projected.bytes)
            fixed (byte* cosBytes = cos.bytes)
            fixed (byte* sinBytes = sin.bytes)
            fixed (byte* keyBytes = keys.bytes)
            fixed (byte* valueBytes = values.bytes)
            fixed (byte* outputBytes = result.bytes)
            {
                // Each storage is pinned by its tensor (libtorch never moves it); fixed only yields the address.
                var job = new Job
                {
                    Projected = projectedBytes, IsBFloat16 = projected.dtype == ScalarType.BFloat16, Cos = (float*)cosBytes, Sin = (float*)sinBytes,
                    Keys = (float*)keyBytes, Values = valueBytes, BatchStride = keys.stride(0), HeadStride = keys.stride(1),
                    Queries = queries, Output = outputBytes, Heads = heads, Tokens = tokens, PaddedTokens = blocks * blockQueries,
                    BlockQueries = blockQueries, Blocks = blocks, Past = past, HeadSize = headSize, RotaryDims = rotaryDims,
                    Units = batch * heads, Scale = 1.0f / MathF.Sqrt(headSize), Variant = chosen, Scratch = scratch, ScratchFloats = scratchFloats,
                };
                // Every key of a head must be in the cache before any of its queries attends, hence two passes.
                Parallel(&RunPrepare, &Prepare, &job, threads);
                job.NextUnit = 0;
                job.Units = batch * heads * blocks;
                Parallel(&RunAttend, &Attend, &job, threads);
            }
        }
        finally
        {
            NativeMemory.AlignedFree(queries);
            NativeMemory.AlignedFree(scratch);
        }
        context = result;
        return true;
    }

    private static void Parallel(delegate* unmanaged<void*, void> onTeam, delegate*<Job*, void> here, Job* job, int threads)
    {
        if (LibTorchOpenMp.IsAvailable) LibTorchOpenMp.Run(onTeam, job, threads);
        else here(job);
    }

    [UnmanagedCallersOnly]
    private static void RunPrepare(void* state) => Prepare((Job*)state);

    [UnmanagedCallersOnly]
    private static void RunAttend(void* state) => Attend((Job*)state);

    /// <summary>Per (batch row, head): each token's q rotated into the transposed query block, its k rotated and v copied into the cache.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Prepare(Job* job)
    {
        int d = job->HeadSize, heads = job->Heads, tokens = job->Tokens, padded = job->PaddedTokens, rotary = job->RotaryDims;
        float* query = stackalloc float[d];
        int unit;
        while ((unit = Interlocked.Increment(ref job->NextUnit) - 1) < job->Units)
        {
            int b = unit / heads, h = unit % heads;
            long cacheHead = b * job->BatchStride + h * job->HeadStride;
            float* transposed = job->Queries + (long)unit * d * padded;
            for (int t = 0; t < tokens; t++)
            {
                long token = (long)b * tokens + t, source = (token * heads + h) * 3 * d, position = cacheHead + (long)(job->Past + t) * d;
                float* cos = job->Cos + token * rotary, sin = job->Sin + token * rotary;
                RotaryEmbedding.RotateFrom(job->Projected, job->IsBFloat16, source, cos, sin, d, rotary, query);
                for (int i = 0; i < d; i++) transposed[(long)i * padded + t] = query[i];
                RotaryEmbedding.RotateFrom(job->Projected, job->IsBFloat16, source + d, cos, sin, d, rotary, job->Keys + position);
                if (job->IsBFloat16)
                    new ReadOnlySpan<ushort>((ushort*)job->Projected + source + 2 * d, d).CopyTo(new Span<ushort>((ushort*)job->Values + position, d));
                else
                    new ReadOnlySpan<float>((float*)job->Projected + source + 2 * d, d).CopyTo(new Span<float>((float*)job->Values + position, d));
            }
            // The padding lanes of the last block hold zeros, so their scores are finite and simply unused.
            for (int i = 0; i < d; i++) new Span<float>(transposed + (long)i * padded + tokens, padded - tokens).Clear();
        }
    }

    private static void Attend(Job* job)
    {
        switch (job->Variant)
        {
            case ChunkAttentionVariant.Vector512: Attend<FloatLanes512, Vector512<float>>(job); break;
            case ChunkAttentionVariant.Vector256: Attend<FloatLanes256, Vector256<float>>(job); break;
            default: Attend<FloatLanes128, Vector128<float>>(job); break;
        }
    }

    /// <summary>The vectors of queries in a block, a constant to the JIT, which drops the unused accumulators.</summary>
    private interface IBlockVectors
    {
        static abstract int Count { get; }
    }

    private readonly struct OneVector : IBlockVectors
    {
        public static int Count => 1;
    }

    private readonly struct TwoVectors : IBlockVectors
    {
        public static int Count => 2;
    }

    private readonly struct ThreeVectors : IBlockVectors
    {
        public static int Count => 3;
    }

    /// <summary>Per (batch row, head, block of queries): the online softmax over blocks of keys, then the context rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Attend<TLanes, TVector>(Job* job) where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged
    {
        int d = job->HeadSize, heads = job->Heads, blocks = job->Blocks, blockQueries = job->BlockQueries, padded = job->PaddedTokens;
        float* scratch = job->Scratch + (Interlocked.Increment(ref job->NextScratch) - 1) * job->ScratchFloats;
        float* scores = scratch, maxima = scores + KeyBlock * blockQueries, sums = maxima + blockQueries, factors = sums + blockQueries;
        float* context = factors + blockQueries, widened = context + (long)blockQueries * d;
        int unit;
        while ((unit = Interlocked.Increment(ref job->NextUnit) - 1) < job->Units)
        {
            int block = unit % blocks, head = unit / blocks, b = head / heads, h = head % heads;
            int first = block * blockQueries, count = Math.Min(blockQueries, job->Tokens - first);
            int visible = job->Past + first + count;
            long cacheHead = b * job->BatchStride + h * job->HeadStride;
            float* queries = job->Queries + (long)head * d * padded + first;
            float* keys = job->Keys + cacheHead;

            new Span<float>(maxima, blockQueries).Fill(float.NegativeInfinity);
            new Span<float>(sums, blockQueries).Clear();
            new Span<float>(context, blockQueries * d).Clear();
            for (int start = 0; start < visible; start += KeyBlock)
            {
                int n = Math.Min(KeyBlock, visible - start);
                int shift = start - job->Past - first;
                switch (blockQueries / TLanes.Count)
                {
                    case 1: Scores<TLanes, TVector, OneVector>(queries, padded, keys + (long)start * d, n, d, shift, job->Scale, scores); break;
                    case 2: Scores<TLanes, TVector, TwoVectors>(queries, padded, keys + (long)start * d, n, d, shift, job->Scale, scores); break;
                    default: Scores<TLanes, TVector, ThreeVectors>(queries, padded, keys + (long)start * d, n, d, shift, job->Scale, scores); break;
                }
                Exponentiate<TLanes, TVector>(scores, blockQueries, n, maxima, sums, factors);
                for (int q = 0; q < count; q++)
                    if (factors[q] != 1f) Scale<TLanes, TVector>(context + (long)q * d, d, factors[q]);
                float* values;
                if (job->IsBFloat16)
                {
                    BFloat16Bits.Widen(new ReadOnlySpan<ushort>((ushort*)job->Values + cacheHead + (long)start * d, n * d), new Span<float>(widened, n * d));
                    values = widened;
                }
                else values = (float*)job->Values + cacheHead + (long)start * d;
                Accumulate<TLanes, TVector>(scores, blockQueries, values, n, d, context, count);
            }

            for (int q = 0; q < count; q++)
            {
                long output = (((long)b * job->Tokens + first + q) * heads + h) * d;
                float* row = context + (long)q * d;
                float total = sums[q];
                if (job->IsBFloat16)
                    for (int i = 0; i < d; i++) ((ushort*)job->Output)[output + i] = BFloat16Bits.Round(row[i] / total);
                else
                    for (int i = 0; i < d; i++) ((float*)job->Output)[output + i] = row[i] / total;
            }
        }
    }

    /// <summary>
    /// <c>scores[j, g] = (q_g · k_j) / √d</c> for <paramref name="n"/> keys and the block's query lanes <c>g</c>, −∞ where
    /// key <c>j</c> lies after query <c>g</c> (<c>g &lt; shift + j</c>). Tiles of four keys × the block's query vectors:
    /// per element of the head, up to three query loads and four key broadcasts feed up to twelve multiply-adds.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores<TLanes, TVector, TBlock>(float* queries, int stride, float* keys, int n, int d, int shift, float scale, float* scores)
        where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged where TBlock : struct, IBlockVectors
    {
        int lanes = TLanes.Count, width = TBlock.Count * lanes;
        int j = 0;
        for (; j + 4 <= n; j += 4)
        {
            TVector a00 = default, a01 = default, a02 = default, a10 = default, a11 = default, a12 = default;
            TVector a20 = default, a21 = default, a22 = default, a30 = default, a31 = default, a32 = default;
            float* k0 = keys + (long)j * d, k1 = k0 + d, k2 = k1 + d, k3 = k2 + d, q = queries;
            for (int i = 0; i < d; i++, q += stride)
            {
                TVector x0 = TLanes.Load(q);
                TVector w0 = TLanes.Broadcast(k0[i]), w1 = TLanes.Broadcast(k1[i]), w2 = TLanes.Broadcast(k2[i]), w3 = TLanes.Broadcast(k3[i]);
                a00 = TLanes.MultiplyAdd(x0, w0, a00); a10 = TLanes.MultiplyAdd(x0, w1, a10);
                a20 = TLanes.MultiplyAdd(x0, w2, a20); a30 = TLanes.MultiplyAdd(x0, w3, a30);
                if (TBlock.Count > 1)
                {
                    TVector x1 = TLanes.Load(q + lanes);
                    a01 = TLanes.MultiplyAdd(x1, w0, a01); a11 = TLanes.MultiplyAdd(x1, w1, a11);
                    a21 = TLanes.MultiplyAdd(x1, w2, a21); a31 = TLanes.MultiplyAdd(x1, w3, a31);
                }
                if (TBlock.Count > 2)
                {
                    TVector x2 = TLanes.Load(q + 2 * lanes);
                    a02 = TLanes.MultiplyAdd(x2, w0, a02); a12 = TLanes.MultiplyAdd(x2, w1, a12);
                    a22 = TLanes.MultiplyAdd(x2, w2, a22); a32 = TLanes.MultiplyAdd(x2, w3, a32);
                }
            }
            StoreScores<TLanes, TVector, TBlock>(scores + (long)j * width, a00, a01, a02, shift + j, scale);
            StoreScores<TLanes, TVector, TBlock>(scores + (long)(j + 1) * width, a10, a11, a12, shift + j + 1, scale);
            StoreScores<TLanes, TVector, TBlock>(scores + (long)(j + 2) * width, a20, a21, a22, shift + j + 2, scale);
            StoreScores<TLanes, TVector, TBlock>(scores + (long)(j + 3) * width, a30, a31, a32, shift + j + 3, scale);
        }
        for (; j < n; j++)
        {
            TVector a0 = default, a1 = default, a2 = default;
            float* k = keys + (long)j * d, q = queries;
            for (int i = 0; i < d; i++, q += stride)
            {
                TVector w = TLanes.Broadcast(k[i]);
                a0 = TLanes.MultiplyAdd(TLanes.Load(q), w, a0);
                if (TBlock.Count > 1) a1 = TLanes.MultiplyAdd(TLanes.Load(q + lanes), w, a1);
                if (TBlock.Count > 2) a2 = TLanes.MultiplyAdd(TLanes.Load(q + 2 * lanes), w, a2);
            }
            StoreScores<TLanes, TVector, TBlock>(scores + (long)j * width, a0, a1, a2, shift + j, scale);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreScores<TLanes, TVector, TBlock>(float* row, TVector a0, TVector a1, TVector a2, int firstVisible, float scale)
        where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged where TBlock : struct, IBlockVectors
    {
        int lanes = TLanes.Count;
        TVector scales = TLanes.Broadcast(scale), limit = TLanes.Broadcast(firstVisible), hidden = TLanes.Broadcast(float.NegativeInfinity);
        // Query lane g sees this key from g = firstVisible on (causal mask).
        TLanes.Store(Mask<TLanes, TVector>(TLanes.Multiply(a0, scales), 0, firstVisible, limit, hidden), row);
        if (TBlock.Count > 1) TLanes.Store(Mask<TLanes, TVector>(TLanes.Multiply(a1, scales), lanes, firstVisible, limit, hidden), row + lanes);
        if (TBlock.Count > 2) TLanes.Store(Mask<TLanes, TVector>(TLanes.Multiply(a2, scales), 2 * lanes, firstVisible, limit, hidden), row + 2 * lanes);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector Mask<TLanes, TVector>(TVector scores, int firstLane, int firstVisible, TVector limit, TVector hidden)
        where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged =>
        firstVisible > firstLane ? TLanes.ReplaceWhereLess(TLanes.Indices(firstLane), limit, scores, hidden) : scores;

    /// <summary>
    /// The online softmax's step for one block of keys, per query lane: the new running maximum, the factor
    /// <c>exp(old − new)</c> that rescales what was summed before, and the scores replaced by <c>exp(score − new)</c>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Exponentiate<TLanes, TVector>(float* scores, int width, int n, float* maxima, float* sums, float* factors)
        where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged
    {
        int lanes = TLanes.Count;
        for (int v = 0; v < width; v += lanes)
        {
            TVector blockMax = TLanes.Broadcast(float.NegativeInfinity);
            for (int j = 0; j < n; j++) blockMax = TLanes.Max(blockMax, TLanes.Load(scores + (long)j * width + v));
            // Every lane sees key 0 in the first block, so the running maximum is finite from then on and exp never sees −∞ − −∞.
            TVector previous = TLanes.Load(maxima + v), maximum = TLanes.Max(previous, blockMax);
            TVector factor = TLanes.Exp(TLanes.Subtract(previous, maximum));
            TVector sum = TLanes.Multiply(TLanes.Load(sums + v), factor);
            for (int j = 0; j < n; j++)
            {
                float* p = scores + (long)j * width + v;
                TVector e = TLanes.Exp(TLanes.Subtract(TLanes.Load(p), maximum));
                TLanes.Store(e, p);
                sum = TLanes.Add(sum, e);
            }
            TLanes.Store(maximum, maxima + v);
            TLanes.Store(sum, sums + v);
            TLanes.Store(factor, factors + v);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scale<TLanes, TVector>(float* row, int d, float factor) where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged
    {
        var factors = TLanes.Broadcast(factor);
        int i = 0;
        for (; i + TLanes.Count <= d; i += TLanes.Count) TLanes.Store(TLanes.Multiply(TLanes.Load(row + i), factors), row + i);
        for (; i < d; i++) row[i] *= factor;
    }

    /// <summary>
    /// <c>context[g] += Σⱼ weights[j, g] · values[j]</c> for the block's first <paramref name="count"/> queries: tiles of
    /// four queries × two vectors of the head, each value load shared by four queries.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Accumulate<TLanes, TVector>(float* weights, int width, float* values, int n, int d, float* context, int count)
        where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged
    {
        int lanes = TLanes.Count, q = 0;
        for (; q + 4 <= count; q += 4)
        {
            float* c0 = context + (long)q * d, c1 = c0 + d, c2 = c1 + d, c3 = c2 + d;
            int i = 0;
            // With AVX-512's 32 registers a tile four vectors wide fits: half the broadcasts per multiply-add.
            if (TLanes.Count >= 16)
                for (; i + 4 * lanes <= d; i += 4 * lanes)
                    AccumulateFourByFour<TLanes, TVector>(weights + q, width, values + i, n, d, c0 + i);
            for (; i + 2 * lanes <= d; i += 2 * lanes)
            {
                TVector a00 = TLanes.Load(c0 + i), a01 = TLanes.Load(c0 + i + lanes), a10 = TLanes.Load(c1 + i), a11 = TLanes.Load(c1 + i + lanes);
                TVector a20 = TLanes.Load(c2 + i), a21 = TLanes.Load(c2 + i + lanes), a30 = TLanes.Load(c3 + i), a31 = TLanes.Load(c3 + i + lanes);
                float* v = values + i, w = weights + q;
                for (int j = 0; j < n; j++, v += d, w += width)
                {
                    TVector v0 = TLanes.Load(v), v1 = TLanes.Load(v + lanes);
                    TVector p = TLanes.Broadcast(w[0]);
                    a00 = TLanes.MultiplyAdd(v0, p, a00); a01 = TLanes.MultiplyAdd(v1, p, a01);
                    p = TLanes.Broadcast(w[1]);
                    a10 = TLanes.MultiplyAdd(v0, p, a10); a11 = TLanes.MultiplyAdd(v1, p, a11);
                    p = TLanes.Broadcast(w[2]);
                    a20 = TLanes.MultiplyAdd(v0, p, a20); a21 = TLanes.MultiplyAdd(v1, p, a21);
                    p = TLanes.Broadcast(w[3]);
                    a30 = TLanes.MultiplyAdd(v0, p, a30); a31 = TLanes.MultiplyAdd(v1, p, a31);
                }
                TLanes.Store(a00, c0 + i); TLanes.Store(a01, c0 + i + lanes); TLanes.Store(a10, c1 + i); TLanes.Store(a11, c1 + i + lanes);
                TLanes.Store(a20, c2 + i); TLanes.Store(a21, c2 + i + lanes); TLanes.Store(a30, c3 + i); TLanes.Store(a31, c3 + i + lanes);
            }
            for (int r = 0; r < 4; r++) AccumulateTail<TLanes, TVector>(weights + q + r, width, values, n, d, context + (long)(q + r) * d, i);
        }
        for (; q < count; q++) AccumulateTail<TLanes, TVector>(weights + q, width, values, n, d, context + (long)q * d, 0);
    }

    /// <summary>Four queries' <c>context[.., 0 .. 4 vectors] += Σⱼ weights[j, ..] · values[j, 0 .. 4 vectors]</c>; query rows are <paramref name="d"/> apart.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateFourByFour<TLanes, TVector>(float* weights, int width, float* values, int n, int d, float* context)
        where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged
    {
        int l = TLanes.Count;
        float* c0 = context, c1 = c0 + d, c2 = c1 + d, c3 = c2 + d;
        TVector a00 = TLanes.Load(c0), a01 = TLanes.Load(c0 + l), a02 = TLanes.Load(c0 + 2 * l), a03 = TLanes.Load(c0 + 3 * l);
        TVector a10 = TLanes.Load(c1), a11 = TLanes.Load(c1 + l), a12 = TLanes.Load(c1 + 2 * l), a13 = TLanes.Load(c1 + 3 * l);
        TVector a20 = TLanes.Load(c2), a21 = TLanes.Load(c2 + l), a22 = TLanes.Load(c2 + 2 * l), a23 = TLanes.Load(c2 + 3 * l);
        TVector a30 = TLanes.Load(c3), a31 = TLanes.Load(c3 + l), a32 = TLanes.Load(c3 + 2 * l), a33 = TLanes.Load(c3 + 3 * l);
        float* v = values, w = weights;
        for (int j = 0; j < n; j++, v += d, w += width)
        {
            TVector v0 = TLanes.Load(v), v1 = TLanes.Load(v + l), v2 = TLanes.Load(v + 2 * l), v3 = TLanes.Load(v + 3 * l);
            TVector p = TLanes.Broadcast(w[0]);
            a00 = TLanes.MultiplyAdd(v0, p, a00); a01 = TLanes.MultiplyAdd(v1, p, a01); a02 = TLanes.MultiplyAdd(v2, p, a02); a03 = TLanes.MultiplyAdd(v3, p, a03);
            p = TLanes.Broadcast(w[1]);
            a10 = TLanes.MultiplyAdd(v0, p, a10); a11 = TLanes.MultiplyAdd(v1, p, a11); a12 = TLanes.MultiplyAdd(v2, p, a12); a13 = TLanes.MultiplyAdd(v3, p, a13);
            p = TLanes.Broadcast(w[2]);
            a20 = TLanes.MultiplyAdd(v0, p, a20); a21 = TLanes.MultiplyAdd(v1, p, a21); a22 = TLanes.MultiplyAdd(v2, p, a22); a23 = TLanes.MultiplyAdd(v3, p, a23);
            p = TLanes.Broadcast(w[3]);
            a30 = TLanes.MultiplyAdd(v0, p, a30); a31 = TLanes.MultiplyAdd(v1, p, a31); a32 = TLanes.MultiplyAdd(v2, p, a32); a33 = TLanes.MultiplyAdd(v3, p, a33);
        }
        TLanes.Store(a00, c0); TLanes.Store(a01, c0 + l); TLanes.Store(a02, c0 + 2 * l); TLanes.Store(a03, c0 + 3 * l);
        TLanes.Store(a10, c1); TLanes.Store(a11, c1 + l); TLanes.Store(a12, c1 + 2 * l); TLanes.Store(a13, c1 + 3 * l);
        TLanes.Store(a20, c2); TLanes.Store(a21, c2 + l); TLanes.Store(a22, c2 + 2 * l); TLanes.Store(a23, c2 + 3 * l);
        TLanes.Store(a30, c3); TLanes.Store(a31, c3 + l); TLanes.Store(a32, c3 + 2 * l); TLanes.Store(a33, c3 + 3 * l);
    }

    /// <summary>One query's <c>context[from ..] += Σⱼ weights[j] · values[j, from ..]</c>, a vector at a time, then element by element.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateTail<TLanes, TVector>(float* weights, int width, float* values, int n, int d, float* context, int from)
        where TLanes : struct, IFloatLanes<TVector> where TVector : unmanaged
    {
        int lanes = TLanes.Count, i = from;
        for (; i + lanes <= d; i += lanes)
        {
            TVector a = TLanes.Load(context + i);
            float* v = values + i, w = weights;
            for (int j = 0; j < n; j++, v += d, w += width) a = TLanes.MultiplyAdd(TLanes.Load(v), TLanes.Broadcast(*w), a);
            TLanes.Store(a, context + i);
        }
        for (; i < d; i++)
        {
            float a = context[i];
            float* v = values + i, w = weights;
            for (int j = 0; j < n; j++, v += d, w += width) a = MathF.FusedMultiplyAdd(*v, *w, a);
            context[i] = a;
        }
    }
}

/// <summary>The vector width of <see cref="ChunkAttention"/>.</summary>
internal enum ChunkAttentionVariant
{
    /// <summary>128-bit portable vectors: NEON on Arm64, SSE on x64.</summary>
    Vector128,

    /// <summary>256-bit portable vectors: AVX2 on x64.</summary>
    Vector256,

    /// <summary>512-bit portable vectors: AVX-512 on x64.</summary>
    Vector512,
}
