using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// One GPT-NeoX layer for one new token of one sequence (a decode step) with float16 weights and bfloat16 activations,
/// in a single parallel region on libtorch's OpenMP team: LayerNorm, the fused query/key/value projection, attention
/// with its cache write, the output projection, LayerNorm and the MLP, with a team barrier wherever a stage reads what
/// other threads wrote.
/// </summary>
/// <remarks>
/// Why: run as separate calls, the same stages cost about eighty microseconds a layer besides their arithmetic (five
/// parallel regions, two LayerNorms and an add in libtorch, a tensor for every intermediate); for models of
/// pythia-160m's size that is as much as streaming the weights. Each stage here is the kernel the separate call runs
/// (<see cref="RowLayerNorm"/>, <see cref="Float16Gemv"/>, <see cref="DecodeAttention"/>) and rounds to bfloat16 where
/// the separate operations do, so the two paths differ only where LayerNorm's statistics round differently. Every
/// thread normalizes the row into its own buffer, which costs less than another barrier.
/// </remarks>
internal static unsafe class DecodeLayer
{
    /// <summary>A layer's parameters: bfloat16 LayerNorm weights and biases, float16 weights <c>[out, in]</c>, bfloat16 biases (null where the layer has none).</summary>
    internal struct Weights
    {
        public ushort* InputNormWeight, InputNormBias, PostAttentionNormWeight, PostAttentionNormBias;
        public ushort* QueryKeyValue, QueryKeyValueBias, Dense, DenseBias, Up, UpBias, Down, DownBias;
    }

    /// <summary>A layer's sizes and form.</summary>
    internal readonly record struct Shape(int Hidden, int Intermediate, int Heads, int HeadSize, int RotaryDims, double LayerNormEps, bool ParallelResidual);

    private struct Job
    {
        public Weights Weights;
        public Shape Shape;
        public ushort* Input, Output;
        public ushort* Projected, Context, Attended, Inner;
        public Float16Gemv.Job QueryKeyValue, Dense, Up, Down;
        public DecodeAttention.Job Attention;
        public DecodeAttention.CacheRow Cache;
        public int OutOfRange;
    }

    /// <summary>
    /// The layer's output for <paramref name="hidden"/> (<c>[1, 1, hidden]</c> bfloat16, contiguous, CPU) at position
    /// <paramref name="past"/>, with the rotary rows <paramref name="cos"/>, <paramref name="sin"/> (<c>rotary_dims</c>
    /// float32 each) and the layer's cache storage <paramref name="keys"/> (float32) and <paramref name="values"/>
    /// (bfloat16), <c>[1, heads, ≥ past + 1, head_size]</c>, where the new key and value are written. Returns false for
    /// anything else, and also after running when an activation was outside the scaled GEMV's range (NaN, infinite or
    /// beyond 2⁶⁴): the caller then runs the separate operations, which write the same key and value again.
    /// </summary>
    public static bool TryStep(Tensor hidden, in Weights weights, Shape shape, Tensor cos, Tensor sin, Tensor keys, Tensor values, int past,
        Float16GemvVariant variant, Float16Widening widening, out Tensor output)
    {
        output = null!;
        if (!Accepts(hidden, shape, cos, sin, keys, values, past) || !Float16Gemv.IsAccelerated(variant)) return false;
        int h = shape.Hidden, i = shape.Intermediate;
        // Scratch of the stages that other threads read: the projection, the context, the attention's sum, the MLP's inner row.
        var scratch = ArrayPool<ushort>.Shared.Rent(3 * h + h + h + i);
        try
        {
            var result = empty([1, 1, h], ScalarType.BFloat16);
            fixed (ushort* buffers = scratch)
            fixed (byte* input = hidden.bytes)
            fixed (byte* outputBytes = result.bytes)
            fixed (byte* cosBytes = cos.bytes)
            fixed (byte* sinBytes = sin.bytes)
            {
                int threads = get_num_threads();
                var job = new Job
                {
                    Weights = weights, Shape = shape, Input = (ushort*)input, Output = (ushort*)outputBytes,
                    Projected = buffers, Context = buffers + 3 * h, Attended = buffers + 4 * h, Inner = buffers + 5 * h,
                    Cache = DecodeAttention.RowOf(keys, values, past),
                };
                Float16Gemv.Job Product(ushort* weight, ushort* bias, void* output, int rows, int columns) => new()
                {
                    Weight = weight, Bias = bias, BiasIsBFloat16 = true, Output = output, OutputIsBFloat16 = true, Rows = rows, Columns = columns,
                    Claims = new RowClaims(rows, threads, 16), Variant = variant, Widening = widening,
                };
                job.QueryKeyValue = Product(weights.QueryKeyValue, weights.QueryKeyValueBias, job.Projected, 3 * h, h);
                job.Dense = Product(weights.Dense, weights.DenseBias, job.Attended, h, h);
                job.Up = Product(weights.Up, weights.UpBias, job.Inner, i, h);
                job.Up.Gelu = true;
                job.Down = Product(weights.Down, weights.DownBias, job.Output, h, i);
                // The residual stream: x + attn(ln1(x)) + mlp(ln2(x)) in parallel, else x + attn(ln1(x)), then + mlp(ln2(that)).
                if (shape.ParallelResidual)
                {
                    job.Down.Residual = job.Attended;
                    job.Down.SecondResidual = job.Input;
                }
                else
                {
                    job.Dense.Residual = job.Input;
                    job.Down.Residual = job.Attended;
                }
                job.Attention = DecodeAttention.OneRow(job.Projected, (float*)cosBytes, (float*)sinBytes, &job.Cache, job.Context,
                    shape.Heads, shape.HeadSize, shape.RotaryDims);
                LibTorchOpenMp.Run(&RunStages, &job, threads);
                if (job.OutOfRange != 0)
                {
                    result.Dispose();
                    return false;
                }
            }
            output = result;
            return true;
        }
        finally
        {
            ArrayPool<ushort>.Shared.Return(scratch);
        }
    }

