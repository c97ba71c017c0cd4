using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// One GPT-NeoX layer for one new token of one sequence (a decode step) with float16, LLM.int8() or bitsandbytes 4-bit
/// weights and bfloat16 activations, in a single parallel region on libtorch's OpenMP team: LayerNorm, the fused
/// query/key/value projection, attention with its cache write, the output projection, LayerNorm and the MLP, with a team
/// barrier wherever a stage reads what other threads wrote.
/// </summary>
/// <remarks>
/// Why: run as separate calls, the same stages cost about eighty microseconds a layer besides their arithmetic (five
/// parallel regions, two LayerNorms and an add in libtorch, a tensor for every intermediate); for models of
/// pythia-160m's size that is as much as streaming the weights. Each stage here is the kernel the separate call runs
/// (<see cref="RowLayerNorm"/>, <see cref="Float16Gemv"/>, <see cref="Int8Gemv"/> with <see cref="RowwiseInt8"/>'s
/// quantization and rescale, <see cref="Bnb4BitGemv"/>'s integer variants, <see cref="DecodeAttention"/>) and rounds to
/// bfloat16 where the separate operations do, so the two paths differ only where LayerNorm's statistics round
/// differently. Every thread normalizes (and for int8 and 4-bit quantizes) the row into its own buffer, which costs less
/// than another barrier.
/// </remarks>
internal static unsafe class DecodeLayer
{
    /// <summary>A layer's parameters: bfloat16 LayerNorm weights and biases, and its four products.</summary>
    internal struct Weights
    {
        public ushort* InputNormWeight, InputNormBias, PostAttentionNormWeight, PostAttentionNormBias;
        public Product QueryKeyValue, Dense, Up, Down;
    }

    /// <summary>
    /// One linear layer: a float16 weight <c>[out, in]</c> with a bfloat16 or float32 bias, an LLM.int8() weight (int8
    /// <c>[out, in]</c>, a float32 scale per row, a float32 bias) with its outlier threshold, or a bitsandbytes 4-bit
    /// weight (<see cref="Bnb4"/>, where <see cref="Weight"/> is unused; a float32 bias) with the integer variant that
    /// multiplies it. A bias may be null.
    /// </summary>
    internal struct Product
    {
        public void* Weight;
        public void* Bias;
        public bool BiasIsBFloat16;
        public bool IsInt8;
        public float* WeightScale;
        public double Threshold;
        public bool IsBnb4;
        public Bnb4BitGemv.DecodeWeight Bnb4;
    }

    /// <summary>A layer's sizes and form.</summary>
    internal readonly record struct Shape(int Hidden, int Intermediate, int Heads, int HeadSize, int RotaryDims, double LayerNormEps, bool ParallelResidual);

    private struct Job
    {
        public Weights Weights;
        public Shape Shape;
        public ushort* Input, Output;
        public ushort* Projected, Context, Attended, Inner;
        public Stage QueryKeyValue, Dense, Up, Down;
        public DecodeAttention.Job Attention;
        public DecodeAttention.CacheRow Cache;
        public int OutOfRange;

        /// <summary>The vector width of the row steps (LayerNorm, widening, int8 quantization and rescale) and of the attention.</summary>
        public LaneWidth Lanes;
    }

    /// <summary>A product's work: the float16 GEMV's job, the int8 one's, or the 4-bit one's (whose epilogue is <see cref="Float16"/>'s).</summary>
    private struct Stage
    {
        public bool IsInt8;
        public bool IsBnb4;
        public double Threshold;
        public Float16Gemv.Job Float16;
        public Int8Job Int8;
        public Bnb4BitGemv.Job Bnb4;
    }

    /// <summary>An int8 product with the rescale, bias, GELU and residuals of <see cref="RowwiseInt8.RescaleBlock"/>, rows claimed by the threads.</summary>
    private struct Int8Job
    {
        public sbyte* Weight;
        public float* WeightScale, Bias;
        public ushort* Output, Residual, SecondResidual;
        public bool Gelu;
        public int Rows, Columns;
        public RowClaims Claims;
        public Int8GemvVariant Variant;
    }

