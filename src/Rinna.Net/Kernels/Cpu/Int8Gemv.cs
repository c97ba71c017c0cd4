using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>The widths of <see cref="Int8Gemv"/>'s dot products.</summary>
internal enum Int8GemvVariant
{
    /// <summary>x64 with AVX-512 BW: 64 products per step with <c>vpmaddwd</c>.</summary>
    Avx512,

    /// <summary>x64 with AVX2: 32 products per step with <c>vpmaddwd</c> (no VNNI needed).</summary>
    Avx2,

    /// <summary>.NET's portable 128-bit vectors (NEON on Arm64, SSE on x64): widening multiplies.</summary>
    Vector128,

    /// <summary>
    /// x64 with AVX-VNNI, for several rows: <c>vpdpbusd</c>, 32 products per instruction, on weights offset to unsigned
    /// bytes (<c>w + 128</c>, one sign-bit flip per load), the offset's share (<c>128 · Σx</c>, once per call) subtracted after.
    /// </summary>
    AvxVnni,
}

/// <summary>
/// The int8 × int8 → int32 product of LLM.int8() for one row of quantized activations (a decode step) or a few (up to
/// <see cref="MaxRows"/>: a continuous-batching step), in managed vector code on libtorch's OpenMP threads:
/// <c>acc[m,n] = Σₖ W[n,k] · x[m,k]</c>, exact integer sums (what ATen's <c>_int_mm</c> returns where oneDNN's are exact).
/// Each weight row is read from memory once for all activation rows, which pass it four at a time while it sits in L1,
/// two weight rows together on x64. Prompts take it too where <c>_int_mm</c> is not exact, 32 rows a call.
/// </summary>
/// <remarks>
/// Why: without VNNI, oneDNN's int8 GEMM behind <c>_int_mm</c> is compute-bound for a single row, and int8 decode ran
/// several times slower than the memory bandwidth allows (benchmarks/RESULTS.md). A single-row product needs one
/// multiply-add per weight byte; <c>vpmaddwd</c> on sign-extended bytes does 16 (AVX2) or 32 (AVX-512) of them per
/// instruction, which keeps up with memory on any AVX2 CPU. Integer sums are exact in any order (|acc| ≤ 127²·K &lt; 2³¹
/// for K &lt; 133,000), so every variant returns the same bits as <c>_int_mm</c>.
/// </remarks>
internal static unsafe class Int8Gemv
{
    /// <summary>Weights fetched ahead of use (4 KiB, one page), as in <see cref="Float16Gemv"/>.</summary>
    private const int PrefetchAhead = 4096;


    /// <summary>The most activation rows one call takes (<see cref="MultiRowGemv.MaxRows"/>, the float path's limit).</summary>
    public const int MaxRows = MultiRowGemv.MaxRows;

    /// <summary>Activation rows multiplied with each weight row per pass.</summary>
    private const int RowsPerPass = 4;

    /// <summary>The longest row whose offset sums cannot overflow int32 in the VNNI variant: 255 · 128 · K &lt; 2³¹.</summary>
    private const int MaxOffsetColumns = 65_000;

    /// <summary>Columns per step of <see cref="OffsetBytes256"/>; the columns past the last whole step are summed as integers.</summary>
    private const int VnniStep = 32;

    /// <summary>The longest row whose sums cannot overflow int32: 127² · K &lt; 2³¹.</summary>
    internal const int MaxColumns = 133_000;

    /// <summary>The widest variant this CPU runs in hardware; <c>null</c> when none is (the caller then uses <c>_int_mm</c>).</summary>
    public static Int8GemvVariant? DefaultVariant { get; } =
        IsAccelerated(Int8GemvVariant.Avx512) ? Int8GemvVariant.Avx512
        : IsAccelerated(Int8GemvVariant.Avx2) ? Int8GemvVariant.Avx2
        : IsAccelerated(Int8GemvVariant.Vector128) ? Int8GemvVariant.Vector128
        : null;

    /// <summary>
    /// The variant for two or more rows, where the product is compute-bound: AVX-VNNI where the CPU has it (one
    /// <c>vpdpbusd</c> per 32 products and row, against a multiply-add and an add per 16 or 32 in the sign-extending
    /// variants; 8 rows of rinna-4b's largest layer in 0.66× the AVX-512 variant's time), else <see cref="DefaultVariant"/>.
    /// One row is bound by memory and keeps <see cref="DefaultVariant"/>.
    /// </summary>
    public static Int8GemvVariant? RowsVariant { get; } = IsAccelerated(Int8GemvVariant.AvxVnni) ? Int8GemvVariant.AvxVnni : DefaultVariant;

