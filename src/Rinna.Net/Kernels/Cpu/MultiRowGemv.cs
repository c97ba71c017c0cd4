using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// <c>x · Wᵀ + b</c> for a few rows of activations (2 to <see cref="MaxRows"/>: a continuous-batching decode step or a
/// short prompt) and a
/// float16 or float32 weight on the CPU, reading the weight once for all rows, in managed vector code on libtorch's
/// OpenMP threads, with the bias, the optional exact GELU and residual and the conversion to the activations' dtype in
/// the same pass (each rounded as <see cref="Float16Gemv"/> rounds them).
/// </summary>
/// <remarks>
/// Why: on a CPU a decode step is bound by reading the weights, so rows decoded together should cost about one row.
/// libtorch's answers for a handful of rows read them several times: its float16 path is one GEMV per row, and MKL's
/// float32 GEMM copies (packs) the whole weight on every call before multiplying, which for a few rows costs more than
/// the product (benchmarks/RESULTS.md). Here each weight row is loaded once and multiplied with four activation rows
/// per pass while it sits in L1. The variants are those of <see cref="Float16Gemv"/> and compute the same bits.
/// </remarks>
internal static unsafe class MultiRowGemv
{
    /// <summary>
    /// The most activation rows one call takes; larger ones are GEMMs and go to libtorch. Up to here reading each weight
    /// once and multiplying it in registers beats libtorch's float16 path (the weight converted to bfloat16 first, which
    /// costs more than a whole short prompt) and MKL's float32 GEMM (the weight copied before multiplying).
    /// </summary>
    public const int MaxRows = 32;

    private const int RowsPerPass = 4;

    /// <summary>The variant used: the widest the CPU runs in hardware (unlike one row, libtorch has nothing better for a few rows).</summary>
    public static Float16GemvVariant? DefaultVariant => Float16Gemv.WidestAccelerated;

    /// <summary>Whether the managed path runs for float16 weights: a variant and libtorch's libgomp.</summary>
    public static bool SupportsFloat16 { get; } = DefaultVariant is not null && LibTorchOpenMp.IsAvailable;


    /// <summary>Whether the managed path runs for float32 weights.</summary>
    public static bool SupportsFloat32 { get; } = DefaultVariant is not null && LibTorchOpenMp.IsAvailable;

    private enum WeightFormat
    {
        Float32,
        Float16Scaled,
        Float16Exact,
    }

    private struct Job
    {
        public byte* Weight;
        public WeightFormat Format;
        public bool LibTorchWidening;
        public float* Input;
        public int InputRows;
        public void* Bias;
        public bool BiasIsBFloat16;
        public void* Output;
        public bool OutputIsBFloat16;
        public bool Gelu;
        public void* Residual;
        public int Rows;
        public int Columns;
        public float OutputScale;
        public RowClaims Claims;
        public Float16GemvVariant Variant;

        /// <summary>Per-thread room for one group of weight rows widened to float32 (exact widening only), <see cref="ConvertedFloats"/> each.</summary>
        public float* Converted;
        public long ConvertedFloats;
        public int NextConverted;
    }

    /// <summary>
    /// Computes <c>x · Wᵀ + b</c> for <paramref name="x"/> <c>[..., K]</c> holding 2 to <see cref="MaxRows"/> rows (bfloat16 or
    /// float32, contiguous, CPU) and the contiguous <paramref name="weight"/> <c>[N, K]</c> (float16, or float32 with
    /// float32 activations), with an optional bias <c>[N]</c> in bfloat16 or float32; returns x's shape with N last, in
    /// x's dtype. Optionally the exact GELU of that, and a <paramref name="residual"/> of the output's shape added last.
    /// Returns false, doing nothing, for anything else. A float16 weight must hold no infinities or NaNs (the caller checks once).
    /// </summary>
    public static bool TryMultiply(Tensor x, Tensor weight, Tensor? bias, out Tensor result, bool gelu = false, Tensor? residual = null)
    {
        result = null!;
        bool supported = weight.dtype == ScalarType.Float16 ? SupportsFloat16 : SupportsFloat32;
        // The CPU's widening (Float16Gemv.Widening); the exact one widens each weight once, into float32 rows or blocks every pass reads.
        return supported && TryMultiply(x, weight, bias, out result, gelu, residual, DefaultVariant!.Value, Float16Gemv.Widening);
    }