    /// <summary>Whether <see cref="TryStep"/> takes these arguments.</summary>
    private static bool Accepts(Tensor hidden, Shape shape, Tensor cos, Tensor sin, Tensor keys, Tensor values, int past)
    {
        static bool OnCpuContiguous(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();
        bool RotaryRow(Tensor t) => OnCpuContiguous(t) && t.dtype == ScalarType.Float32 && t.numel() == shape.RotaryDims;
        // The attention stage's loops are written for 256-bit vectors, as DecodeAttention requires them.
        return LibTorchOpenMp.IsAvailable && Vector256.IsHardwareAccelerated
            && OnCpuContiguous(hidden) && hidden.dtype == ScalarType.BFloat16 && hidden.numel() == shape.Hidden
            && shape.Heads * shape.HeadSize == shape.Hidden && shape.RotaryDims % 2 == 0 && shape.RotaryDims <= shape.HeadSize
            && RotaryRow(cos) && RotaryRow(sin) && past >= 0 && past < DecodeAttention.MaxKeys
            && DecodeAttention.HoldsPositions(keys, ScalarType.Float32, 1, shape.Heads, shape.HeadSize, past + 1)
            && DecodeAttention.HoldsPositions(values, ScalarType.BFloat16, 1, shape.Heads, shape.HeadSize, past + 1);
    }

    [UnmanagedCallersOnly]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunStages(void* state)
    {
        var job = (Job*)state;
        var shape = job->Shape;
        ref var w = ref job->Weights;
        // This thread's copy of the activations the current product reads, scaled for Float16Gemv.
        float* activations = stackalloc float[Math.Max(shape.Hidden, shape.Intermediate)];

        Normalize(job, job->Input, w.InputNormWeight, w.InputNormBias, activations);
        Float16Gemv.MultiplyClaimed(&job->QueryKeyValue, activations);
        LibTorchOpenMp.Barrier();

        DecodeAttention.StepHeads(&job->Attention);
        LibTorchOpenMp.Barrier();

        Scale(job, job->Context, shape.Hidden, activations);
        Float16Gemv.MultiplyClaimed(&job->Dense, activations);
        LibTorchOpenMp.Barrier();

        Normalize(job, shape.ParallelResidual ? job->Input : job->Attended, w.PostAttentionNormWeight, w.PostAttentionNormBias, activations);
        Float16Gemv.MultiplyClaimed(&job->Up, activations);
        LibTorchOpenMp.Barrier();

        Scale(job, job->Inner, shape.Intermediate, activations);
        Float16Gemv.MultiplyClaimed(&job->Down, activations);
    }

    private static void Normalize(Job* job, ushort* row, ushort* weight, ushort* bias, float* destination)
    {
        RowLayerNorm.Apply(row, weight, bias, job->Shape.LayerNormEps, job->Shape.Hidden, destination);
        if (!Float16Gemv.ScaleInPlace(new Span<float>(destination, job->Shape.Hidden))) Volatile.Write(ref job->OutOfRange, 1);
    }

    private static void Scale(Job* job, ushort* row, int length, float* destination)
    {
        var values = new Span<float>(destination, length);
        BFloat16Bits.Widen(new ReadOnlySpan<ushort>(row, length), values);
        if (!Float16Gemv.ScaleInPlace(values)) Volatile.Write(ref job->OutOfRange, 1);
    }
}
