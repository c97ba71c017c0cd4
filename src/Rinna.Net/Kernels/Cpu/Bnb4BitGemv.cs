using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// A 4-bit weight in bitsandbytes' layout, as <see cref="Bnb4BitGemv"/> reads it: packed codes of the flattened
/// <c>[Rows, Columns]</c> weight (first element of a pair in the high nibble), a 16-entry code book, and a scale per 64
/// elements: float32 <paramref name="Absmax"/>, or with <paramref name="NestedAbsmax"/> uint8 codes into
/// <paramref name="NestedCode"/> scaled per 256 blocks, plus <paramref name="Offset"/>.
/// </summary>
internal readonly record struct Bnb4BitMatrix(Tensor Codes, float[] Code, Tensor Absmax, Tensor? NestedAbsmax, float Offset,
    float[]? NestedCode, int Rows, int Columns);

/// <summary>
/// <c>x · Wᵀ + b</c> for one row of activations and a bitsandbytes 4-bit weight on the CPU (a decode step), in managed
/// code on libtorch's OpenMP threads. The weight is dequantized in registers: each code is looked up in the 16-entry
/// code book, the block's products are summed, and the sum is scaled by the block's absmax, so the float weight is never
/// built. Five float32 variants (<see cref="Bnb4BitGemvVariant"/>): AVX-512 (one 16-entry permute per 16 weights), AVX2,
/// portable 256- and 128-bit vectors (NEON on Arm64), and scalar code; and four integer variants (AVX-512, AVX2, AVX2
/// with AVX-VNNI, portable 128-bit vectors) for layers that compute in bfloat16 or float16 (Bnb4BitGemv.Int16.cs),
/// which also take whole prompts, a tile of rows at a time (Bnb4BitGemv.Tiles.cs).
/// </summary>
/// <remarks>
/// The vector variants read 16 code bytes (32 weights) at a time, which lie in one block when the row length is a
/// multiple of 32: the high nibbles are the even weights and the low nibbles the odd ones, so the activations are
/// reordered once per call (evens, then odds, per 32) instead of interleaving nibbles per row. Other row lengths (blocks
/// then straddle rows) take the scalar loop. Results agree with <c>x · dequantize(W)ᵀ</c> to float32 accumulation.
/// </remarks>
internal static unsafe partial class Bnb4BitGemv
{
    private const int Group = 32;

    /// <summary>How far ahead of the codes being read the kernels request the next line: one 4 KiB page.</summary>
    private const int PrefetchAheadBytes = 4096;

    /// <summary>
    /// Requests the code line <see cref="PrefetchAheadBytes"/> past column <paramref name="column"/> of a row starting at
    /// <paramref name="codes"/>, once per 128 columns (64 code bytes). A thread's rows are one run of memory, and the
    /// hardware prefetcher stops at page boundaries: without this a 4-bit row streamed at about half the memory's rate.
    /// Prefetches never fault, so running past the end of the weight is harmless. The lines go to L2, not L1: codes are
    /// read once, and a long row's integer activations (22 KiB for 11264 columns) must stay in L1 beside them, which
    /// lines prefetched into L1 pushed out (rinna-4b's <c>dense_4h_to_h</c> then ran 28–40 % slower than its transpose).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchCodes(byte* codes, long column)
    {
        if ((column & 127) == 0) PrefetchAhead(codes + (column >> 1));
    }

    /// <summary>The one prefetch of <see cref="PrefetchCodes"/>, for loops that step a code pointer a line at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchAhead(byte* codes)
    {
        if (Sse.IsSupported) Sse.Prefetch1(codes + PrefetchAheadBytes);
    }

    /// <summary>
    /// Activation rows one call of the AVX-512 and AVX2 float32 variants takes (a batched decode step;
    /// <see cref="Rinna.Net.Model.Quantization.Bnb4BitLinear"/> feeds them a short prompt in groups of this many), and the
    /// fewest rows of an integer variant's tile.
    /// </summary>
    public const int MaxActivationRows = 8;

    /// <summary>
    /// Activation rows one call of an integer variant takes: a whole prompt, which it multiplies a tile of rows at a
    /// time (Bnb4BitGemv.Tiles.cs). Its 16-bit copy is half the size of the float activations it comes from.
    /// </summary>
    public const int MaxInt16ActivationRows = 1 << 14;

    /// <summary>bitsandbytes' 4-bit block: 64 consecutive elements of the flattened weight share a scale.</summary>
    private const int BlockSize = 64;