    /// <summary>
    /// The layer's output for <paramref name="hidden"/> (<c>[1, 1, hidden]</c> bfloat16, contiguous, CPU) at position
    /// <paramref name="past"/>, with the rotary rows <paramref name="cos"/>, <paramref name="sin"/> (<c>rotary_dims</c>
    /// float32 each) and the layer's cache storage <paramref name="keys"/> (float32) and <paramref name="values"/>
    /// (bfloat16), <c>[1, heads, ≥ past + 1, head_size]</c>, where the new key and value are written. Returns false for
    /// anything else, and also after running when an activation was outside the scaled GEMV's range (NaN, infinite or
    /// beyond 2⁶⁴) or an int8 row over its outlier threshold: the caller then runs the separate operations, which write
    /// the same key and value again.
    /// </summary>
    /// <remarks>
    /// <paramref name="float16"/> and <paramref name="int8"/> are the kernels' widths for the products of each kind, which
    /// must be accelerated where such a product is present; int8 rows whose activations exceed the threshold decline too.
    /// A 4-bit product's integer variant is its own (<see cref="Bnb4BitGemv.DecodeWeight.Variant"/>) and must run here on
    /// its rows (<see cref="Bnb4BitGemv.RunsForDecode"/>).
    /// </remarks>
    public static bool TryStep(Tensor hidden, in Weights weights, Shape shape, Tensor cos, Tensor sin, Tensor keys, Tensor values, int past,
        Float16GemvVariant? float16, Float16Widening widening, Int8GemvVariant? int8, out Tensor output)
    {
        output = null!;
        static bool IsFloat16(in Product p) => !p.IsInt8 && !p.IsBnb4;
        static bool Bnb4Runs(in Product p, int columns) => !p.IsBnb4 || Bnb4BitGemv.RunsForDecode(p.Bnb4.Variant, columns);
        bool anyFloat16 = IsFloat16(weights.QueryKeyValue) || IsFloat16(weights.Dense) || IsFloat16(weights.Up) || IsFloat16(weights.Down);
        bool anyInt8 = weights.QueryKeyValue.IsInt8 || weights.Dense.IsInt8 || weights.Up.IsInt8 || weights.Down.IsInt8;
        if (!Bnb4Runs(weights.QueryKeyValue, shape.Hidden) || !Bnb4Runs(weights.Dense, shape.Hidden) || !Bnb4Runs(weights.Up, shape.Hidden)
            || !Bnb4Runs(weights.Down, shape.Intermediate))
            return false;
        if (!Accepts(hidden, shape, cos, sin, keys, values, past)
            || (anyFloat16 && (float16 is not { } f || !Float16Gemv.IsAccelerated(f)))
            || (anyInt8 && (int8 is not { } i8 || i8 == Int8GemvVariant.AvxVnni || !Int8Gemv.IsAccelerated(i8))))
            return false;
        int h = shape.Hidden, i = shape.Intermediate;
        // Scratch of the stages that other threads read: the projection, the attention context, the attention block's output, the MLP's inner row.
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
                var attention = DecodeAttention.DefaultVariant!.Value;
                var job = new Job
                {
                    Weights = weights, Shape = shape, Input = (ushort*)input, Output = (ushort*)outputBytes,
                    Projected = buffers, Context = buffers + 3 * h, Attended = buffers + 4 * h, Inner = buffers + 5 * h,
                    Cache = DecodeAttention.RowOf(keys, values, past), Lanes = attention,
                };
                Stage StageFor(in Product product, ushort* output, int rows, int columns, bool gelu, ushort* residual, ushort* secondResidual) =>
                    product.IsBnb4
                        ? new Stage
                        {
                            IsBnb4 = true, Bnb4 = Bnb4BitGemv.DecodeJob(product.Bnb4, rows, columns, threads),
                            // The epilogue only: the float32 bias, the GELU, the residuals and the bfloat16 output.
                            Float16 = new Float16Gemv.Job
                            {
                                Bias = product.Bias, Output = output, OutputIsBFloat16 = true, Gelu = gelu, Residual = residual,
                                SecondResidual = secondResidual, Rows = rows, Columns = columns,
                            },
                        }
                        : product.IsInt8
                        ? new Stage
                        {
                            IsInt8 = true, Threshold = product.Threshold,
                            Int8 = new Int8Job
                            {
                                Weight = (sbyte*)product.Weight, WeightScale = product.WeightScale, Bias = (float*)product.Bias, Output = output,
                                Residual = residual, SecondResidual = secondResidual, Gelu = gelu, Rows = rows, Columns = columns,
                                Claims = new RowClaims(rows, threads, 16), Variant = int8!.Value,
                            },
                        }
                        : new Stage
                        {
                            Float16 = new Float16Gemv.Job
                            {
                                Weight = (ushort*)product.Weight, Bias = product.Bias, BiasIsBFloat16 = product.BiasIsBFloat16, Output = output,
                                OutputIsBFloat16 = true, Gelu = gelu, Residual = residual, SecondResidual = secondResidual, Rows = rows, Columns = columns,
                                Claims = new RowClaims(rows, threads, 16), Variant = float16!.Value, Widening = widening,
                            },
                        };
                // The residual stream: x + attn(ln1(x)) + mlp(ln2(x)) in parallel, else x + attn(ln1(x)), then + mlp(ln2(that)).
                bool parallel = shape.ParallelResidual;
                job.QueryKeyValue = StageFor(weights.QueryKeyValue, job.Projected, 3 * h, h, gelu: false, null, null);
                job.Dense = StageFor(weights.Dense, job.Attended, h, h, gelu: false, parallel ? null : job.Input, null);
                job.Up = StageFor(weights.Up, job.Inner, i, h, gelu: true, null, null);
                job.Down = StageFor(weights.Down, job.Output, h, i, gelu: false, job.Attended, parallel ? job.Input : null);
                job.Attention = DecodeAttention.OneRow(job.Projected, (float*)cosBytes, (float*)sinBytes, &job.Cache, job.Context,
                    shape.Heads, shape.HeadSize, shape.RotaryDims, attention);
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
        return LibTorchOpenMp.IsAvailable && DecodeAttention.DefaultVariant is not null
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
        // This thread's copy of the activations the current product reads (float32 values of bfloat16 ones), and of their int8 codes.
        int longest = Math.Max(shape.Hidden, shape.Intermediate);
        float* activations = stackalloc float[longest];
        sbyte* codes = stackalloc sbyte[longest];
        // And of their 16-bit integer form and block scales, for 4-bit products.
        short* quantized = stackalloc short[longest];
        float* inverseScales = stackalloc float[longest / 64 + 1];
        var own = new Buffers { Activations = activations, Codes = codes, Quantized = quantized, InverseScales = inverseScales };

        var lanes = job->Lanes;
        RowLayerNorm.Apply(job->Input, w.InputNormWeight, w.InputNormBias, shape.LayerNormEps, shape.Hidden, activations, lanes);
        Multiply(job, &job->QueryKeyValue, &own, shape.Hidden);
        LibTorchOpenMp.Barrier();

        DecodeAttention.StepHeads(&job->Attention);
        LibTorchOpenMp.Barrier();

        BFloat16Bits.Widen(new ReadOnlySpan<ushort>(job->Context, shape.Hidden), new Span<float>(activations, shape.Hidden), lanes);
        Multiply(job, &job->Dense, &own, shape.Hidden);
        LibTorchOpenMp.Barrier();

        RowLayerNorm.Apply(shape.ParallelResidual ? job->Input : job->Attended, w.PostAttentionNormWeight, w.PostAttentionNormBias,
            shape.LayerNormEps, shape.Hidden, activations, lanes);
        Multiply(job, &job->Up, &own, shape.Hidden);
        LibTorchOpenMp.Barrier();

        BFloat16Bits.Widen(new ReadOnlySpan<ushort>(job->Inner, shape.Intermediate), new Span<float>(activations, shape.Intermediate), lanes);
        Multiply(job, &job->Down, &own, shape.Intermediate);
    }