    /// <summary>
    /// <see cref="TryMultiply(Tensor, Tensor, Tensor?, out Tensor, bool, Tensor?)"/> with a chosen variant, which must be
    /// accelerated, and a chosen float16 widening (ignored for float32 weights); for tests and benchmarks. With
    /// <paramref name="libTorchWidening"/> the exact widening converts through libtorch's F16C conversion
    /// (<see cref="LibTorchFloat16"/>) where it is found for the variant's width, else in managed code: the same values,
    /// the former in fewer instructions (benchmarks/RESULTS.md).
    /// </summary>
    internal static bool TryMultiply(Tensor x, Tensor weight, Tensor? bias, out Tensor result, bool gelu, Tensor? residual, Float16GemvVariant variant,
        Float16Widening widening, bool libTorchWidening = true)
    {
        result = null!;
        if (!Float16Gemv.IsAccelerated(variant) || !LibTorchOpenMp.IsAvailable || !Eligible(x, weight, bias, residual)) return false;
        int rows = (int)weight.size(0), columns = (int)weight.size(1), inputRows = (int)(x.numel() / columns);
        var format = weight.dtype != ScalarType.Float16 ? WeightFormat.Float32
            : widening == Float16Widening.Exact ? WeightFormat.Float16Exact : WeightFormat.Float16Scaled;
        int threads = get_num_threads();
        // Per-thread room for the widened weight rows, a whole number of cache lines each: rented here, not on the OpenMP
        // threads, where an allocation failure could not be reported, and pooled, since fresh pages cost more than the
        // product of a small layer.
        long convertedFloats = format == WeightFormat.Float16Exact ? ((long)WeightRowsPerPass(variant) * columns + 15) / 16 * 16 : 0;
        // Rows too long for pooled arrays stay with libtorch.
        if ((long)inputRows * columns > Array.MaxLength || threads * convertedFloats + 16 > Array.MaxLength) return false;
        var pooled = ArrayPool<float>.Shared.Rent(inputRows * columns);
        var convertedPool = convertedFloats == 0 ? null : ArrayPool<float>.Shared.Rent((int)(threads * convertedFloats + 16));
        try
        {
            var input = pooled.AsSpan(0, inputRows * columns);
            if (format == WeightFormat.Float16Scaled ? !Float16Gemv.ScaleInput(x, input) : !Float16Gemv.WidenInput(x, input)) return false;
            var output = empty(TensorShapes.WithLastDimension(x, rows), dtype: x.dtype);
            fixed (float* inputPointer = pooled)
            fixed (float* convertedPointer = convertedPool)
            fixed (byte* weightBytes = weight.bytes)
            fixed (byte* biasBytes = bias is null ? default : bias.bytes)
            fixed (byte* outputBytes = output.bytes)
            fixed (byte* residualBytes = residual is null ? default : residual.bytes)
            {
                var job = new Job
                {
                    Claims = new RowClaims(rows, threads, 16),
                    Weight = weightBytes, Format = format, Input = inputPointer, InputRows = inputRows,
                    Bias = biasBytes, BiasIsBFloat16 = bias?.dtype == ScalarType.BFloat16,
                    Output = outputBytes, OutputIsBFloat16 = x.dtype == ScalarType.BFloat16, Rows = rows, Columns = columns,
                    Gelu = gelu, Residual = residualBytes, Variant = variant, OutputScale = format == WeightFormat.Float16Scaled ? Float16Gemv.Up : 1f,
                    Converted = convertedPointer == null ? null : (float*)(((nint)convertedPointer + 63) & ~(nint)63), ConvertedFloats = convertedFloats,
                    LibTorchWidening = libTorchWidening && WidensThroughLibTorch(variant),
                };
                LibTorchOpenMp.Run(&RunRows, &job, threads);
            }
            result = output;
            return true;
        }
        finally
        {
            ArrayPool<float>.Shared.Return(pooled);
            if (convertedPool is not null) ArrayPool<float>.Shared.Return(convertedPool);
        }
    }