    /// <summary>The widest variant this CPU accelerates (scalar where it accelerates none).</summary>
    public static Bnb4BitGemvVariant DefaultVariant { get; } =
        IsAccelerated(Bnb4BitGemvVariant.Avx512) ? Bnb4BitGemvVariant.Avx512
        : IsAccelerated(Bnb4BitGemvVariant.Avx2) ? Bnb4BitGemvVariant.Avx2
        : IsAccelerated(Bnb4BitGemvVariant.Vector256) ? Bnb4BitGemvVariant.Vector256
        : IsAccelerated(Bnb4BitGemvVariant.Vector128) ? Bnb4BitGemvVariant.Vector128
        : Bnb4BitGemvVariant.Scalar;

    /// <summary>Whether <paramref name="variant"/> runs in hardware here (every variant is correct everywhere).</summary>
    public static bool IsAccelerated(Bnb4BitGemvVariant variant) => variant switch
    {
        Bnb4BitGemvVariant.Avx512 => Avx512F.IsSupported,
        Bnb4BitGemvVariant.Avx2 => Avx2.IsSupported && Fma.IsSupported,
        Bnb4BitGemvVariant.Vector256 => Vector256.IsHardwareAccelerated,
        Bnb4BitGemvVariant.Vector128 => Vector128.IsHardwareAccelerated,
        Bnb4BitGemvVariant.Avx512Int16 => Avx512BW.IsSupported,
        Bnb4BitGemvVariant.Avx2Int16 => Avx2.IsSupported && Fma.IsSupported,
        Bnb4BitGemvVariant.AvxVnniInt16 => Avx2.IsSupported && Fma.IsSupported && AvxVnni.IsSupported,
        Bnb4BitGemvVariant.Vector128Int16 => Vector128.IsHardwareAccelerated,
        _ => true,
    };

    /// <summary>One call's operands and row claims, shared by the threads through a pointer.</summary>
    internal struct Job
    {
        public byte* Codes;
        public float* Code;
        public void* Absmax;
        public float* Nested;
        public float* NestedCode;
        public float Offset;
        public float* Input;
        public float* Bias;
        public void* Output;
        public bool OutputIsBFloat16;
        public int Rows;
        public int Columns;
        public RowClaims Claims;
        public bool Grouped;
        public Bnb4BitGemvVariant Variant;
        public short* Quantized;
        public short* Table16;
        public float* InverseScales;
        public int ActivationRows;
        public void* Source;
        public ScalarType SourceType;
        public RowClaims SourceClaims;
        public int TileRows;
        public int NonFinite;
    }

    /// <summary>
    /// Computes <c>x · Wᵀ + b</c> for a contiguous CPU row <paramref name="x"/> (float32, bfloat16 or float16, <c>[1, K]</c>;
    /// several rows where <see cref="MaxRowsPerCall(Bnb4BitMatrix, ScalarType)"/> allows, each weight looked up once for
    /// several rows)
    /// and an optional float32 <paramref name="bias"/>, in x's dtype. Returns false, doing nothing, where libgomp is not
    /// loaded or the operands do not fit.
    /// </summary>
    /// <param name="x">The activations.</param>
    /// <param name="weight">The 4-bit weight.</param>
    /// <param name="bias">The optional bias.</param>
    /// <param name="result">The product, where this returns true.</param>
    /// <param name="computeDType">The layer's compute dtype: bfloat16 or float16 let the integer variants run
    /// (<see cref="Int16VariantFor(Bnb4BitMatrix)"/>); float32 keeps float32 arithmetic.</param>
    public static bool TryMultiply(Tensor x, Bnb4BitMatrix weight, Tensor? bias, out Tensor result, ScalarType computeDType)
    {
        return TryMultiply(x, weight, bias, out result, VariantFor(weight, computeDType));
    }

    /// <summary>The variant a layer computing in <paramref name="computeDType"/> runs: an integer one for bfloat16 and float16 where one fits, else the widest float32 one.</summary>
    private static Bnb4BitGemvVariant VariantFor(Bnb4BitMatrix weight, ScalarType computeDType)
        => computeDType is ScalarType.BFloat16 or ScalarType.Float16 && Int16VariantFor(weight) is { } fast ? fast : DefaultVariant;