    /// <summary>Whether this path can run: a variant in hardware and libtorch's OpenMP team found.</summary>
    public static bool IsSupported { get; } = DefaultVariant is not null && LibTorchOpenMp.IsAvailable;

    /// <summary>
    /// Whether int8 decode steps use this kernel rather than <c>_int_mm</c>: on CPUs without VNNI, where oneDNN's single-row
    /// product is compute-bound, or wherever the variant measured faster (benchmarks/RESULTS.md, <c>Int8GemvBenchmarks</c>).
    /// <c>RINNA_INT8_GEMV=0</c> or <c>1</c> overrides the choice (to compare the two on a new CPU).
    /// </summary>
    public static bool IsPreferredForDecode { get; internal set; } = IsSupported && (Environment.GetEnvironmentVariable("RINNA_INT8_GEMV") switch
    {
        "0" => false,
        "1" => true,
        _ => !(AvxVnni.IsSupported || Avx10v1.IsSupported) || MeasuredFasterThanIntMmWithVnni,
    });

    /// <summary>Whether this kernel also beat <c>_int_mm</c> inside the model on a VNNI CPU (it did: benchmarks/RESULTS.md).</summary>
    private const bool MeasuredFasterThanIntMmWithVnni = true;

    /// <summary>Whether the CPU runs <paramref name="variant"/> in hardware.</summary>
    public static bool IsAccelerated(Int8GemvVariant variant) => variant switch
    {
        Int8GemvVariant.Avx512 => Avx512BW.IsSupported,
        Int8GemvVariant.Avx2 => Avx2.IsSupported,
        Int8GemvVariant.Vector128 => Vector128.IsHardwareAccelerated,
        Int8GemvVariant.AvxVnni => AvxVnni.IsSupported,
        _ => false,
    };

    private struct Job
    {
        public sbyte* Weight;
        public sbyte* Input;
        public short* WideInput;
        public int* InputSums;
        public int InputRows;
        public int* Output;
        public int Rows;
        public int Columns;
        public RowClaims Claims;
        public Int8GemvVariant Variant;
    }

    /// <summary>
    /// <c>x · Wᵀ</c> as int32 <c>[M, N]</c> for contiguous CPU rows <paramref name="x"/> <c>[M, K]</c> of int8 (1 ≤ M ≤
    /// <see cref="MaxRows"/>) and the contiguous int8 <paramref name="weight"/> <c>[N, K]</c>; false, doing nothing, for anything else.
    /// </summary>
    public static bool TryMultiply(Tensor x, Tensor weight, out Tensor result)
    {
        result = null!;
        return IsSupported && TryMultiply(x, weight, out result, (x.dim() == 2 && x.size(0) > 1 ? RowsVariant : DefaultVariant)!.Value);
    }

    /// <summary><see cref="TryMultiply(Tensor, Tensor, out Tensor)"/> with a chosen variant, which must be accelerated; for tests and benchmarks.</summary>
    internal static bool TryMultiply(Tensor x, Tensor weight, out Tensor result, Int8GemvVariant variant)
    {
        result = null!;
        if (!IsAccelerated(variant) || !LibTorchOpenMp.IsAvailable || !Eligible(x, weight)
            || (variant == Int8GemvVariant.AvxVnni && weight.size(1) > MaxOffsetColumns))
            return false;
        int rows = (int)weight.size(0), columns = (int)weight.size(1), inputRows = (int)x.size(0);
        var output = empty(inputRows, rows, dtype: ScalarType.Int32);
        // Several rows are sign-extended to int16 once, so that each weight load meets them as memory operands. VNNI
        // takes the int8 rows as they are and needs only each row's sum for the weights' offset.
        bool vnni = variant == Int8GemvVariant.AvxVnni;
        var wide = inputRows == 1 || vnni ? null : ArrayPool<short>.Shared.Rent(inputRows * columns);
        int* inputSums = stackalloc int[inputRows];
        try
        {
            fixed (byte* inputBytes = x.bytes)
            fixed (short* wideInput = wide)
            fixed (byte* weightBytes = weight.bytes)
            fixed (byte* outputBytes = output.bytes)
            {
                if (wide is not null) SignExtend((sbyte*)inputBytes, wideInput, inputRows * columns);
                if (vnni)
                    for (int i = 0; i < inputRows; i++)
                        inputSums[i] = Sum((sbyte*)inputBytes + (long)i * columns, columns - columns % VnniStep);
                int threads = get_num_threads();
                var job = new Job
                {
                    Weight = (sbyte*)weightBytes, Input = (sbyte*)inputBytes, WideInput = wideInput, InputSums = inputSums,
                    InputRows = inputRows, Output = (int*)outputBytes, Rows = rows, Columns = columns,
                    Claims = new RowClaims(rows, threads, 16), Variant = variant,
                };
                LibTorchOpenMp.Run(&RunRows, &job, threads);
            }
        }
        finally
        {
            if (wide is not null) ArrayPool<short>.Shared.Return(wide);
        }
        result = output;
        return true;
    }