    private static bool Eligible(Tensor x, Tensor weight, Tensor? bias, Tensor? residual)
    {
        static bool OnCpuContiguous(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();
        if (!OnCpuContiguous(x) || x.dim() < 2 || x.dtype is not (ScalarType.BFloat16 or ScalarType.Float32)
            || !OnCpuContiguous(weight) || weight.dim() != 2 || weight.size(1) != x.size(-1) || weight.size(1) == 0
            || weight.numel() * weight.element_size() > int.MaxValue)
            return false;
        long inputRows = x.numel() / x.size(-1);
        bool weightFits = weight.dtype == ScalarType.Float16 || (weight.dtype == ScalarType.Float32 && x.dtype == ScalarType.Float32);
        return weightFits && inputRows >= 2 && inputRows <= MaxRows
            && (bias is null || (OnCpuContiguous(bias) && bias.dim() == 1 && bias.size(0) == weight.size(0)
                && bias.dtype is ScalarType.BFloat16 or ScalarType.Float32))
            && (residual is null || (OnCpuContiguous(residual) && residual.numel() == inputRows * weight.size(0) && residual.dtype == x.dtype));
    }

    [UnmanagedCallersOnly]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunRows(void* state)
    {
        var job = (Job*)state;
        float* sums = stackalloc float[MaxWeightRows * MaxRows];
        float** inputs = stackalloc float*[RowsPerPass];
        int columns = job->Columns;
        long rowBytes = (long)columns * (job->Format == WeightFormat.Float32 ? sizeof(float) : sizeof(ushort));
        int group = WeightRowsPerPass(job->Variant);
        var format = job->Format;
        float* converted = job->Converted == null ? null : job->Converted + (Interlocked.Increment(ref job->NextConverted) - 1) * job->ConvertedFloats;
        int block = converted == null ? 0 : BlockColumns(group, job->InputRows);
        // Accumulators carried from one block of columns to the next (MultiplyInBlocks), for every pass of a group; none
        // without blocks, so other calls do not clear 8 KB of stack.
        float* carried = stackalloc float[block > 0 ? MaxRows * MaxWeightRows * 16 : 0];
        while (job->Claims.TryClaim(out int first, out int end))
        {
            for (int row = first; row < end;)
            {
                // Weight rows in groups share each load of the activations (which, not the weight stream, bound this
                // kernel); the few rows left at the end of a claim go one at a time.
                int weightRows = end - row >= group ? group : 1;
                if (block > 0 && weightRows > 1)
                {
                    // A row shorter than a block is one block of its own length, so the group fits the room rented for it.
                    MultiplyInBlocks(job, row, weightRows, Math.Min(block, columns), converted, carried, inputs, sums);
                    row += weightRows;
                    continue;
                }
                byte* weight = job->Weight + row * rowBytes;
                long stride = rowBytes;
                if (converted != null)
                {
                    // The exact widening costs more than the products of a pass, so it is done once per weight, into
                    // float32 rows that every pass then reads from L1/L2, whatever the number of activation rows.
                    WidenRows(job, (ushort*)weight, columns, weightRows, columns, converted, columns);
                    weight = (byte*)converted;
                    stride = (long)columns * sizeof(float);
                    format = WeightFormat.Float32;
                }
                for (int pass = 0; pass < job->InputRows; pass += RowsPerPass)
                {
                    SetInputs(job, pass, 0, inputs);
                    if (format == WeightFormat.Float16Scaled) Dot<Float16Weight>(job->Variant, weightRows, weight, stride, inputs, columns, null, sums);
                    else
                    {
                        // While the passes run on the widened rows, memory would idle: they fetch the next group's
                        // float16 rows into L2 instead, 4 bytes per column and pass, for its widening to read there.
                        byte* next = null;
                        long offset = (long)(pass / RowsPerPass) * columns * 4;
                        if (converted != null && offset < weightRows * rowBytes) next = job->Weight + (row + weightRows) * rowBytes + offset;
                        long nextStride = 0;
                        if (converted == null && pass == 0 && row + 2 * weightRows <= end && job->Variant == Float16GemvVariant.Avx512)
                        {
                            // float32 rows come from memory or L3 in the first pass, one line at a time: meanwhile the
                            // pass fetches the next group into L1, a line of each of its rows per step (benchmarks/RESULTS.md;
                            // the 256-bit form keeps its page-ahead prefetch, unmeasured against this).
                            next = weight + weightRows * rowBytes;
                            nextStride = rowBytes;
                        }
                        Dot<Float32Weight>(job->Variant, weightRows, weight, stride, inputs, columns, null, sums, false, next, nextStride);
                    }
                    Emit(job, row, weightRows, pass, sums);
                }
                row += weightRows;
            }
        }
    }

    /// <summary>
    /// The product of a group of float16 weight rows with every activation row, through the exact widening, a block of
    /// columns at a time: each block of the group is widened into L1 and multiplied with every pass of activation rows
    /// while both stay there; the accumulators carry over from block to block, so the sums are those of one pass over
    /// the whole row.
    /// </summary>
    /// <remarks>
    /// Why: widened whole, a group's rows and the activations of a pass outgrow L1, and every pass then streams both from
    /// L2 at well under the FMA rate (benchmarks/RESULTS.md).
    /// </remarks>
    private static void MultiplyInBlocks(Job* job, int row, int weightRows, int block, float* converted, float* carried, float** inputs, float* sums)
    {
        int columns = job->Columns, passes = (job->InputRows + RowsPerPass - 1) / RowsPerPass;
        int perPass = weightRows * RowsPerPass * 16;
        var weight = (ushort*)(job->Weight + (long)row * columns * sizeof(ushort));
        long nextBytes = (long)weightRows * columns * sizeof(ushort);
        for (int start = 0; start < columns; start += block)
        {
            int length = Math.Min(block, columns - start);
            bool last = start + length == columns;
            WidenRows(job, weight + start, columns, weightRows, length, converted, block);
            for (int pass = 0; pass < passes; pass++)
            {
                SetInputs(job, pass * RowsPerPass, start, inputs);
                float* carry = carried + pass * perPass;
                // While the passes run on widened rows in L1, memory would idle: they fetch the next group's float16
                // rows into L2 instead, a cache line per vector step, for the group's widening to find there.
                long offset = ((long)start * passes + (long)pass * length) * sizeof(float);
                byte* next = offset < nextBytes ? (byte*)(weight + (long)weightRows * columns) + offset : null;
                Dot<Float32Weight>(job->Variant, weightRows, (byte*)converted, (long)block * sizeof(float), inputs, length, carry, last ? sums + pass * weightRows * RowsPerPass : null, start > 0, next);
            }
        }
        for (int pass = 0; pass < passes; pass++) Emit(job, row, weightRows, pass * RowsPerPass, sums + pass * weightRows * RowsPerPass);
    }

    /// <summary>
    /// Columns per block of <see cref="MultiplyInBlocks"/>: a block of the group's widened rows and of every activation
    /// row in half of a 48 KiB L1 (AMD's 32 KiB then holds them with room to spare), a whole number of cache lines; or 0,
    /// whole rows, where that leaves under 512 columns (past 8 to 12 activation rows), too few for the accumulators
    /// carried between blocks to pay (benchmarks/RESULTS.md).
    /// </summary>
    private static int BlockColumns(int weightRows, int inputRows)
    {
        int block = 24 * 1024 / sizeof(float) / (weightRows + inputRows) / 64 * 64;
        return block >= 512 ? block : 0;
    }

    /// <summary><paramref name="count"/> float16 rows of <paramref name="length"/> values, <paramref name="sourceStride"/> apart, widened exactly into float32 rows <paramref name="destinationStride"/> apart.</summary>
    private static void WidenRows(Job* job, ushort* source, int sourceStride, int count, int length, float* destination, int destinationStride)
    {
        for (int w = 0; w < count; w++)
        {
            ushort* from = source + (long)w * sourceStride;
            float* to = destination + (long)w * destinationStride;
            if (job->LibTorchWidening) LibTorchFloat16.Widen(Width(job->Variant), from, to, length);
            else WidenExact(job->Variant, from, to, length);
        }
    }

    /// <summary>The four activation rows of the pass from row <paramref name="pass"/>, from column <paramref name="start"/>; a short last pass repeats its first row, whose sums are not written.</summary>
    private static void SetInputs(Job* job, int pass, int start, float** inputs)
    {
        int count = Math.Min(RowsPerPass, job->InputRows - pass);
        for (int i = 0; i < RowsPerPass; i++) inputs[i] = job->Input + (long)(pass + (i < count ? i : 0)) * job->Columns + start;
    }

    /// <summary>Writes the outputs of a pass's sums (<c>sums[w · 4 + i]</c>): bias, GELU, residual and rounding.</summary>
    private static void Emit(Job* job, int row, int weightRows, int pass, float* sums)
    {
        int count = Math.Min(RowsPerPass, job->InputRows - pass);
        if (weightRows > 1 && Vector128.IsHardwareAccelerated)
        {
            EmitGroup(job, row, weightRows, pass, count, sums);
            return;
        }
        for (int w = 0; w < weightRows; w++)
            for (int i = 0; i < count; i++)
                sums[w * RowsPerPass + i] = Prepare(job, row + w, sums[w * RowsPerPass + i]);
        if (job->Gelu) ExactGelu.Apply(new Span<float>(sums, weightRows * RowsPerPass));
        for (int w = 0; w < weightRows; w++)
            for (int i = 0; i < count; i++)
                Store(job, (long)(pass + i) * job->Rows + row + w, sums[w * RowsPerPass + i]);
    }

    /// <summary>
    /// <see cref="Emit"/> for a group of 2 or 4 weight rows, whose outputs for one activation row lie side by side (as do
    /// their biases): the same operations on the group's lanes at once, so the same bits.
    /// </summary>
    /// <remarks>
    /// Why: one output at a time, the bias, GELU, residual and rounding cost about half as much as the products for the
    /// short rows of small models, and the GELU ran for every lane of a pass, used or not (benchmarks/RESULTS.md).
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void EmitGroup(Job* job, int row, int weightRows, int pass, int count, float* sums)
    {
        bool four = weightRows == 4, bfloat16 = job->OutputIsBFloat16;
        var scale = Vector128.Create(job->OutputScale);
        var bias = job->Bias == null ? default
            : job->BiasIsBFloat16 ? WidenBFloat16((ushort*)job->Bias + row, four) : LoadLanes((float*)job->Bias + row, four);
        for (int i = 0; i < count; i++)
        {
            var value = (four ? Vector128.Create(sums[i], sums[4 + i], sums[8 + i], sums[12 + i]) : Vector128.Create(sums[i], sums[4 + i], 0, 0)) * scale;
            // No bias is no addition, not + 0, which would turn −0 into +0.
            if (job->Bias != null) value += bias;
            if (job->Gelu) value = ExactGelu.Apply(ToOutput(value, bfloat16));
            long at = (long)(pass + i) * job->Rows + row;
            if (job->Residual != null)
                value = ToOutput(value, bfloat16) + (bfloat16 ? WidenBFloat16((ushort*)job->Residual + at, four) : LoadLanes((float*)job->Residual + at, four));
            if (bfloat16)
            {
                var bits = Vector128.Narrow(RoundToBFloat16(value), default).AsUInt64().ToScalar();
                if (four) Unsafe.WriteUnaligned((ushort*)job->Output + at, bits);
                else Unsafe.WriteUnaligned((ushort*)job->Output + at, (uint)bits);
            }
            else if (four) value.Store((float*)job->Output + at);
            else Unsafe.WriteUnaligned((float*)job->Output + at, value.AsUInt64().ToScalar());
        }
    }

    /// <summary>Four floats at <paramref name="address"/>, or two and two zeros.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> LoadLanes(float* address, bool four) =>
        four ? Vector128.Load(address) : Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<ulong>(address)).AsSingle();