    /// <summary>
    /// <see cref="TryMultiply(Tensor, Bnb4BitMatrix, Tensor?, out Tensor, ScalarType)"/> with a chosen variant; for tests and
    /// benchmarks. The AVX-512 and AVX2 variants run only where the CPU has them; the others run everywhere.
    /// </summary>
    internal static bool TryMultiply(Tensor x, Bnb4BitMatrix weight, Tensor? bias, out Tensor result, Bnb4BitGemvVariant variant)
    {
        result = null!;
        if (variant is not (Bnb4BitGemvVariant.Scalar or Bnb4BitGemvVariant.Vector128 or Bnb4BitGemvVariant.Vector256
                or Bnb4BitGemvVariant.Vector128Int16) && !IsAccelerated(variant))
            return false;
        if (!LibTorchOpenMp.IsAvailable || !Eligible(x, weight, bias)) return false;
        int rows = weight.Rows, columns = weight.Columns;
        int activationRows = (int)(x.numel() / columns);
        if (activationRows > MaxRowsPerCall(variant, columns)) return false;
        if (IsInt16(variant))
        {
            if (!FitsInt16(weight, variant)) return false;
            if (TryMultiplyInt16(x, weight, bias, variant, out result)) return true;
            // Non-finite activations have no integer form: the float variant carries them through as libtorch would
            // (one row here; several rows go back to the caller's dequantizing path).
            if (activationRows > 1) return false;
            variant = DefaultVariant;
        }
        // The float activations, reordered for the vector loops.
        var pooled = ArrayPool<float>.Shared.Rent(activationRows * columns);
        try
        {
            var input = pooled.AsSpan(0, activationRows * columns);
            if (x.dtype == ScalarType.Float32) MemoryMarshal.Cast<byte, float>(x.bytes).CopyTo(input);
            else if (x.dtype == ScalarType.Float16) Float16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(x.bytes), input);
            else BFloat16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(x.bytes), input);
            bool grouped = variant != Bnb4BitGemvVariant.Scalar && columns % Group == 0;
            if (grouped) EvensThenOdds(input);
            // A float16 product is written in float32 and rounded once by libtorch (the kernels write float32 or bfloat16).
            var output = empty(TensorShapes.WithLastDimension(x, rows), dtype: x.dtype == ScalarType.Float16 ? ScalarType.Float32 : x.dtype);
            fixed (float* inputs = pooled)
            {
                int threads = get_num_threads();
                var job = new Job
                {
                    Input = inputs, OutputIsBFloat16 = x.dtype == ScalarType.BFloat16, Rows = rows, Columns = columns,
                    Claims = new RowClaims(rows, threads, 8), Grouped = grouped, Variant = variant, ActivationRows = activationRows,
                };
                RunOnTeam(&RunRows, ref job, weight, bias, output, threads);
            }
            result = FinishOutput(output, x.dtype);
            return true;
        }
        finally
        {
            ArrayPool<float>.Shared.Return(pooled);
        }
    }

    /// <summary>
    /// Pins the weight's, the bias's and the output's memory, puts their addresses in <paramref name="job"/>, and runs
    /// <paramref name="body"/> on <paramref name="threads"/> threads of libtorch's team.
    /// </summary>
    private static void RunOnTeam(delegate* unmanaged<void*, void> body, ref Job job, Bnb4BitMatrix weight, Tensor? bias, Tensor output, int threads)
    {
        fixed (float* code = weight.Code)
        fixed (float* nestedCode = weight.NestedCode)
        fixed (byte* codes = weight.Codes.bytes)
        fixed (byte* absmax = weight.Absmax.bytes)
        fixed (byte* nested = weight.NestedAbsmax is null ? default : weight.NestedAbsmax.bytes)
        fixed (byte* biasBytes = bias is null ? default : bias.bytes)
        fixed (byte* outputBytes = output.bytes)
        fixed (Job* pinned = &job)
        {
            job.Codes = codes;
            job.Code = code;
            job.Absmax = absmax;
            job.Nested = (float*)nested;
            job.NestedCode = nestedCode;
            job.Offset = weight.Offset;
            job.Bias = (float*)biasBytes;
            job.Output = outputBytes;
            LibTorchOpenMp.Run(body, pinned, threads);
        }
    }

    /// <summary>
    /// The most activation rows one call of <paramref name="variant"/> takes for rows of <paramref name="columns"/>: the
    /// integer variants take a whole prompt (<see cref="MaxInt16ActivationRows"/>, a tile of rows at a time) where their
    /// several-row loops fit the row, the AVX-512 and AVX2 float variants <see cref="MaxActivationRows"/>, the others one.
    /// </summary>
    internal static int MaxRowsPerCall(Bnb4BitGemvVariant variant, int columns)
        => IsInt16(variant) ? (columns <= MaxInt16RowsColumns ? MaxInt16ActivationRows : 1)
            : variant is Bnb4BitGemvVariant.Avx512 or Bnb4BitGemvVariant.Avx2 && columns % Group == 0 ? MaxActivationRows : 1;

    /// <summary>The most activation rows one call takes with <paramref name="computeDType"/> and this weight (see <see cref="MaxRowsPerCall(Bnb4BitGemvVariant, int)"/>).</summary>
    public static int MaxRowsPerCall(Bnb4BitMatrix weight, ScalarType computeDType)
        => MaxRowsPerCall(VariantFor(weight, computeDType), weight.Columns);

    /// <summary>The kernels' float32 or bfloat16 output in <paramref name="dtype"/>: float16 rounded once by libtorch.</summary>
    private static Tensor FinishOutput(Tensor output, ScalarType dtype)
    {
        if (dtype != ScalarType.Float16) return output;
        using (output) return output.to(ScalarType.Float16);
    }

    private static bool Eligible(Tensor x, Bnb4BitMatrix weight, Tensor? bias)
    {
        static bool OnCpuContiguous(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();
        long elements = (long)weight.Rows * weight.Columns;
        return OnCpuContiguous(x) && x.dim() >= 1 && x.size(-1) == weight.Columns && x.numel() > 0
            && x.numel() / x.size(-1) <= MaxInt16ActivationRows
            && x.dtype is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16
            && weight.Code.Length == 16 && OnCpuContiguous(weight.Codes) && weight.Codes.dtype == ScalarType.Byte
            && weight.Codes.numel() == (elements + 1) / 2 && elements / 2 < int.MaxValue
            && OnCpuContiguous(weight.Absmax)
            && (weight.NestedAbsmax is null
                ? weight.Absmax.dtype == ScalarType.Float32
                : weight.Absmax.dtype == ScalarType.Byte && weight.NestedCode is { Length: 256 } && OnCpuContiguous(weight.NestedAbsmax)
                    && weight.NestedAbsmax.dtype == ScalarType.Float32)
            && weight.Absmax.numel() == (elements + 63) / 64
            && (bias is null || (OnCpuContiguous(bias) && bias.dtype == ScalarType.Float32 && bias.numel() == weight.Rows));
    }

    /// <summary>Reorders each 32 activations as its 16 even-indexed ones, then its 16 odd-indexed ones.</summary>
    private static void EvensThenOdds(Span<float> input)
    {
        Span<float> group = stackalloc float[Group];
        for (int g = 0; g < input.Length; g += Group)
        {
            var source = input.Slice(g, Group);
            for (int t = 0; t < Group / 2; t++)
            {
                group[t] = source[2 * t];
                group[Group / 2 + t] = source[2 * t + 1];
            }
            group.CopyTo(source);
        }
    }

    [UnmanagedCallersOnly]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunRows(void* state)
    {
        var job = (Job*)state;
        bool ahead = ScalesAhead(job);
        float* buffer = stackalloc float[ahead ? job->Columns / BlockSize : 1];
        float* scales = ahead ? buffer : null;
        while (job->Claims.TryClaim(out int first, out int end))
        {
            if (job->ActivationRows > 1)
            {
                RunRowsOfSeveral(job, first, end, scales);
                continue;
            }
            for (int row = first; row < end; row++)
            {
                long start = (long)row * job->Columns;
                if (scales != null) RowScales(job, start, null, scales);
                float value = job->Variant switch
                {
                    _ when !job->Grouped => RowScalar(job, start),
                    Bnb4BitGemvVariant.Avx512 => Row512(job, start, scales),
                    Bnb4BitGemvVariant.Avx2 => RowAvx2(job, start, scales),
                    Bnb4BitGemvVariant.Vector256 => Row256(job, start, scales),
                    _ => Row128(job, start, scales),
                };
                Store(job, row, 0, value);
            }
        }
    }

    /// <summary>
    /// Weight row <paramref name="row"/>'s product with activation row <paramref name="activationRow"/> plus the row's
    /// bias, into the output in its dtype.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Job* job, int row, int activationRow, float value)
    {
        if (job->Bias != null) value += job->Bias[row];
        long at = (long)activationRow * job->Rows + row;
        if (job->OutputIsBFloat16) ((ushort*)job->Output)[at] = BFloat16Bits.Round(value);
        else ((float*)job->Output)[at] = value;
    }

    /// <summary>Weight rows <c>[first, end)</c> against every activation row (the AVX-512 and AVX2 float variants).</summary>
    private static void RunRowsOfSeveral(Job* job, int first, int end, float* scales)
    {
        int activationRows = job->ActivationRows;
        float* values = stackalloc float[MaxActivationRows];
        for (int row = first; row < end; row++)
        {
            long start = (long)row * job->Columns;
            if (scales != null) RowScales(job, start, null, scales);
            if (job->Variant == Bnb4BitGemvVariant.Avx512) Rows512(job, start, values, scales);
            else RowsAvx2(job, start, values, scales);
            for (int r = 0; r < activationRows; r++) Store(job, row, r, values[r]);
        }
    }

    /// <summary>
    /// Whether each row's block scales are worked out ahead of a float variant's loop: with double quantization each
    /// takes three dependent loads, as many instructions as the block's products, and eight at a time on vectors take
    /// one each (rows must start blocks).
    /// </summary>
    private static bool ScalesAhead(Job* job) => job->Nested != null && job->Grouped && !IsInt16(job->Variant)
        && job->Columns % BlockSize == 0 && job->Columns <= MaxInt16Columns;

    /// <summary>The scale of the block holding column <paramref name="column"/> of the row at <paramref name="start"/>: from <paramref name="scales"/> when worked out ahead.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float BlockScale(Job* job, float* scales, long start, int column)
        => scales != null ? scales[column >> 6] : Scale(job, (start + column) >> 6);

    /// <summary>The float32 scale of block <paramref name="block"/>: stored, or <c>code[q] · absmax2 + offset</c> (two roundings, as bitsandbytes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Scale(Job* job, long block)
    {
        if (job->Nested == null) return ((float*)job->Absmax)[block];
        float scaled = job->NestedCode[((byte*)job->Absmax)[block]] * job->Nested[block >> 8];
        return scaled + job->Offset;
    }

    /// <summary>One row element by element, a block's products summed before its scale is applied.</summary>
    private static float RowScalar(Job* job, long start)
    {
        int columns = job->Columns;
        float total = 0;
        int c = 0;
        while (c < columns)
        {
            long block = (start + c) >> 6;
            int end = (int)Math.Min(columns, ((block + 1) << 6) - start);
            float partial = 0;
            for (; c < end; c++)
            {
                long at = start + c;
                int q = (job->Codes[at >> 1] >> ((at & 1) == 0 ? 4 : 0)) & 0x0F;
                partial += job->Code[q] * job->Input[c];
            }
            total += partial * Scale(job, block);
        }
        return total;
    }

    /// <summary>
    /// 16 code bytes widened to 16 int lanes hold the even weights in bits 4–7 and the odd ones in bits 0–3;
    /// <c>vpermps</c> reads only the low 4 bits of each lane, so the odd weights need no mask.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Row512(Job* job, long start, float* scales)
    {
        var table = Avx512F.LoadVector512(job->Code);
        Vector512<float> total0 = Vector512<float>.Zero, total1 = Vector512<float>.Zero;
        float* x = job->Input;
        byte* codes = job->Codes + (start >> 1);
        int columns = job->Columns, g = 0;
        for (; g + 2 * Group <= columns; g += 2 * Group)
        {
            PrefetchCodes(codes, g);
            var first = Avx512F.ConvertToVector512Int32(Sse2.LoadVector128(codes + g / 2));
            var second = Avx512F.ConvertToVector512Int32(Sse2.LoadVector128(codes + g / 2 + Group / 2));
            var sum0 = Avx512F.Multiply(Avx512F.PermuteVar16x32(table, Avx512F.ShiftRightLogical(first, 4)), Avx512F.LoadVector512(x + g));
            var sum1 = Avx512F.Multiply(Avx512F.PermuteVar16x32(table, Avx512F.ShiftRightLogical(second, 4)), Avx512F.LoadVector512(x + g + Group));
            sum0 = Avx512F.FusedMultiplyAdd(Avx512F.PermuteVar16x32(table, first), Avx512F.LoadVector512(x + g + 16), sum0);
            sum1 = Avx512F.FusedMultiplyAdd(Avx512F.PermuteVar16x32(table, second), Avx512F.LoadVector512(x + g + Group + 16), sum1);
            total0 = Avx512F.FusedMultiplyAdd(sum0, Vector512.Create(BlockScale(job, scales, start, g)), total0);
            total1 = Avx512F.FusedMultiplyAdd(sum1, Vector512.Create(BlockScale(job, scales, start, g + Group)), total1);
        }
        if (g < columns)
        {
            var last = Avx512F.ConvertToVector512Int32(Sse2.LoadVector128(codes + g / 2));
            var sum = Avx512F.Multiply(Avx512F.PermuteVar16x32(table, Avx512F.ShiftRightLogical(last, 4)), Avx512F.LoadVector512(x + g));
            sum = Avx512F.FusedMultiplyAdd(Avx512F.PermuteVar16x32(table, last), Avx512F.LoadVector512(x + g + 16), sum);
            total0 = Avx512F.FusedMultiplyAdd(sum, Vector512.Create(BlockScale(job, scales, start, g)), total0);
        }
        return Vector512.Sum(total0 + total1);
    }

    /// <summary>
    /// <see cref="Row512"/> on AVX2: 8 code bytes widened to 8 int lanes; <c>vpermps</c> reads the low 3 bits of each
    /// lane from two 8-entry halves of the code book, and bit 3, shifted into the sign, picks the half.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float RowAvx2(Job* job, long start, float* scales)
    {
        var lower = Avx.LoadVector256(job->Code);
        var upper = Avx.LoadVector256(job->Code + 8);
        var total = Vector256<float>.Zero;
        float* x = job->Input;
        byte* codes = job->Codes + (start >> 1);
        for (int g = 0; g < job->Columns; g += Group)
        {
            PrefetchCodes(codes, g);
            var first = Avx2.ConvertToVector256Int32(codes + g / 2);
            var second = Avx2.ConvertToVector256Int32(codes + g / 2 + 8);
            var sum0 = Avx.Multiply(Lookup8(lower, upper, Avx2.ShiftRightLogical(first, 4)), Avx.LoadVector256(x + g));
            var sum1 = Avx.Multiply(Lookup8(lower, upper, Avx2.ShiftRightLogical(second, 4)), Avx.LoadVector256(x + g + 8));
            sum0 = Fma.MultiplyAdd(Lookup8(lower, upper, first), Avx.LoadVector256(x + g + 16), sum0);
            sum1 = Fma.MultiplyAdd(Lookup8(lower, upper, second), Avx.LoadVector256(x + g + 24), sum1);
            total = Fma.MultiplyAdd(Avx.Add(sum0, sum1), Vector256.Create(BlockScale(job, scales, start, g)), total);
        }
        return Vector256.Sum(total);
    }

    /// <summary>
    /// <see cref="Row512"/> for every activation row at once, four rows per pass over the weight row: each 64 weights are
    /// looked up once per pass and multiplied with each of its rows in the same order as <see cref="Row512"/>, so each row
    /// gets exactly what it gets alone. The rows' sums stay in registers (kept on the stack, their 512-bit stores made this
    /// loop slower than the AVX2 one on Zen 4).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows512(Job* job, long start, float* values, float* scales)
    {
        int columns = job->Columns, activationRows = job->ActivationRows;
        var table = Avx512F.LoadVector512(job->Code);
        byte* codes = job->Codes + (start >> 1);
        for (int first = 0; first < activationRows; first += 4)
        {
            int tile = Math.Min(4, activationRows - first);
            float* x0 = job->Input + (long)first * columns, x1 = x0 + columns, x2 = x1 + columns, x3 = x2 + columns;
            Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
            for (int g = 0; g < columns; g += 2 * Group)
            {
                PrefetchCodes(codes, g);
                bool whole = g + 2 * Group <= columns;
                var first16 = Avx512F.ConvertToVector512Int32(Sse2.LoadVector128(codes + g / 2));
                var firstHigh = Avx512F.PermuteVar16x32(table, Avx512F.ShiftRightLogical(first16, 4));
                var firstLow = Avx512F.PermuteVar16x32(table, first16);
                var firstScale = Vector512.Create(BlockScale(job, scales, start, g));
                var second16 = whole ? Avx512F.ConvertToVector512Int32(Sse2.LoadVector128(codes + g / 2 + Group / 2)) : default;
                var secondHigh = Avx512F.PermuteVar16x32(table, Avx512F.ShiftRightLogical(second16, 4));
                var secondLow = Avx512F.PermuteVar16x32(table, second16);
                var secondScale = whole ? Vector512.Create(BlockScale(job, scales, start, g + Group)) : default;
                // The tile's size is fixed over the loop, so its branches are predicted and cost next to nothing.
                Accumulate(x0 + g, whole, firstHigh, firstLow, firstScale, secondHigh, secondLow, secondScale, ref a0, ref b0);
                if (tile < 2) continue;
                Accumulate(x1 + g, whole, firstHigh, firstLow, firstScale, secondHigh, secondLow, secondScale, ref a1, ref b1);
                if (tile < 3) continue;
                Accumulate(x2 + g, whole, firstHigh, firstLow, firstScale, secondHigh, secondLow, secondScale, ref a2, ref b2);
                if (tile < 4) continue;
                Accumulate(x3 + g, whole, firstHigh, firstLow, firstScale, secondHigh, secondLow, secondScale, ref a3, ref b3);
            }
            values[first] = Vector512.Sum(a0 + b0);
            if (tile > 1) values[first + 1] = Vector512.Sum(a1 + b1);
            if (tile > 2) values[first + 2] = Vector512.Sum(a2 + b2);
            if (tile > 3) values[first + 3] = Vector512.Sum(a3 + b3);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void Accumulate(float* x, bool whole, Vector512<float> firstHigh, Vector512<float> firstLow, Vector512<float> firstScale,
            Vector512<float> secondHigh, Vector512<float> secondLow, Vector512<float> secondScale, ref Vector512<float> even, ref Vector512<float> odd)
        {
            var sum0 = Avx512F.FusedMultiplyAdd(firstLow, Avx512F.LoadVector512(x + 16), Avx512F.Multiply(firstHigh, Avx512F.LoadVector512(x)));
            even = Avx512F.FusedMultiplyAdd(sum0, firstScale, even);
            if (!whole) return;
            var sum1 = Avx512F.FusedMultiplyAdd(secondLow, Avx512F.LoadVector512(x + Group + 16), Avx512F.Multiply(secondHigh, Avx512F.LoadVector512(x + Group)));
            odd = Avx512F.FusedMultiplyAdd(sum1, secondScale, odd);
        }
    }

    /// <summary><see cref="RowAvx2"/> for every activation row at once (see <see cref="Rows512"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowsAvx2(Job* job, long start, float* values, float* scales)
    {
        int columns = job->Columns, activationRows = job->ActivationRows;
        var totals = stackalloc Vector256<float>[MaxActivationRows];
        for (int r = 0; r < activationRows; r++) totals[r] = Vector256<float>.Zero;
        var lower = Avx.LoadVector256(job->Code);
        var upper = Avx.LoadVector256(job->Code + 8);
        byte* codes = job->Codes + (start >> 1);
        for (int g = 0; g < columns; g += Group)
        {
            PrefetchCodes(codes, g);
            var first = Avx2.ConvertToVector256Int32(codes + g / 2);
            var second = Avx2.ConvertToVector256Int32(codes + g / 2 + 8);
            var firstHigh = Lookup8(lower, upper, Avx2.ShiftRightLogical(first, 4));
            var secondHigh = Lookup8(lower, upper, Avx2.ShiftRightLogical(second, 4));
            var firstLow = Lookup8(lower, upper, first);
            var secondLow = Lookup8(lower, upper, second);
            var scale = Vector256.Create(BlockScale(job, scales, start, g));
            for (int r = 0; r < activationRows; r++)
            {
                float* x = job->Input + (long)r * columns + g;
                var sum0 = Fma.MultiplyAdd(firstLow, Avx.LoadVector256(x + 16), Avx.Multiply(firstHigh, Avx.LoadVector256(x)));
                var sum1 = Fma.MultiplyAdd(secondLow, Avx.LoadVector256(x + 24), Avx.Multiply(secondHigh, Avx.LoadVector256(x + 8)));
                totals[r] = Fma.MultiplyAdd(Avx.Add(sum0, sum1), scale, totals[r]);
            }
        }
        for (int r = 0; r < activationRows; r++) values[r] = Vector256.Sum(totals[r]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Lookup8(Vector256<float> lower, Vector256<float> upper, Vector256<int> index)
        => Avx.BlendVariable(Avx2.PermuteVar8x32(lower, index), Avx2.PermuteVar8x32(upper, index), Avx2.ShiftLeftLogical(index, 28).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Row256(Job* job, long start, float* scales)
    {
        var lower = Vector256.Load(job->Code);
        var upper = Vector256.Load(job->Code + 8);
        var nibble = Vector128.Create((byte)0x0F);
        var total = Vector256<float>.Zero;
        float* x = job->Input;
        for (int g = 0; g < job->Columns; g += Group)
        {
            PrefetchCodes(job->Codes + (start >> 1), g);
            long at = start + g;
            var bytes = Vector128.Load(job->Codes + (at >> 1));
            var high = Vector128.ShiftRightLogical(bytes, 4);
            var low = bytes & nibble;
            var highWide = Vector256.Create(Vector128.WidenLower(high), Vector128.WidenUpper(high));
            var lowWide = Vector256.Create(Vector128.WidenLower(low), Vector128.WidenUpper(low));
            var sum = Lookup(lower, upper, Vector256.WidenLower(highWide)) * Vector256.Load(x + g);
            sum = Vector256.FusedMultiplyAdd(Lookup(lower, upper, Vector256.WidenUpper(highWide)), Vector256.Load(x + g + 8), sum);
            sum = Vector256.FusedMultiplyAdd(Lookup(lower, upper, Vector256.WidenLower(lowWide)), Vector256.Load(x + g + 16), sum);
            sum = Vector256.FusedMultiplyAdd(Lookup(lower, upper, Vector256.WidenUpper(lowWide)), Vector256.Load(x + g + 24), sum);
            total = Vector256.FusedMultiplyAdd(sum, Vector256.Create(BlockScale(job, scales, start, g)), total);
        }
        return Vector256.Sum(total);
    }

    /// <summary>Eight code-book values by 4-bit index: two 8-entry shuffles, chosen by bit 3.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Lookup(Vector256<float> lower, Vector256<float> upper, Vector256<uint> index)
    {
        var i = index.AsInt32();
        var low3 = i & Vector256.Create(7);
        return Vector256.ConditionalSelect(Vector256.GreaterThan(i, Vector256.Create(7)).AsSingle(),
            Vector256.Shuffle(upper, low3), Vector256.Shuffle(lower, low3));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Row128(Job* job, long start, float* scales)
    {
        var q0 = Vector128.Load(job->Code);
        var q1 = Vector128.Load(job->Code + 4);
        var q2 = Vector128.Load(job->Code + 8);
        var q3 = Vector128.Load(job->Code + 12);
        var nibble = Vector128.Create((byte)0x0F);
        var total = Vector128<float>.Zero;
        float* x = job->Input;
        for (int g = 0; g < job->Columns; g += Group)
        {
            PrefetchCodes(job->Codes + (start >> 1), g);
            long at = start + g;
            var bytes = Vector128.Load(job->Codes + (at >> 1));
            var high = Vector128.ShiftRightLogical(bytes, 4);
            var low = bytes & nibble;
            var sum = Vector128<float>.Zero;
            sum = Half(q0, q1, q2, q3, Vector128.WidenLower(high), x + g, sum);
            sum = Half(q0, q1, q2, q3, Vector128.WidenUpper(high), x + g + 8, sum);
            sum = Half(q0, q1, q2, q3, Vector128.WidenLower(low), x + g + 16, sum);
            sum = Half(q0, q1, q2, q3, Vector128.WidenUpper(low), x + g + 24, sum);
            total = Vector128.FusedMultiplyAdd(sum, Vector128.Create(BlockScale(job, scales, start, g)), total);
        }
        return Vector128.Sum(total);
    }

    /// <summary>Adds eight looked-up weights times eight activations to <paramref name="sum"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Half(Vector128<float> q0, Vector128<float> q1, Vector128<float> q2, Vector128<float> q3,
        Vector128<ushort> indices, float* x, Vector128<float> sum)
    {
        sum = Vector128.FusedMultiplyAdd(Lookup(q0, q1, q2, q3, Vector128.WidenLower(indices)), Vector128.Load(x), sum);
        return Vector128.FusedMultiplyAdd(Lookup(q0, q1, q2, q3, Vector128.WidenUpper(indices)), Vector128.Load(x + 4), sum);
    }

    /// <summary>Four code-book values by 4-bit index: four 4-entry shuffles, chosen by bits 2 and 3.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Lookup(Vector128<float> q0, Vector128<float> q1, Vector128<float> q2, Vector128<float> q3, Vector128<uint> index)
    {
        var i = index.AsInt32();
        var low2 = i & Vector128.Create(3);
        var bit2 = Vector128.Equals(i & Vector128.Create(4), Vector128.Create(4)).AsSingle();
        var first = Vector128.ConditionalSelect(bit2, Vector128.Shuffle(q1, low2), Vector128.Shuffle(q0, low2));
        var second = Vector128.ConditionalSelect(bit2, Vector128.Shuffle(q3, low2), Vector128.Shuffle(q2, low2));
        return Vector128.ConditionalSelect(Vector128.GreaterThan(i, Vector128.Create(7)).AsSingle(), second, first);
    }
}

/// <summary>The vector width of <see cref="Bnb4BitGemv"/>.</summary>
internal enum Bnb4BitGemvVariant
{
    /// <summary>Element by element: the fallback, and the path of rows whose length is not a multiple of 32.</summary>
    Scalar,

    /// <summary>128-bit portable vectors: NEON on Arm64, SSE on x64.</summary>
    Vector128,

    /// <summary>256-bit portable vectors: AVX2 on x64.</summary>
    Vector256,

    /// <summary>AVX-512 intrinsics (a 16-entry permute per 16 weights).</summary>
    Avx512,

    /// <summary>AVX2 + FMA intrinsics (two 8-entry permutes and a blend per 8 weights, no masking).</summary>
    Avx2,

    /// <summary>
    /// AVX-512 (BW), integer: codes looked up as 16-bit integers (<c>vpermw</c>, 32 weights per lookup) and multiplied with
    /// 16-bit activations (<c>vpmaddwd</c>); for bfloat16 and float16 compute. Rows of a multiple of 128 columns.
    /// </summary>
    Avx512Int16,

    /// <summary>
    /// AVX2, integer: codes looked up as two byte planes (<c>vpshufb</c>) and multiplied with 16-bit activations
    /// (<c>vpmaddwd</c>); for bfloat16 and float16 compute. Rows of a multiple of 64 columns.
    /// </summary>
    Avx2Int16,

    /// <summary>
    /// <see cref="Avx2Int16"/> with AVX-VNNI's <c>vpdpwssd</c>, which adds as it multiplies (Intel's client cores since
    /// Alder Lake, AMD's since Zen 5; not the later AVX-VNNI-INT16 extension): the same integer sums with a third fewer
    /// instructions per block.
    /// </summary>
    AvxVnniInt16,

    /// <summary>
    /// Portable 128-bit vectors, integer: codes looked up as two byte planes (a 16-byte shuffle, <c>tbl</c> on Arm64) and
    /// multiplied with 16-bit activations after widening to 32 bits; for bfloat16 and float16 compute where neither
    /// integer variant above runs. Rows of a multiple of 64 columns.
    /// </summary>
    Vector128Int16,
}