    private static void SignExtend(sbyte* source, short* destination, int count)
    {
        int i = 0;
        for (; i + Vector256<sbyte>.Count <= count; i += Vector256<sbyte>.Count)
        {
            var (low, high) = Vector256.Widen(Vector256.Load(source + i));
            low.Store(destination + i);
            high.Store(destination + i + Vector256<short>.Count);
        }
        for (; i < count; i++) destination[i] = source[i];
    }

    /// <summary>Σx over a row's first <paramref name="count"/> values: what the VNNI variant's weight offset adds, 128 times over.</summary>
    private static int Sum(sbyte* source, int count)
    {
        int sum = 0;
        for (int i = 0; i < count; i++) sum += source[i];
        return sum;
    }

    private static bool Eligible(Tensor x, Tensor weight)
    {
        static bool OnCpuContiguous(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();
        return OnCpuContiguous(x) && x.dtype == ScalarType.Int8 && x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= MaxRows
            && OnCpuContiguous(weight) && weight.dtype == ScalarType.Int8 && weight.dim() == 2 && weight.size(1) == x.size(1)
            && weight.size(1) <= MaxColumns && weight.numel() <= int.MaxValue;
    }

    [UnmanagedCallersOnly]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunRows(void* state)
    {
        var job = (Job*)state;
        int columns = job->Columns, inputRows = job->InputRows;
        bool vnni = job->Variant == Int8GemvVariant.AvxVnni;
        bool paired = vnni || job->Variant is Int8GemvVariant.Avx2 or Int8GemvVariant.Avx512;
        short** inputs = stackalloc short*[RowsPerPass];
        sbyte** byteInputs = stackalloc sbyte*[RowsPerPass];
        int* inputSums = stackalloc int[RowsPerPass];
        int* sums = stackalloc int[RowsPerPass];
        int* pairSums = stackalloc int[2 * RowsPerPass];
        // VNNI's weight offset reaches the loop as an argument, which the JIT keeps in a register; a constant inside the
        // loop it rebuilt every step.
        var signBit = Vector256.Create((byte)0x80);
        while (job->Claims.TryClaim(out int first, out int end))
        {
            for (int row = first; row < end; row++)
            {
                var weight = job->Weight + (long)row * columns;
                if (inputRows == 1 && !vnni)
                {
                    job->Output[row] = Dot(job->Variant, weight, job->Input, columns);
                    continue;
                }
                if (paired)
                {
                    // Two weight rows at a time share each activation load, which bounded the one-row loop
                    // (benchmarks/RESULTS.md); a last odd row is paired with itself.
                    var next = row + 1 < end ? weight + columns : weight;
                    for (int pass = 0; pass < inputRows; pass += RowsPerPass)
                    {
                        int count = Math.Min(RowsPerPass, inputRows - pass);
                        // A short last pass repeats its first row; those sums are not written.
                        for (int i = 0; i < RowsPerPass; i++)
                        {
                            int inputRow = pass + (i < count ? i : 0);
                            if (vnni)
                            {
                                byteInputs[i] = job->Input + (long)inputRow * columns;
                                inputSums[i] = job->InputSums[inputRow];
                            }
                            else inputs[i] = job->WideInput + (long)inputRow * columns;
                        }
                        int done = vnni
                            ? Dot2x4<OffsetBytes256, sbyte, Vector256<byte>, Vector256<int>>(weight, next, byteInputs, columns, signBit, pairSums)
                            : job->Variant == Int8GemvVariant.Avx512
                                ? Dot2x4<Words512, short, Vector512<short>, Vector512<int>>(weight, next, inputs, columns, default, pairSums)
                                : Dot2x4<Words256, short, Vector256<short>, Vector256<int>>(weight, next, inputs, columns, default, pairSums);
                        if (vnni)
                            for (int i = 0; i < RowsPerPass; i++)
                            {
                                // The offset's share over the whole steps, summed once per call.
                                pairSums[i] -= 128 * inputSums[i];
                                pairSums[RowsPerPass + i] -= 128 * inputSums[i];
                            }
                        if (done < columns)
                            for (int i = 0; i < RowsPerPass; i++)
                            {
                                pairSums[i] += vnni ? Tail(weight, byteInputs[i], done, columns) : Tail(weight, inputs[i], done, columns);
                                pairSums[RowsPerPass + i] += vnni ? Tail(next, byteInputs[i], done, columns) : Tail(next, inputs[i], done, columns);
                            }
                        for (int i = 0; i < count; i++)
                        {
                            job->Output[(long)(pass + i) * job->Rows + row] = pairSums[i];
                            if (next != weight) job->Output[(long)(pass + i) * job->Rows + row + 1] = pairSums[RowsPerPass + i];
                        }
                    }
                    if (next != weight) row++;
                    continue;
                }
                for (int pass = 0; pass < inputRows; pass += RowsPerPass)
                {
                    int count = Math.Min(RowsPerPass, inputRows - pass);
                    // As above, a short last pass repeats its first row.
                    for (int i = 0; i < RowsPerPass; i++)
                        inputs[i] = job->WideInput + (long)(pass + (i < count ? i : 0)) * columns;
                    Dot4x128(weight, inputs, columns, sums);
                    for (int i = 0; i < count; i++) job->Output[(long)(pass + i) * job->Rows + row] = sums[i];
                }
            }
        }
    }

    /// <summary>
    /// Two weight rows with four activation rows, <typeparamref name="TLanes"/>'s columns per step, each activation vector
    /// loaded once for both weight rows: loads, not multiplies, bounded one weight row per pass. Writes the whole steps'
    /// sums to <paramref name="sums"/>[0..3] for <paramref name="weight"/> and [4..7] for <paramref name="weight1"/> and
    /// returns the first column past them, which the caller sums as integers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Dot2x4<TLanes, TInput, TWords, TSums>(sbyte* weight, sbyte* weight1, TInput** inputs, int columns, TWords offset, int* sums)
        where TLanes : struct, IPairLanes<TInput, TWords, TSums> where TInput : unmanaged where TWords : unmanaged where TSums : unmanaged
    {
        TInput* x0 = inputs[0], x1 = inputs[1], x2 = inputs[2], x3 = inputs[3];
        // Eight independent accumulators hide the multiply-add latency; with VNNI the loop holds 12 of the 16 ymm registers.
        TSums a0 = default, a1 = default, a2 = default, a3 = default;
        TSums b0 = default, b1 = default, b2 = default, b3 = default;
        int c = 0;
        for (; c + TLanes.Count <= columns; c += TLanes.Count)
        {
            Sse.Prefetch0(weight + c + PrefetchAhead);
            Sse.Prefetch0(weight1 + c + PrefetchAhead);
            TWords w = TLanes.LoadWeights(weight + c, offset), v = TLanes.LoadWeights(weight1 + c, offset);
            var x = TLanes.Load(x0 + c);
            a0 = TLanes.MultiplyAdd(w, x, a0);
            b0 = TLanes.MultiplyAdd(v, x, b0);
            x = TLanes.Load(x1 + c);
            a1 = TLanes.MultiplyAdd(w, x, a1);
            b1 = TLanes.MultiplyAdd(v, x, b1);
            x = TLanes.Load(x2 + c);
            a2 = TLanes.MultiplyAdd(w, x, a2);
            b2 = TLanes.MultiplyAdd(v, x, b2);
            x = TLanes.Load(x3 + c);
            a3 = TLanes.MultiplyAdd(w, x, a3);
            b3 = TLanes.MultiplyAdd(v, x, b3);
        }
        sums[0] = TLanes.Sum(a0);
        sums[1] = TLanes.Sum(a1);
        sums[2] = TLanes.Sum(a2);
        sums[3] = TLanes.Sum(a3);
        sums[4] = TLanes.Sum(b0);
        sums[5] = TLanes.Sum(b1);
        sums[6] = TLanes.Sum(b2);
        sums[7] = TLanes.Sum(b3);
        return c;
    }

    /// <summary>
    /// What <see cref="Dot2x4{TLanes, TInput, TWords, TSums}"/> needs of a vector width and an instruction: weight and
    /// activation vectors of one type, and exact int32 sums of their products.
    /// </summary>
    private interface IPairLanes<TInput, TWords, TSums> where TInput : unmanaged where TWords : unmanaged where TSums : unmanaged
    {
        /// <summary>Columns one step takes.</summary>
        static abstract int Count { get; }

        /// <summary><see cref="Count"/> weight bytes as the products take them, given the variant's <paramref name="offset"/>.</summary>
        static abstract TWords LoadWeights(sbyte* bytes, TWords offset);

        /// <summary><see cref="Count"/> activations.</summary>
        static abstract TWords Load(TInput* at);

        /// <summary><paramref name="sum"/> plus the products of <paramref name="weights"/> and <paramref name="activations"/>, summed into int32 lanes.</summary>
        static abstract TSums MultiplyAdd(TWords weights, TWords activations, TSums sum);

        /// <summary>The total of <paramref name="sums"/>' int32 lanes.</summary>
        static abstract int Sum(TSums sums);
    }

    /// <summary>AVX-512 BW: sign-extended words, <c>vpmaddwd</c>, 32 columns a step.</summary>
    private readonly struct Words512 : IPairLanes<short, Vector512<short>, Vector512<int>>
    {
        public static int Count => 32;
        public static Vector512<short> LoadWeights(sbyte* bytes, Vector512<short> offset) => Avx512BW.ConvertToVector512Int16(Avx.LoadVector256(bytes));
        public static Vector512<short> Load(short* at) => Avx512F.LoadVector512(at);
        public static Vector512<int> MultiplyAdd(Vector512<short> weights, Vector512<short> activations, Vector512<int> sum) => sum + Avx512BW.MultiplyAddAdjacent(weights, activations);
        public static int Sum(Vector512<int> sums) => Vector512.Sum(sums);
    }

    /// <summary>AVX2: sign-extended words, <c>vpmaddwd</c>, 16 columns a step.</summary>
    private readonly struct Words256 : IPairLanes<short, Vector256<short>, Vector256<int>>
    {
        public static int Count => 16;
        public static Vector256<short> LoadWeights(sbyte* bytes, Vector256<short> offset) => Avx2.ConvertToVector256Int16(Sse2.LoadVector128(bytes));
        public static Vector256<short> Load(short* at) => Avx.LoadVector256(at);
        public static Vector256<int> MultiplyAdd(Vector256<short> weights, Vector256<short> activations, Vector256<int> sum) => sum + Avx2.MultiplyAddAdjacent(weights, activations);
        public static int Sum(Vector256<int> sums) => Vector256.Sum(sums);
    }

    /// <summary>
    /// AVX-VNNI: Σ (w+128)·x by <c>vpdpbusd</c> (four u8 × s8 products into each int32 lane), 32 columns a step, the
    /// weight offset by a sign-bit flip (the offset argument, 0x80); the caller subtracts 128 · Σx, summed once per
    /// activation row. Offsetting the weight rather than the activations keeps Σw, which differs per weight row, out of
    /// the loop. Exact: the lanes wrap modulo 2³² and the result fits in int32.
    /// </summary>
    private readonly struct OffsetBytes256 : IPairLanes<sbyte, Vector256<byte>, Vector256<int>>
    {
        public static int Count => VnniStep;
        public static Vector256<byte> LoadWeights(sbyte* bytes, Vector256<byte> offset) => Avx.LoadVector256((byte*)bytes) ^ offset;
        public static Vector256<byte> Load(sbyte* at) => Avx.LoadVector256((byte*)at);
        public static Vector256<int> MultiplyAdd(Vector256<byte> weights, Vector256<byte> activations, Vector256<int> sum) => AvxVnni.MultiplyWideningAndAdd(sum, weights, activations.AsSByte());
        public static int Sum(Vector256<int> sums) => Vector256.Sum(sums);
    }

    /// <summary>
    /// One weight row with four sign-extended activation rows, portably: int16 products (exact, |w·x| ≤ 127²) widened into
    /// int32 sums. Unpaired, as the x64 loops were before pairing measured faster; Arm64 is unmeasured.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot4x128(sbyte* weight, short** inputs, int columns, int* sums)
    {
        short* x0 = inputs[0], x1 = inputs[1], x2 = inputs[2], x3 = inputs[3];
        Vector128<int> a0 = default, a1 = default, a2 = default, a3 = default;
        int c = 0;
        for (; c + 16 <= columns; c += 16)
        {
            var (low, high) = Vector128.Widen(Vector128.Load(weight + c));
            a0 += Products(low, high, x0 + c);
            a1 += Products(low, high, x1 + c);
            a2 += Products(low, high, x2 + c);
            a3 += Products(low, high, x3 + c);
        }
        sums[0] = Vector128.Sum(a0) + Tail(weight, x0, c, columns);
        sums[1] = Vector128.Sum(a1) + Tail(weight, x1, c, columns);
        sums[2] = Vector128.Sum(a2) + Tail(weight, x2, c, columns);
        sums[3] = Vector128.Sum(a3) + Tail(weight, x3, c, columns);

        static Vector128<int> Products(Vector128<short> low, Vector128<short> high, short* x)
        {
            var (p0, p1) = Vector128.Widen(low * Vector128.Load(x));
            var (p2, p3) = Vector128.Widen(high * Vector128.Load(x + 8));
            return (p0 + p1) + (p2 + p3);
        }
    }

    private static int Tail(sbyte* weight, short* input, int from, int columns)
    {
        int sum = 0;
        for (int c = from; c < columns; c++) sum += weight[c] * input[c];
        return sum;
    }

    /// <summary>Σ w·x over one weight row and one activation row, exactly (any variant but <see cref="Int8GemvVariant.AvxVnni"/>).</summary>
    internal static int Dot(Int8GemvVariant variant, sbyte* weight, sbyte* input, int columns) => variant switch
    {
        Int8GemvVariant.Avx512 => Dot512(weight, input, columns),
        Int8GemvVariant.Avx2 => Dot256(weight, input, columns),
        _ => Dot128(weight, input, columns),
    };

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Dot512(sbyte* weight, sbyte* input, int columns)
    {
        Vector512<int> a0 = default, a1 = default;
        int c = 0;
        for (; c + 64 <= columns; c += 64)
        {
            // Prefetches never fault, so running past the end of the weight is harmless.
            Sse.Prefetch0(weight + c + PrefetchAhead);
            a0 += Avx512BW.MultiplyAddAdjacent(Avx512BW.ConvertToVector512Int16(Avx.LoadVector256(weight + c)),
                Avx512BW.ConvertToVector512Int16(Avx.LoadVector256(input + c)));
            a1 += Avx512BW.MultiplyAddAdjacent(Avx512BW.ConvertToVector512Int16(Avx.LoadVector256(weight + c + 32)),
                Avx512BW.ConvertToVector512Int16(Avx.LoadVector256(input + c + 32)));
        }
        int sum = Vector512.Sum(a0 + a1);
        return sum + Tail(weight, input, c, columns);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Dot256(sbyte* weight, sbyte* input, int columns)
    {
        Vector256<int> a0 = default, a1 = default;
        int c = 0;
        for (; c + 32 <= columns; c += 32)
        {
            Sse.Prefetch0(weight + c + PrefetchAhead);
            a0 += Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(Sse2.LoadVector128(weight + c)),
                Avx2.ConvertToVector256Int16(Sse2.LoadVector128(input + c)));
            a1 += Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(Sse2.LoadVector128(weight + c + 16)),
                Avx2.ConvertToVector256Int16(Sse2.LoadVector128(input + c + 16)));
        }
        int sum = Vector256.Sum(a0 + a1);
        return sum + Tail(weight, input, c, columns);
    }

    /// <summary>Portable: products of sign-extended bytes fit int16 exactly (|w·x| ≤ 127²), then widen into int32 sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Dot128(sbyte* weight, sbyte* input, int columns)
    {
        Vector128<int> a0 = default, a1 = default;
        int c = 0;
        for (; c + 16 <= columns; c += 16)
        {
            var (wLow, wHigh) = Vector128.Widen(Vector128.Load(weight + c));
            var (xLow, xHigh) = Vector128.Widen(Vector128.Load(input + c));
            var (p0, p1) = Vector128.Widen(wLow * xLow);
            var (p2, p3) = Vector128.Widen(wHigh * xHigh);
            a0 += p0 + p1;
            a1 += p2 + p3;
        }
        int sum = Vector128.Sum(a0 + a1);
        return sum + Tail(weight, input, c, columns);
    }

    private static int Tail(sbyte* weight, sbyte* input, int from, int columns)
    {
        int sum = 0;
        for (int c = from; c < columns; c++) sum += weight[c] * input[c];
        return sum;
    }
}