    /// <summary>A thread's own buffers: the activations as float32, and as the int8 and 4-bit products quantize them.</summary>
    private struct Buffers
    {
        public float* Activations;
        public sbyte* Codes;
        public short* Quantized;
        public float* InverseScales;
    }

    /// <summary>
    /// This thread's share of a product of the activations (<paramref name="length"/> float32 values, overwritten):
    /// scaled for the float16 GEMV, or quantized into the thread's buffers for the int8 and 4-bit ones. Activations a
    /// product cannot take mark the step as declined, and the thread skips the product.
    /// </summary>
    private static void Multiply(Job* job, Stage* stage, Buffers* own, int length)
    {
        float* activations = own->Activations;
        var values = new Span<float>(activations, length);
        if (stage->IsBnb4)
        {
            if (Bnb4BitGemv.TryQuantizeForDecode(activations, length, stage->Bnb4.Variant, own->Quantized, own->InverseScales))
                Bnb4BitGemv.MultiplyClaimedForDecode(&stage->Bnb4, own->Quantized, own->InverseScales, &stage->Float16);
            else Volatile.Write(ref job->OutOfRange, 1);
        }
        else if (!stage->IsInt8)
        {
            if (Float16Gemv.ScaleInPlace(values)) Float16Gemv.MultiplyClaimed(&stage->Float16, activations);
            else Volatile.Write(ref job->OutOfRange, 1);
        }
        else if (RowwiseInt8.TryQuantizeRow(values, stage->Threshold, new Span<sbyte>(own->Codes, length), out float scale, job->Lanes))
            MultiplyInt8(&stage->Int8, own->Codes, scale, job->Lanes);
        else Volatile.Write(ref job->OutOfRange, 1);
    }

    /// <summary>Claims runs of an int8 product's rows and computes each block's int32 sums, then its rescale and what follows it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MultiplyInt8(Int8Job* job, sbyte* codes, float scale, LaneWidth lanes)
    {
        const int Block = 64;
        int* sums = stackalloc int[Block];
        float* values = stackalloc float[Block];
        int columns = job->Columns;
        while (job->Claims.TryClaim(out int first, out int end))
            for (int start = first; start < end; start += Block)
            {
                int count = Math.Min(Block, end - start);
                for (int i = 0; i < count; i++)
                    sums[i] = Int8Gemv.Dot(job->Variant, job->Weight + (long)(start + i) * columns, codes, columns);
                static ReadOnlySpan<byte> Bytes(ushort* row, int start, int count) =>
                    row == null ? default : new ReadOnlySpan<byte>(row + start, count * sizeof(ushort));
                RowwiseInt8.RescaleBlock(new ReadOnlySpan<int>(sums, count), scale, new ReadOnlySpan<float>(job->WeightScale + start, count),
                    job->Bias == null ? default : new ReadOnlySpan<float>(job->Bias + start, count), job->Bias != null, job->Gelu, bfloat16: true,
                    Bytes(job->Residual, start, count), Bytes(job->SecondResidual, start, count), new Span<float>(values, count),
                    new Span<byte>(job->Output + start, count * sizeof(ushort)), lanes);
            }
    }
}