    /// <summary>Four bfloat16 values at <paramref name="address"/> widened, or two and two zeros.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> WidenBFloat16(ushort* address, bool four)
    {
        ulong bits = four ? Unsafe.ReadUnaligned<ulong>(address) : Unsafe.ReadUnaligned<uint>(address);
        return Vector128.ShiftLeft(Vector128.WidenLower(Vector128.CreateScalarUnsafe(bits).AsUInt16()), 16).AsSingle();
    }

    /// <summary><see cref="BFloat16Bits.Round(float)"/> of each lane, in the low half of each lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<uint> RoundToBFloat16(Vector128<float> value)
    {
        var bits = value.AsUInt32();
        var rounded = Vector128.ShiftRightLogical(bits + Vector128.Create(0x7FFFu) + (Vector128.ShiftRightLogical(bits, 16) & Vector128<uint>.One), 16);
        return Vector128.ConditionalSelect(Vector128.Equals(value, value).AsUInt32(), rounded, Vector128.Create(0x7FC0u));
    }

    /// <summary><see cref="Float16Gemv.ToOutput"/> of each lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> ToOutput(Vector128<float> value, bool bfloat16) =>
        bfloat16 ? Vector128.ShiftLeft(RoundToBFloat16(value), 16).AsSingle() : value;

    /// <summary>An output of weight row <paramref name="row"/> from its sum, up to the GELU: scaled, biased, and rounded to the output dtype when a GELU follows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Prepare(Job* job, int row, float sum)
    {
        float value = sum * job->OutputScale;
        if (job->Bias != null) value += job->BiasIsBFloat16 ? BFloat16Bits.Widen(((ushort*)job->Bias)[row]) : ((float*)job->Bias)[row];
        return job->Gelu ? Float16Gemv.ToOutput(value, job->OutputIsBFloat16) : value;
    }

    /// <summary>Output element <paramref name="at"/> from its value after the GELU: residual and rounding.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Job* job, long at, float value)
    {
        bool bfloat16 = job->OutputIsBFloat16;
        if (job->Residual != null)
            value = Float16Gemv.ToOutput(value, bfloat16) + (bfloat16 ? BFloat16Bits.Widen(((ushort*)job->Residual)[at]) : ((float*)job->Residual)[at]);
        if (bfloat16) ((ushort*)job->Output)[at] = BFloat16Bits.Round(value);
        else ((float*)job->Output)[at] = value;
    }

    /// <summary>The most weight rows a pass multiplies together.</summary>
    private const int MaxWeightRows = 4;

    /// <summary>Weight rows per pass: as many as the variant's registers hold accumulators for (4 × 4 in AVX-512's 32, 2 × 4 in AVX2's 16).</summary>
    private static int WeightRowsPerPass(Float16GemvVariant variant) => variant switch
    {
        Float16GemvVariant.Avx512 => 4,
        Float16GemvVariant.Vector256 => 2,
        _ => 1,
    };

    /// <summary>
    /// Σ w·x of <paramref name="weightRows"/> consecutive weight rows (1, or the variant's group) with four activation
    /// rows: <c>sums[w · 4 + i]</c>. A group can run in blocks of columns: with <paramref name="resume"/> its
    /// accumulators start from <paramref name="carried"/> (else from zero), and without <paramref name="sums"/> they are
    /// left there for the next block instead of being summed. Every block but the last is a whole number of vectors.
    /// A group also fetches <paramref name="next"/> while it multiplies: a line per vector step into L2, or with
    /// <paramref name="nextStride"/> (AVX-512 only) a line of each of four rows that far apart into L1.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot<TWeight>(Float16GemvVariant variant, int weightRows, byte* weight, long rowBytes, float** inputs, int columns,
        float* carried, float* sums, bool resume = false, byte* next = null, long nextStride = 0) where TWeight : IGemvWeight
    {
        if (weightRows == 1) Dot4<TWeight>(variant, weight, inputs, columns, sums);
        else if (variant == Float16GemvVariant.Avx512) Dot4x4x512<TWeight>(weight, rowBytes, inputs, columns, resume ? carried : null, sums == null ? carried : sums, sums == null, next, nextStride);
        else Dot2x4x256<TWeight>(weight, rowBytes, inputs, columns, resume ? carried : null, sums == null ? carried : sums, sums == null, next);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot4x4x512<TWeight>(byte* weight, long rowBytes, float** inputs, int columns, float* from, float* to, bool carry, byte* next, long nextStride) where TWeight : IGemvWeight
    {
        float* x0 = inputs[0], x1 = inputs[1], x2 = inputs[2], x3 = inputs[3];
        byte* w0 = weight, w1 = weight + rowBytes, w2 = weight + 2 * rowBytes, w3 = weight + 3 * rowBytes;
        Vector512<float> a00 = Start512(from, 0), a01 = Start512(from, 1), a02 = Start512(from, 2), a03 = Start512(from, 3);
        Vector512<float> a10 = Start512(from, 4), a11 = Start512(from, 5), a12 = Start512(from, 6), a13 = Start512(from, 7);
        Vector512<float> a20 = Start512(from, 8), a21 = Start512(from, 9), a22 = Start512(from, 10), a23 = Start512(from, 11);
        Vector512<float> a30 = Start512(from, 12), a31 = Start512(from, 13), a32 = Start512(from, 14), a33 = Start512(from, 15);
        int c = 0;
        for (; c + 16 <= columns; c += 16)
        {
            if (next != null)
            {
                if (nextStride == 0) Sse.Prefetch1(next + c * 4);
                else
                {
                    Sse.Prefetch1(next + c * 4);
                    Sse.Prefetch1(next + nextStride + c * 4);
                    Sse.Prefetch1(next + 2 * nextStride + c * 4);
                    Sse.Prefetch1(next + 3 * nextStride + c * 4);
                }
            }
            var v0 = Avx512F.LoadVector512(x0 + c);
            var v1 = Avx512F.LoadVector512(x1 + c);
            var v2 = Avx512F.LoadVector512(x2 + c);
            var v3 = Avx512F.LoadVector512(x3 + c);
            var w = TWeight.Load512(w0, c);
            a00 = Avx512F.FusedMultiplyAdd(w, v0, a00);
            a01 = Avx512F.FusedMultiplyAdd(w, v1, a01);
            a02 = Avx512F.FusedMultiplyAdd(w, v2, a02);
            a03 = Avx512F.FusedMultiplyAdd(w, v3, a03);
            w = TWeight.Load512(w1, c);
            a10 = Avx512F.FusedMultiplyAdd(w, v0, a10);
            a11 = Avx512F.FusedMultiplyAdd(w, v1, a11);
            a12 = Avx512F.FusedMultiplyAdd(w, v2, a12);
            a13 = Avx512F.FusedMultiplyAdd(w, v3, a13);
            w = TWeight.Load512(w2, c);
            a20 = Avx512F.FusedMultiplyAdd(w, v0, a20);
            a21 = Avx512F.FusedMultiplyAdd(w, v1, a21);
            a22 = Avx512F.FusedMultiplyAdd(w, v2, a22);
            a23 = Avx512F.FusedMultiplyAdd(w, v3, a23);
            w = TWeight.Load512(w3, c);
            a30 = Avx512F.FusedMultiplyAdd(w, v0, a30);
            a31 = Avx512F.FusedMultiplyAdd(w, v1, a31);
            a32 = Avx512F.FusedMultiplyAdd(w, v2, a32);
            a33 = Avx512F.FusedMultiplyAdd(w, v3, a33);
        }
        if (carry)
        {
            a00.Store(to); a01.Store(to + 16); a02.Store(to + 32); a03.Store(to + 48);
            a10.Store(to + 64); a11.Store(to + 80); a12.Store(to + 96); a13.Store(to + 112);
            a20.Store(to + 128); a21.Store(to + 144); a22.Store(to + 160); a23.Store(to + 176);
            a30.Store(to + 192); a31.Store(to + 208); a32.Store(to + 224); a33.Store(to + 240);
            return;
        }
        Finish512<TWeight>(a00, a01, a02, a03, w0, inputs, c, columns, to);
        Finish512<TWeight>(a10, a11, a12, a13, w1, inputs, c, columns, to + 4);
        Finish512<TWeight>(a20, a21, a22, a23, w2, inputs, c, columns, to + 8);
        Finish512<TWeight>(a30, a31, a32, a33, w3, inputs, c, columns, to + 12);
    }

    /// <summary>Accumulator <paramref name="index"/> carried in <paramref name="from"/>, or zero.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Start512(float* from, int index) => from == null ? default : Vector512.Load(from + 16 * index);

    /// <summary>Accumulator <paramref name="index"/> carried in <paramref name="from"/>, or zero.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Start256(float* from, int index) => from == null ? default : Vector256.Load(from + 8 * index);

    /// <summary>One weight row's four sums from its accumulators, with the columns the vector loop left.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish512<TWeight>(Vector512<float> s0, Vector512<float> s1, Vector512<float> s2, Vector512<float> s3, byte* weight,
        float** inputs, int c, int columns, float* sums) where TWeight : IGemvWeight
    {
        // The four horizontal sums together (halving, then pairwise adds across the four): a third of the instructions
        // of four separate sums, which matters for the short rows of small models.
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(Half(s0), Half(s1)), Avx.HorizontalAdd(Half(s2), Half(s3)));
        var four = h.GetLower() + h.GetUpper();
        for (int i = 0; i < RowsPerPass; i++) sums[i] = Tail<TWeight>(four.GetElement(i), weight, inputs[i], c, columns);

        static Vector256<float> Half(Vector512<float> v) => v.GetLower() + v.GetUpper();
    }

    /// <summary>The portable 256-bit form of <see cref="Dot4x4x512{TWeight}"/> for two weight rows (AVX2 has 16 vector registers).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot2x4x256<TWeight>(byte* weight, long rowBytes, float** inputs, int columns, float* from, float* to, bool carry, byte* next) where TWeight : IGemvWeight
    {
        float* x0 = inputs[0], x1 = inputs[1], x2 = inputs[2], x3 = inputs[3];
        byte* w0 = weight, w1 = weight + rowBytes;
        Vector256<float> a00 = Start256(from, 0), a01 = Start256(from, 1), a02 = Start256(from, 2), a03 = Start256(from, 3);
        Vector256<float> a10 = Start256(from, 4), a11 = Start256(from, 5), a12 = Start256(from, 6), a13 = Start256(from, 7);
        int c = 0;
        for (; c + 8 <= columns; c += 8)
        {
            if (Sse.IsSupported)
            {
                if (next != null) Sse.Prefetch1(next + c * 4);
                else
                {
                    Sse.Prefetch1(w0 + (c * TWeight.Size) + 4096);
                    Sse.Prefetch1(w1 + (c * TWeight.Size) + 4096);
                }
            }
            var v0 = Vector256.Load(x0 + c);
            var v1 = Vector256.Load(x1 + c);
            var v2 = Vector256.Load(x2 + c);
            var v3 = Vector256.Load(x3 + c);
            var w = TWeight.Load256(w0, c);
            a00 = Vector256.FusedMultiplyAdd(w, v0, a00);
            a01 = Vector256.FusedMultiplyAdd(w, v1, a01);
            a02 = Vector256.FusedMultiplyAdd(w, v2, a02);
            a03 = Vector256.FusedMultiplyAdd(w, v3, a03);
            w = TWeight.Load256(w1, c);
            a10 = Vector256.FusedMultiplyAdd(w, v0, a10);
            a11 = Vector256.FusedMultiplyAdd(w, v1, a11);
            a12 = Vector256.FusedMultiplyAdd(w, v2, a12);
            a13 = Vector256.FusedMultiplyAdd(w, v3, a13);
        }
        if (carry)
        {
            a00.Store(to); a01.Store(to + 8); a02.Store(to + 16); a03.Store(to + 24);
            a10.Store(to + 32); a11.Store(to + 40); a12.Store(to + 48); a13.Store(to + 56);
            return;
        }
        to[0] = Tail<TWeight>(Vector256.Sum(a00), w0, x0, c, columns);
        to[1] = Tail<TWeight>(Vector256.Sum(a01), w0, x1, c, columns);
        to[2] = Tail<TWeight>(Vector256.Sum(a02), w0, x2, c, columns);
        to[3] = Tail<TWeight>(Vector256.Sum(a03), w0, x3, c, columns);
        to[4] = Tail<TWeight>(Vector256.Sum(a10), w1, x0, c, columns);
        to[5] = Tail<TWeight>(Vector256.Sum(a11), w1, x1, c, columns);
        to[6] = Tail<TWeight>(Vector256.Sum(a12), w1, x2, c, columns);
        to[7] = Tail<TWeight>(Vector256.Sum(a13), w1, x3, c, columns);
    }

    /// <summary>Σ w·x of one weight row with four activation rows, in one pass over the weight row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4<TWeight>(Float16GemvVariant variant, byte* weight, float** inputs, int columns, float* sums)
        where TWeight : IGemvWeight
    {
        switch (variant)
        {
            case Float16GemvVariant.Avx512: Dot4x512<TWeight>(weight, inputs, columns, sums); break;
            case Float16GemvVariant.Vector256: Dot4x256<TWeight>(weight, inputs, columns, sums); break;
            default: Dot4x128<TWeight>(weight, inputs, columns, sums); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot4x512<TWeight>(byte* weight, float** inputs, int columns, float* sums) where TWeight : IGemvWeight
    {
        float* x0 = inputs[0], x1 = inputs[1], x2 = inputs[2], x3 = inputs[3];
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        int c = 0;
        for (; c + 32 <= columns; c += 32)
        {
            // One page ahead of the stream, as Float16Gemv does; prefetches never fault.
            Sse.Prefetch1(weight + (c * TWeight.Size) + 4096);
            var w = TWeight.Load512(weight, c);
            var v = TWeight.Load512(weight, c + 16);
            a0 = Avx512F.FusedMultiplyAdd(w, Avx512F.LoadVector512(x0 + c), a0);
            a1 = Avx512F.FusedMultiplyAdd(w, Avx512F.LoadVector512(x1 + c), a1);
            a2 = Avx512F.FusedMultiplyAdd(w, Avx512F.LoadVector512(x2 + c), a2);
            a3 = Avx512F.FusedMultiplyAdd(w, Avx512F.LoadVector512(x3 + c), a3);
            b0 = Avx512F.FusedMultiplyAdd(v, Avx512F.LoadVector512(x0 + c + 16), b0);
            b1 = Avx512F.FusedMultiplyAdd(v, Avx512F.LoadVector512(x1 + c + 16), b1);
            b2 = Avx512F.FusedMultiplyAdd(v, Avx512F.LoadVector512(x2 + c + 16), b2);
            b3 = Avx512F.FusedMultiplyAdd(v, Avx512F.LoadVector512(x3 + c + 16), b3);
        }
        for (; c + 16 <= columns; c += 16)
        {
            var w = TWeight.Load512(weight, c);
            a0 = Avx512F.FusedMultiplyAdd(w, Avx512F.LoadVector512(x0 + c), a0);
            a1 = Avx512F.FusedMultiplyAdd(w, Avx512F.LoadVector512(x1 + c), a1);
            a2 = Avx512F.FusedMultiplyAdd(w, Avx512F.LoadVector512(x2 + c), a2);
            a3 = Avx512F.FusedMultiplyAdd(w, Avx512F.LoadVector512(x3 + c), a3);
        }
        Finish512<TWeight>(a0 + b0, a1 + b1, a2 + b2, a3 + b3, weight, inputs, c, columns, sums);
    }

    /// <summary>The portable 256-bit form of <see cref="Dot4x512{TWeight}"/>: AVX2 on x64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot4x256<TWeight>(byte* weight, float** inputs, int columns, float* sums) where TWeight : IGemvWeight
    {
        float* x0 = inputs[0], x1 = inputs[1], x2 = inputs[2], x3 = inputs[3];
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        int c = 0;
        for (; c + 16 <= columns; c += 16)
        {
            if (Sse.IsSupported) Sse.Prefetch1(weight + (c * TWeight.Size) + 4096);
            var w = TWeight.Load256(weight, c);
            var v = TWeight.Load256(weight, c + 8);
            a0 = Vector256.FusedMultiplyAdd(w, Vector256.Load(x0 + c), a0);
            a1 = Vector256.FusedMultiplyAdd(w, Vector256.Load(x1 + c), a1);
            a2 = Vector256.FusedMultiplyAdd(w, Vector256.Load(x2 + c), a2);
            a3 = Vector256.FusedMultiplyAdd(w, Vector256.Load(x3 + c), a3);
            b0 = Vector256.FusedMultiplyAdd(v, Vector256.Load(x0 + c + 8), b0);
            b1 = Vector256.FusedMultiplyAdd(v, Vector256.Load(x1 + c + 8), b1);
            b2 = Vector256.FusedMultiplyAdd(v, Vector256.Load(x2 + c + 8), b2);
            b3 = Vector256.FusedMultiplyAdd(v, Vector256.Load(x3 + c + 8), b3);
        }
        for (; c + 8 <= columns; c += 8)
        {
            var w = TWeight.Load256(weight, c);
            a0 = Vector256.FusedMultiplyAdd(w, Vector256.Load(x0 + c), a0);
            a1 = Vector256.FusedMultiplyAdd(w, Vector256.Load(x1 + c), a1);
            a2 = Vector256.FusedMultiplyAdd(w, Vector256.Load(x2 + c), a2);
            a3 = Vector256.FusedMultiplyAdd(w, Vector256.Load(x3 + c), a3);
        }
        sums[0] = Tail<TWeight>(Vector256.Sum(a0 + b0), weight, x0, c, columns);
        sums[1] = Tail<TWeight>(Vector256.Sum(a1 + b1), weight, x1, c, columns);
        sums[2] = Tail<TWeight>(Vector256.Sum(a2 + b2), weight, x2, c, columns);
        sums[3] = Tail<TWeight>(Vector256.Sum(a3 + b3), weight, x3, c, columns);
    }

    /// <summary>The portable 128-bit form of <see cref="Dot4x512{TWeight}"/>: NEON on Arm64, SSE on x64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot4x128<TWeight>(byte* weight, float** inputs, int columns, float* sums) where TWeight : IGemvWeight
    {
        float* x0 = inputs[0], x1 = inputs[1], x2 = inputs[2], x3 = inputs[3];
        Vector128<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        int c = 0;
        for (; c + 8 <= columns; c += 8)
        {
            if (Sse.IsSupported) Sse.Prefetch1(weight + (c * TWeight.Size) + 4096);
            var w = TWeight.Load128(weight, c);
            var v = TWeight.Load128(weight, c + 4);
            a0 = Vector128.FusedMultiplyAdd(w, Vector128.Load(x0 + c), a0);
            a1 = Vector128.FusedMultiplyAdd(w, Vector128.Load(x1 + c), a1);
            a2 = Vector128.FusedMultiplyAdd(w, Vector128.Load(x2 + c), a2);
            a3 = Vector128.FusedMultiplyAdd(w, Vector128.Load(x3 + c), a3);
            b0 = Vector128.FusedMultiplyAdd(v, Vector128.Load(x0 + c + 4), b0);
            b1 = Vector128.FusedMultiplyAdd(v, Vector128.Load(x1 + c + 4), b1);
            b2 = Vector128.FusedMultiplyAdd(v, Vector128.Load(x2 + c + 4), b2);
            b3 = Vector128.FusedMultiplyAdd(v, Vector128.Load(x3 + c + 4), b3);
        }
        sums[0] = Tail<TWeight>(Vector128.Sum(a0 + b0), weight, x0, c, columns);
        sums[1] = Tail<TWeight>(Vector128.Sum(a1 + b1), weight, x1, c, columns);
        sums[2] = Tail<TWeight>(Vector128.Sum(a2 + b2), weight, x2, c, columns);
        sums[3] = Tail<TWeight>(Vector128.Sum(a3 + b3), weight, x3, c, columns);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Tail<TWeight>(float sum, byte* weight, float* input, int c, int columns) where TWeight : IGemvWeight
    {
        for (; c < columns; c++) sum += TWeight.Load(weight, c) * input[c];
        return sum;
    }

    /// <summary>How a weight format turns its elements into float32 operands.</summary>
    private interface IGemvWeight
    {
        /// <summary>Bytes per element.</summary>
        static abstract int Size { get; }

        static abstract float Load(byte* row, int column);

        static abstract Vector128<float> Load128(byte* row, int column);

        static abstract Vector256<float> Load256(byte* row, int column);

        static abstract Vector512<float> Load512(byte* row, int column);
    }

    /// <summary>float16 as float32 <c>w · 2⁻¹¹²</c> (see <see cref="Float16Gemv"/>): the activations come scaled by 2⁵⁶ and the sums are scaled back.</summary>
    private readonly struct Float16Weight : IGemvWeight
    {
        public static int Size => sizeof(ushort);

        public static float Load(byte* row, int column) => Float16Bits.Scaled(((ushort*)row)[column]);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<float> Load128(byte* row, int column) =>
            Float16Bits.Scaled(Vector128.WidenLower(Vector128.CreateScalar(*(long*)((short*)row + column)).AsInt16()));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load256(byte* row, int column) => Float16Bits.Scaled(Float16Gemv.SignExtend256((short*)row + column));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load512(byte* row, int column) =>
            Float16Bits.Scaled(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)row + column)));
    }

    /// <summary>Whether the exact widening goes through libtorch's F16C conversion for <paramref name="variant"/> on this machine.</summary>
    internal static bool WidensThroughLibTorch(Float16GemvVariant variant) => LibTorchFloat16.IsAvailable(Width(variant));

    private static int Width(Float16GemvVariant variant) => variant switch
    {
        Float16GemvVariant.Avx512 => 512,
        Float16GemvVariant.Vector256 => 256,
        _ => 128,
    };

    /// <summary>A float16 row to its exact float32 values (<see cref="Float16Bits.Exact(Vector512{int})"/>), in the variant's width.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WidenExact(Float16GemvVariant variant, ushort* source, float* destination, int columns)
    {
        int c = 0;
        if (variant == Float16GemvVariant.Avx512)
        {
            for (; c + 16 <= columns; c += 16)
            {
                Sse.Prefetch1(source + c + PrefetchAhead);
                Float16Bits.Exact(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)source + c))).Store(destination + c);
            }
        }
        else if (variant == Float16GemvVariant.Vector256)
        {
            for (; c + 8 <= columns; c += 8)
            {
                if (Sse.IsSupported) Sse.Prefetch1(source + c + PrefetchAhead);
                Float16Bits.Exact(Float16Gemv.SignExtend256((short*)source + c)).Store(destination + c);
            }
        }
        else
        {
            for (; c + 4 <= columns; c += 4)
                Float16Bits.Exact(Vector128.WidenLower(Vector128.CreateScalar(*(long*)(source + c)).AsInt16())).Store(destination + c);
        }
        for (; c < columns; c++) destination[c] = (float)BitConverter.UInt16BitsToHalf(source[c]);
    }

    /// <summary>
    /// Weights fetched ahead of their widening: one page (4 KiB), as in <see cref="Float16Gemv"/>, and like every
    /// prefetch here into L2, not L1, where the rows' activations must stay (eight rows of rinna-4b's products capped at
    /// AVX2 on a Zen 4 EPYC: 12–15 % faster than with L1 prefetches; level uncapped).
    /// </summary>
    private const int PrefetchAhead = 2048;

    /// <summary>float32 as it is.</summary>
    private readonly struct Float32Weight : IGemvWeight
    {
        public static int Size => sizeof(float);

        public static float Load(byte* row, int column) => ((float*)row)[column];

        public static Vector128<float> Load128(byte* row, int column) => Vector128.Load((float*)row + column);

        public static Vector256<float> Load256(byte* row, int column) => Vector256.Load((float*)row + column);

        public static Vector512<float> Load512(byte* row, int column) => Vector512.Load((float*)row + column);
    }
}
