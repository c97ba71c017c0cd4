using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// The integer variants of <see cref="Bnb4BitGemv"/>, for layers that compute in bfloat16 or float16. bitsandbytes
/// rounds the dequantized weight to that dtype before multiplying (8 or 11 significant bits); here the code book is
/// held as 16-bit integers (the value times 4096, off by at most 2⁻¹³ of the block's absmax) and each 64 activations as
/// 16-bit integers under a power-of-two scale (exact for bfloat16 values within 2⁷ of their block's largest, off by
/// at most 2⁻¹⁵ of it otherwise; a block whose largest is below 2⁻¹¹³ counts as zero). The products are summed exactly as
/// integers and each block's sum is scaled in float32.
/// </summary>
/// <remarks>
/// Why: the float variants spend about six instructions per 32 weights on widening, 16-entry permutes and FMAs, and
/// stay instruction-bound well under the memory's rate. Here one <c>vpermw</c> looks up 32 codes and one
/// <c>vpmaddwd</c> multiplies 32, as llama.cpp does with its own integer formats, while the code book stays
/// bitsandbytes'. The activations are reordered once per call so that each lookup's words meet their activations.
/// Overflow cannot happen: |code| ≤ 4096, |activation| ≤ 32767, and an int32 lane sums 8 products of one block (16 in
/// the portable variant: 16 · 4096 · 32767 &lt; 2³¹).
/// </remarks>
internal static unsafe partial class Bnb4BitGemv
{
    /// <summary>The code book's integer scale: 2¹².</summary>
    private const int CodeScaleBits = 12;

    /// <summary>Rows longer than this take the float variants (the per-row scales live on the stack).</summary>
    private const int MaxInt16Columns = 1 << 17;

    /// <summary>Rows longer than this take one activation row per call (each activation row's scales live on the stack).</summary>
    private const int MaxInt16RowsColumns = 1 << 14;

    /// <summary>
    /// The integer variant for this weight on this CPU, or null where none fits (rows not a multiple of 64 columns, a
    /// code book outside [-1, 1], no vector hardware): AVX-512 for rows of a multiple of 128 columns, then AVX2, then
    /// the portable 128-bit one (NEON on Arm64).
    /// </summary>
    public static Bnb4BitGemvVariant? Int16VariantFor(Bnb4BitMatrix weight) => Int16VariantFor(weight.Columns, weight.Code);

    /// <summary><see cref="Int16VariantFor(Bnb4BitMatrix)"/> for rows of <paramref name="columns"/> and this code book.</summary>
    public static Bnb4BitGemvVariant? Int16VariantFor(int columns, float[] code)
        => IsAccelerated(Bnb4BitGemvVariant.Avx512Int16) && FitsInt16(columns, code, Bnb4BitGemvVariant.Avx512Int16) ? Bnb4BitGemvVariant.Avx512Int16
        : IsAccelerated(Bnb4BitGemvVariant.AvxVnniInt16) && FitsInt16(columns, code, Bnb4BitGemvVariant.AvxVnniInt16) ? Bnb4BitGemvVariant.AvxVnniInt16
        : IsAccelerated(Bnb4BitGemvVariant.Avx2Int16) && FitsInt16(columns, code, Bnb4BitGemvVariant.Avx2Int16) ? Bnb4BitGemvVariant.Avx2Int16
        : IsAccelerated(Bnb4BitGemvVariant.Vector128Int16) && FitsInt16(columns, code, Bnb4BitGemvVariant.Vector128Int16) ? Bnb4BitGemvVariant.Vector128Int16
        : null;

    private static bool IsInt16(Bnb4BitGemvVariant variant)
        => variant is Bnb4BitGemvVariant.Avx512Int16 or Bnb4BitGemvVariant.Avx2Int16 or Bnb4BitGemvVariant.AvxVnniInt16
            or Bnb4BitGemvVariant.Vector128Int16;

    /// <summary>Columns each step of <paramref name="variant"/> reads: 64 code bytes for AVX-512, 32 for AVX2 and the portable one.</summary>
    private static int Int16Chunk(Bnb4BitGemvVariant variant) => variant == Bnb4BitGemvVariant.Avx512Int16 ? 128 : 64;

    private static bool FitsInt16(Bnb4BitMatrix weight, Bnb4BitGemvVariant variant) => FitsInt16(weight.Columns, weight.Code, variant);

    private static bool FitsInt16(int columns, float[] code, Bnb4BitGemvVariant variant)
    {
        if (columns % Int16Chunk(variant) != 0 || columns > MaxInt16Columns || code.Length != 16) return false;
        foreach (float c in code)
            if (!(Math.Abs(c) <= 1f)) return false;
        return true;
    }

    /// <summary>
    /// A 4-bit weight as a decode layer pass (<see cref="DecodeLayer"/>) multiplies it, with an integer variant: its codes
    /// and scales, and the code book's integer table (<see cref="Int16TableOf"/>), all held in place by the pass's owner.
    /// </summary>
    internal struct DecodeWeight
    {
        public byte* Codes;
        public void* Absmax;
        public float* Nested;
        public float* NestedCode;
        public float Offset;
        public short* Table16;
        public Bnb4BitGemvVariant Variant;
    }

    /// <summary>The integer form of <paramref name="code"/> that the integer variants look codes up in (64 words).</summary>
    internal static short[] Int16TableOf(float[] code)
    {
        var table = new short[64];
        Int16Table(code, table);
        return table;
    }

    /// <summary>Whether <paramref name="variant"/> is an integer variant this CPU runs that takes rows of <paramref name="columns"/>.</summary>
    internal static bool RunsForDecode(Bnb4BitGemvVariant variant, int columns)
        => IsInt16(variant) && IsAccelerated(variant) && columns % Int16Chunk(variant) == 0 && columns <= MaxInt16Columns;

    /// <summary>The shared part of one product of a decode layer pass: its operands and the rows the team's threads claim.</summary>
    internal static Job DecodeJob(in DecodeWeight weight, int rows, int columns, int threads) => new()
    {
        Codes = weight.Codes, Absmax = weight.Absmax, Nested = weight.Nested, NestedCode = weight.NestedCode, Offset = weight.Offset,
        Table16 = weight.Table16, Variant = weight.Variant, Rows = rows, Columns = columns, ActivationRows = 1, Grouped = true,
        Claims = new RowClaims(rows, threads, 8),
    };

    /// <summary>
    /// This thread's integer copy of one activation row for <paramref name="variant"/>, as the separate product makes
    /// each of its rows; false where a value is not finite.
    /// </summary>
    internal static bool TryQuantizeForDecode(float* activations, int length, Bnb4BitGemvVariant variant, short* quantized, float* inverseScales)
        => QuantizeActivations(new ReadOnlySpan<float>(activations, length), new Span<short>(quantized, length),
            new Span<float>(inverseScales, length / BlockSize), variant);

    /// <summary>
    /// Claims runs of <paramref name="shared"/>'s rows until none are left and computes them from this thread's integer
    /// activations (<see cref="TryQuantizeForDecode"/>), then, 64 rows at a time, <paramref name="epilogue"/>'s bias, GELU,
    /// residuals and output (<see cref="Float16Gemv.Finish(Float16Gemv.Job*, int, int, float*, float)"/>), which round
    /// where the separate operations round.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit]
    internal static void MultiplyClaimedForDecode(Job* shared, short* quantized, float* inverseScales, Float16Gemv.Job* epilogue)
    {
        const int Block = 64;
        var job = *shared;
        job.Quantized = quantized;
        job.InverseScales = inverseScales;
        float* values = stackalloc float[Block];
        while (shared->Claims.TryClaim(out int first, out int end))
            for (int start = first; start < end; start += Block)
            {
                int count = Math.Min(Block, end - start);
                switch (job.Variant)
                {
                    case Bnb4BitGemvVariant.Avx512Int16: RunInt16Avx512(&job, start, count, values); break;
                    case Bnb4BitGemvVariant.Avx2Int16: RunInt16Avx2<MaddDot>(&job, start, count, values); break;
                    case Bnb4BitGemvVariant.AvxVnniInt16: RunInt16Avx2<VnniDot>(&job, start, count, values); break;
                    default:
                        for (int i = 0; i < count; i++) RowsInt16Vector128(&job, (long)(start + i) * job.Columns, values + i);
                        break;
                }
                Float16Gemv.Finish(epilogue, start, count, values, 1f);
            }
    }

    /// <summary>
    /// The code book times 4096, rounded, as 32 16-bit words for <c>vpermw</c> (which reads 5 index bits; the fifth is a
    /// neighbour's, so the book is there twice), then as its low and high bytes for <c>vpshufb</c> (16 each, twice, one
    /// per 128-bit lane): 128 bytes in all.
    /// </summary>
    private static void Int16Table(float[] code, Span<short> table)
    {
        var bytes = MemoryMarshal.AsBytes(table);
        for (int i = 0; i < 32; i++)
        {
            short value = (short)MathF.Round(code[i & 15] * (1 << CodeScaleBits));
            table[i] = value;
            bytes[64 + i] = (byte)value;
            bytes[96 + i] = (byte)(value >> 8);
        }
    }

    /// <summary>
    /// Each 64 activations as 16-bit integers under a power-of-two scale (the largest lands in [2¹⁴, 2¹⁵)), in the order
    /// <paramref name="variant"/>'s lookups produce weights; <paramref name="inverseScales"/> gets each block's
    /// <c>2^-(scale + 12)</c>. False where an activation is not finite.
    /// </summary>
    private static bool QuantizeActivations(ReadOnlySpan<float> input, Span<short> quantized, Span<float> inverseScales, Bnb4BitGemvVariant variant)
    {
        int chunk = Int16Chunk(variant);
        for (int start = 0; start < input.Length; start += chunk)
            if (!QuantizeChunk(input.Slice(start, chunk), quantized.Slice(start, chunk), inverseScales.Slice(start / BlockSize, chunk / BlockSize), variant))
                return false;
        return true;
    }

    /// <summary><see cref="QuantizeActivations"/> for one step of <paramref name="variant"/>: 128 activations for AVX-512, 64 for the others.</summary>
    private static bool QuantizeChunk(ReadOnlySpan<float> input, Span<short> target, Span<float> inverseScales, Bnb4BitGemvVariant variant)
        => QuantizeChunk(input, target, inverseScales, variant, Vector128.IsHardwareAccelerated);

    /// <summary><see cref="QuantizeChunk(ReadOnlySpan{float}, Span{short}, Span{float}, Bnb4BitGemvVariant)"/> on vectors or element by element (the same results); for tests.</summary>
    internal static bool QuantizeChunk(ReadOnlySpan<float> input, Span<short> target, Span<float> inverseScales, Bnb4BitGemvVariant variant, bool vectors)
    {
        int chunk = input.Length;
        Span<short> block = stackalloc short[128];
        for (int half = 0; half < chunk; half += BlockSize)
        {
            if (!QuantizeBlock(input.Slice(half, BlockSize), block.Slice(half, BlockSize), out int exponent, vectors))
                return false;
            inverseScales[half / BlockSize] = (float)Math.ScaleB(1.0, -exponent - CodeScaleBits);
        }
        if (variant == Bnb4BitGemvVariant.Avx512Int16)
        {
            // Lookup k reads bits 4k..4k+3 of each 16-bit word w (code bytes 2w, 2w + 1): weight 4w + (k ^ 1).
            for (int k = 0; k < 4; k++)
                for (int w = 0; w < 32; w++)
                    target[32 * k + w] = block[4 * w + (k ^ 1)];
        }
        else if (vectors)
        {
            // Each run of 16 split into its 8 even and 8 odd weights, placed as the scalar loops below place them.
            bool avx2 = variant is Bnb4BitGemvVariant.Avx2Int16 or Bnb4BitGemvVariant.AvxVnniInt16;
            ref short source = ref MemoryMarshal.GetReference(block);
            ref short output = ref MemoryMarshal.GetReference(target);
            for (int run = 0; run < 4; run++)
            {
                SplitEvensAndOdds(ref source, 16 * run, out var evens, out var odds);
                int at = avx2 ? 8 * (run >> 1) + 16 * (run & 1) : 32 * (run >> 1) + 8 * (run & 1);
                evens.StoreUnsafe(ref output, (nuint)at);
                odds.StoreUnsafe(ref output, (nuint)(at + (avx2 ? 32 : 16)));
            }
        }
        else if (variant is Bnb4BitGemvVariant.Avx2Int16 or Bnb4BitGemvVariant.AvxVnniInt16)
        {
            // Vector v: v & 1 picks the unpacked half of each 128-bit lane, v >> 1 the low nibble (odd weights).
            for (int v = 0; v < 4; v++)
                for (int p = 0; p < 16; p++)
                    target[16 * v + p] = block[2 * (16 * (p / 8) + 8 * (v & 1) + p % 8) + (v >> 1)];
        }
        else
        {
            // Each 32: the even weights (high nibbles), then the odd ones (see Lookup32).
            for (int h = 0; h < chunk; h += 32)
                for (int p = 0; p < 16; p++)
                {
                    target[h + p] = block[h + 2 * p];
                    target[h + 16 + p] = block[h + 2 * p + 1];
                }
        }
        return true;
    }

    /// <summary>The 16 values at <paramref name="at"/> as their 8 even-indexed and 8 odd-indexed ones.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SplitEvensAndOdds(ref short source, int at, out Vector128<short> evens, out Vector128<short> odds)
    {
        // Each int32 lane holds an even value in its low half and the next odd one in its high half (little-endian).
        var first = Vector128.LoadUnsafe(ref source, (nuint)at).AsInt32();
        var second = Vector128.LoadUnsafe(ref source, (nuint)(at + 8)).AsInt32();
        evens = Vector128.Narrow(Vector128.ShiftRightArithmetic(Vector128.ShiftLeft(first, 16), 16),
            Vector128.ShiftRightArithmetic(Vector128.ShiftLeft(second, 16), 16));
        odds = Vector128.Narrow(Vector128.ShiftRightArithmetic(first, 16), Vector128.ShiftRightArithmetic(second, 16));
    }

    /// <summary>
    /// 64 activations as 16-bit integers under the power of two <c>2^exponent</c> that puts the largest in [2¹⁴, 2¹⁵),
    /// rounded to nearest even and held within ±32767; false where a value is not finite. <paramref name="vectors"/>
    /// does it on 128-bit vectors (every x64 and Arm64 CPU), with the same results: a decode step quantizes the
    /// activations of each of a model's products, which element by element was a visible share of the step.
    /// </summary>
    internal static bool QuantizeBlock(ReadOnlySpan<float> values, Span<short> target, out int exponent, bool vectors)
    {
        if (values.Length != BlockSize || target.Length < BlockSize)
            throw new ArgumentException($"A block is {BlockSize} activations into at least as many integers.", nameof(values));
        exponent = 0;
        float largest = 0;
        if (vectors)
        {
            ref float first = ref MemoryMarshal.GetReference(values);
            var most = Vector128<float>.Zero;
            var finite = Vector128<float>.AllBitsSet;
            var limit = Vector128.Create(float.MaxValue);
            for (int i = 0; i < BlockSize; i += 4)
            {
                var magnitude = Vector128.Abs(Vector128.LoadUnsafe(ref first, (nuint)i));
                finite &= Vector128.LessThanOrEqual(magnitude, limit); // false for NaN and infinity
                most = Vector128.Max(most, magnitude);
            }
            if (finite.ExtractMostSignificantBits() != 0xF) return false;
            largest = Math.Max(Math.Max(most[0], most[1]), Math.Max(most[2], most[3]));
        }
        else
            foreach (float v in values)
            {
                if (!float.IsFinite(v)) return false;
                largest = Math.Max(largest, Math.Abs(v));
            }
        // A power of two scales exactly; blocks below 2⁻¹¹³ (whose factor would overflow float) round to zero.
        exponent = largest == 0 ? 0 : 14 - MathF.ILogB(largest);
        float factor = exponent <= 127 ? MathF.ScaleB(1f, exponent) : 0f;
        if (vectors)
        {
            ref float first = ref MemoryMarshal.GetReference(values);
            ref short output = ref MemoryMarshal.GetReference(target);
            var scale = Vector128.Create(factor);
            var low = Vector128.Create(-32767f);
            var high = Vector128.Create(32767f);
            for (int i = 0; i < BlockSize; i += 8)
            {
                var a = Vector128.Min(Vector128.Max(Vector128.Round(Vector128.LoadUnsafe(ref first, (nuint)i) * scale), low), high);
                var b = Vector128.Min(Vector128.Max(Vector128.Round(Vector128.LoadUnsafe(ref first, (nuint)(i + 4)) * scale), low), high);
                Vector128.Narrow(Vector128.ConvertToInt32(a), Vector128.ConvertToInt32(b)).StoreUnsafe(ref output, (nuint)i);
            }
        }
        else
            for (int i = 0; i < BlockSize; i++)
                target[i] = (short)Math.Clamp(MathF.Round(values[i] * factor), -32767f, 32767f);
        return true;
    }

    /// <summary><see cref="RowScales(Job*, long, float*, float*)"/> for each activation row, one after another in <paramref name="scales"/>.</summary>
    private static void ActivationRowScales(Job* job, long start, float* scales)
    {
        int blocks = job->Columns / BlockSize;
        for (int r = 0; r < job->ActivationRows; r++) RowScales(job, start, job->InverseScales + r * blocks, scales + r * blocks);
    }

    /// <summary>
    /// The scale of each of this row's blocks with its activations' scale folded in, on vectors: per row this is a
    /// sixty-fourth of the codes' work, which scalar code with the double-quantization lookups made a third of it.
    /// </summary>
    /// <param name="job">The call.</param>
    /// <param name="start">The row's first element (a multiple of 64).</param>
    /// <param name="inverse">Each block's activation scale, or null for the plain block scales (the float variants).</param>
    /// <param name="scales">Where each block's product goes.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void RowScales(Job* job, long start, float* inverse, float* scales)
    {
        long first = start / BlockSize;
        int blocks = job->Columns / BlockSize, b = 0;
        if (job->Nested == null)
        {
            float* absmax = (float*)job->Absmax + first;
            for (; Vector256.IsHardwareAccelerated && b + 8 <= blocks; b += 8)
                (Vector256.Load(absmax + b) * (inverse == null ? Vector256<float>.One : Vector256.Load(inverse + b))).Store(scales + b);
        }
        else if (Avx2.IsSupported)
        {
            // code[q] · absmax2 + offset, the two roundings of bitsandbytes' dequantization, eight blocks at a time.
            byte* codes = (byte*)job->Absmax + first;
            var offset = Vector256.Create(job->Offset);
            var lanes = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7);
            for (; b + 8 <= blocks; b += 8)
            {
                var code = Avx2.GatherVector256(job->NestedCode, Avx2.ConvertToVector256Int32(codes + b), 4);
                // Eight blocks meet at most two groups of 256 (one absmax2 each): two loads and a blend, not a gather.
                long block = first + b;
                int nextGroup = (int)((((block >> 8) + 1) << 8) - block);
                var nested = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(lanes, Vector256.Create(nextGroup)).AsSingle(),
                    Vector256.Create(job->Nested[(block + 7) >> 8]), Vector256.Create(job->Nested[block >> 8]));
                ((code * nested + offset) * (inverse == null ? Vector256<float>.One : Vector256.Load(inverse + b))).Store(scales + b);
            }
        }
        for (; b < blocks; b++) scales[b] = Scale(job, first + b) * (inverse == null ? 1f : inverse[b]);
    }

    /// <summary>Row <paramref name="row"/>'s first code byte, once its block scales (activation scales folded in) are in <paramref name="scales"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static byte* BeginRow(Job* job, int row, float* scales)
    {
        long start = (long)row * job->Columns;
        RowScales(job, start, job->InverseScales, scales);
        return job->Codes + (start >> 1);
    }

    /// <summary>
    /// Rows <c>[first, first + count)</c> against one activation row into <paramref name="values"/>, 64 code bytes (two
    /// blocks) per step: four <c>vpermw</c> over the 16-bit words, shifted by 0, 4, 8 and 12, give the 128 codes; int32
    /// lanes 0–7 hold the first block's sums and 8–15 the second's. A run of rows per call, so that the call, the scale
    /// buffer and the table load are paid once per run, not per row (a rinna-4b row is 44 blocks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit]
    private static void RunInt16Avx512(Job* job, int first, int count, float* values)
    {
        int blocks = job->Columns / BlockSize;
        float* scales = stackalloc float[blocks];
        var table = Vector512.Load(job->Table16);
        for (int i = 0; i < count; i++)
        {
            byte* codes = BeginRow(job, first + i, scales);
            short* x = job->Quantized;
            var even = Vector512<float>.Zero;
            var odd = Vector512<float>.Zero;
            // Pointers step, not indices: the index arithmetic was a third of this loop's instructions.
            for (float* scale = scales, end = scales + blocks; scale < end; scale += 2, codes += BlockSize, x += 2 * BlockSize)
            {
                PrefetchAhead(codes);
                var sums = Avx512F.ConvertToVector512Single(Chunk128(codes, x, table));
                even = Avx512F.FusedMultiplyAdd(sums, Vector512.Create(scale[0]), even);
                odd = Avx512F.FusedMultiplyAdd(sums, Vector512.Create(scale[1]), odd);
            }
            values[i] = Vector256.Sum(even.GetLower()) + Vector256.Sum(odd.GetUpper());
        }
    }

    /// <summary>
    /// <see cref="RunInt16Avx512"/> on AVX2, 32 code bytes (one block) per sum: the two nibbles of each byte index the
    /// code book's low and high byte planes (<c>vpshufb</c>), which interleave into 16-bit codes. Two blocks a step (one
    /// prefetched line) on two sums, even blocks and odd ones, so that neither the loop's bookkeeping nor one chain of
    /// FMAs sets its pace.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit]
    private static void RunInt16Avx2<TDot>(Job* job, int first, int count, float* values) where TDot : IDot64
    {
        int blocks = job->Columns / BlockSize;
        float* scales = stackalloc float[blocks];
        var lowBytes = Vector256.Load((byte*)job->Table16 + 64);
        var highBytes = Vector256.Load((byte*)job->Table16 + 96);
        var nibble = Vector256.Create((byte)0x0F);
        for (int i = 0; i < count; i++)
        {
            byte* codes = BeginRow(job, first + i, scales);
            short* x = job->Quantized;
            var even = Vector256<float>.Zero;
            var odd = Vector256<float>.Zero;
            float* scale = scales, end = scales + blocks;
            for (; scale + 2 <= end; scale += 2, codes += BlockSize, x += 2 * BlockSize)
            {
                PrefetchAhead(codes);
                even = Fma.MultiplyAdd(Block64<TDot>(codes, x, lowBytes, highBytes, nibble), Vector256.Create(scale[0]), even);
                odd = Fma.MultiplyAdd(Block64<TDot>(codes + BlockSize / 2, x + BlockSize, lowBytes, highBytes, nibble), Vector256.Create(scale[1]), odd);
            }
            if (scale < end) even = Fma.MultiplyAdd(Block64<TDot>(codes, x, lowBytes, highBytes, nibble), Vector256.Create(scale[0]), even);
            values[i] = Vector256.Sum(even + odd);
        }
    }

    /// <summary>
    /// <see cref="RunInt16Avx512"/> for every activation row at once, four rows per pass over the weight row: each 128 codes
    /// are looked up once per pass and multiplied with each of its rows' activations, so a batched decode step reads the
    /// weight once. A row's even and odd sums stay in registers (kept on the stack for all rows, their 512-bit stores made
    /// this loop slower than the AVX2 one on Zen 4) and are added in the order <see cref="RunInt16Avx512"/> adds them.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit]
    private static void RowsInt16Avx512(Job* job, long start, float* values)
    {
        int columns = job->Columns, blocks = columns / BlockSize, activationRows = job->ActivationRows;
        float* scales = stackalloc float[activationRows * blocks];
        ActivationRowScales(job, start, scales);
        var table = Vector512.Load(job->Table16);
        byte* rowCodes = job->Codes + (start >> 1);
        for (int first = 0; first < activationRows; first += 4)
        {
            int tile = Math.Min(4, activationRows - first);
            short* x0 = job->Quantized + (long)first * columns, x1 = x0 + columns, x2 = x1 + columns, x3 = x2 + columns;
            float* s0 = scales + first * blocks, s1 = s0 + blocks, s2 = s1 + blocks, s3 = s2 + blocks;
            Vector512<float> even0 = default, odd0 = default, even1 = default, odd1 = default;
            Vector512<float> even2 = default, odd2 = default, even3 = default, odd3 = default;
            byte* codes = rowCodes;
            // The tile's size is fixed over the loop, so its branches are predicted and cost next to nothing.
            for (int b = 0; b < blocks; b += 2, codes += BlockSize)
            {
                PrefetchAhead(codes);
                Lookup128(codes, table, out var w0, out var w1, out var w2, out var w3);
                int at = b * BlockSize;
                Accumulate(w0, w1, w2, w3, x0 + at, s0 + b, ref even0, ref odd0);
                if (tile < 2) continue;
                Accumulate(w0, w1, w2, w3, x1 + at, s1 + b, ref even1, ref odd1);
                if (tile < 3) continue;
                Accumulate(w0, w1, w2, w3, x2 + at, s2 + b, ref even2, ref odd2);
                if (tile < 4) continue;
                Accumulate(w0, w1, w2, w3, x3 + at, s3 + b, ref even3, ref odd3);
            }
            values[first] = Vector256.Sum(even0.GetLower()) + Vector256.Sum(odd0.GetUpper());
            if (tile > 1) values[first + 1] = Vector256.Sum(even1.GetLower()) + Vector256.Sum(odd1.GetUpper());
            if (tile > 2) values[first + 2] = Vector256.Sum(even2.GetLower()) + Vector256.Sum(odd2.GetUpper());
            if (tile > 3) values[first + 3] = Vector256.Sum(even3.GetLower()) + Vector256.Sum(odd3.GetUpper());
        }

        // Two blocks of one row: their sums, scaled by each block's scale, into the row's even and odd sums.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void Accumulate(Vector512<short> w0, Vector512<short> w1, Vector512<short> w2, Vector512<short> w3, short* x, float* scale,
            ref Vector512<float> even, ref Vector512<float> odd)
        {
            var sums = Avx512F.ConvertToVector512Single(Dot128(w0, w1, w2, w3, x));
            even = Avx512F.FusedMultiplyAdd(sums, Vector512.Create(scale[0]), even);
            odd = Avx512F.FusedMultiplyAdd(sums, Vector512.Create(scale[1]), odd);
        }
    }

    /// <summary>
    /// <see cref="RunInt16Avx2"/> for every activation row at once (see <see cref="RowsInt16Avx512"/>), four rows per pass:
    /// each 64 codes are looked up once per pass (12 instructions) and multiplied with four rows' activations (10 each),
    /// with each row's even and odd blocks on separate sums as there, so that each row gets exactly what it gets alone.
    /// Four rows' eight sums, the four code vectors and the two tables fill AVX2's sixteen registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit]
    private static void RowsInt16Avx2<TDot>(Job* job, long start, float* values) where TDot : IDot64
    {
        int columns = job->Columns, blocks = columns / BlockSize, activationRows = job->ActivationRows;
        float* scales = stackalloc float[activationRows * blocks];
        ActivationRowScales(job, start, scales);
        var lowBytes = Vector256.Load((byte*)job->Table16 + 64);
        var highBytes = Vector256.Load((byte*)job->Table16 + 96);
        var nibble = Vector256.Create((byte)0x0F);
        byte* rowCodes = job->Codes + (start >> 1);
        for (int first = 0; first < activationRows; first += 4)
        {
            int tile = Math.Min(4, activationRows - first);
            short* x0 = job->Quantized + (long)first * columns, x1 = x0 + columns, x2 = x1 + columns, x3 = x2 + columns;
            float* s0 = scales + first * blocks, s1 = s0 + blocks, s2 = s1 + blocks, s3 = s2 + blocks;
            Vector256<float> even0 = default, odd0 = default, even1 = default, odd1 = default;
            Vector256<float> even2 = default, odd2 = default, even3 = default, odd3 = default;
            byte* codes = rowCodes;
            int b = 0;
            // The tile's size is fixed over the loop, so its branches are predicted and cost next to nothing.
            for (; b + 2 <= blocks; b += 2, codes += BlockSize)
            {
                PrefetchAhead(codes);
                int at = b * BlockSize;
                Lookup64(codes, lowBytes, highBytes, nibble, out var w0, out var w1, out var w2, out var w3);
                even0 = AddBlock(w0, w1, w2, w3, x0 + at, s0[b], even0);
                if (tile > 1) even1 = AddBlock(w0, w1, w2, w3, x1 + at, s1[b], even1);
                if (tile > 2) even2 = AddBlock(w0, w1, w2, w3, x2 + at, s2[b], even2);
                if (tile > 3) even3 = AddBlock(w0, w1, w2, w3, x3 + at, s3[b], even3);
                Lookup64(codes + BlockSize / 2, lowBytes, highBytes, nibble, out w0, out w1, out w2, out w3);
                at += BlockSize;
                odd0 = AddBlock(w0, w1, w2, w3, x0 + at, s0[b + 1], odd0);
                if (tile > 1) odd1 = AddBlock(w0, w1, w2, w3, x1 + at, s1[b + 1], odd1);
                if (tile > 2) odd2 = AddBlock(w0, w1, w2, w3, x2 + at, s2[b + 1], odd2);
                if (tile > 3) odd3 = AddBlock(w0, w1, w2, w3, x3 + at, s3[b + 1], odd3);
            }
            if (b < blocks)
            {
                int at = b * BlockSize;
                Lookup64(codes, lowBytes, highBytes, nibble, out var w0, out var w1, out var w2, out var w3);
                even0 = AddBlock(w0, w1, w2, w3, x0 + at, s0[b], even0);
                if (tile > 1) even1 = AddBlock(w0, w1, w2, w3, x1 + at, s1[b], even1);
                if (tile > 2) even2 = AddBlock(w0, w1, w2, w3, x2 + at, s2[b], even2);
                if (tile > 3) even3 = AddBlock(w0, w1, w2, w3, x3 + at, s3[b], even3);
            }
            values[first] = Vector256.Sum(even0 + odd0);
            if (tile > 1) values[first + 1] = Vector256.Sum(even1 + odd1);
            if (tile > 2) values[first + 2] = Vector256.Sum(even2 + odd2);
            if (tile > 3) values[first + 3] = Vector256.Sum(even3 + odd3);
        }

        // One block of one row: its sums, scaled by the block's scale, added to the row's sum.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector256<float> AddBlock(Vector256<short> w0, Vector256<short> w1, Vector256<short> w2, Vector256<short> w3, short* x,
            float scale, Vector256<float> total)
            => Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot64(w0, w1, w2, w3, x)), Vector256.Create(scale), total);
    }

    /// <summary>One block's 64 codes (32 bytes) times its 64 activations, as eight float32 partial sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Block64<TDot>(byte* codes, short* x, Vector256<byte> lowBytes, Vector256<byte> highBytes, Vector256<byte> nibble)
        where TDot : IDot64
    {
        Lookup64(codes, lowBytes, highBytes, nibble, out var w0, out var w1, out var w2, out var w3);
        return Avx.ConvertToVector256Single(TDot.Dot64(w0, w1, w2, w3, x));
    }

    /// <summary>
    /// 64 16-bit codes times 64 activations, summed exactly into eight int32 lanes: how the AVX2 integer loops multiply,
    /// a type argument so that each variant's loop is compiled with its own instructions (the sums are the same integers).
    /// </summary>
    private interface IDot64
    {
        static abstract Vector256<int> Dot64(Vector256<short> w0, Vector256<short> w1, Vector256<short> w2, Vector256<short> w3, short* x);
    }

    /// <summary>AVX2: four <c>vpmaddwd</c> and three adds.</summary>
    private readonly struct MaddDot : IDot64
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot64(Vector256<short> w0, Vector256<short> w1, Vector256<short> w2, Vector256<short> w3, short* x)
            => Avx2.MultiplyAddAdjacent(w0, Vector256.Load(x)) + Avx2.MultiplyAddAdjacent(w1, Vector256.Load(x + 16))
                + (Avx2.MultiplyAddAdjacent(w2, Vector256.Load(x + 32)) + Avx2.MultiplyAddAdjacent(w3, Vector256.Load(x + 48)));
    }

    /// <summary>AVX-VNNI: one <c>vpmaddwd</c> and three <c>vpdpwssd</c>, which add as they multiply.</summary>
    private readonly struct VnniDot : IDot64
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot64(Vector256<short> w0, Vector256<short> w1, Vector256<short> w2, Vector256<short> w3, short* x)
            => AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(
                Avx2.MultiplyAddAdjacent(w0, Vector256.Load(x)), w1, Vector256.Load(x + 16)), w2, Vector256.Load(x + 32)), w3, Vector256.Load(x + 48));
    }

    /// <summary>Two blocks' 128 codes (64 bytes) times their 128 activations: int32 lanes 0–7 the first block's, 8–15 the second's.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Chunk128(byte* codes, short* x, Vector512<short> table)
    {
        Lookup128(codes, table, out var w0, out var w1, out var w2, out var w3);
        return Dot128(w0, w1, w2, w3, x);
    }

    /// <summary>128 16-bit codes times 128 activations, summed exactly into sixteen int32 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Dot128(Vector512<short> w0, Vector512<short> w1, Vector512<short> w2, Vector512<short> w3, short* x)
        => Avx512BW.MultiplyAddAdjacent(w0, Vector512.Load(x)) + Avx512BW.MultiplyAddAdjacent(w1, Vector512.Load(x + 32))
            + (Avx512BW.MultiplyAddAdjacent(w2, Vector512.Load(x + 64)) + Avx512BW.MultiplyAddAdjacent(w3, Vector512.Load(x + 96)));

    /// <summary>
    /// The portable variant, for one activation row or several: 32 code bytes (one block) per step, looked up once for
    /// all rows. Each nibble indexes the code book's low and high byte planes (a 16-byte shuffle: <c>tbl</c> on Arm64,
    /// <c>pshufb</c> on x64), and the 16-bit codes are multiplied with the activations by widening to 32 bits, which
    /// every ISA has (<c>vpmaddwd</c> has no portable form).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowsInt16Vector128(Job* job, long start, float* values)
    {
        int columns = job->Columns, blocks = columns / BlockSize, activationRows = job->ActivationRows;
        float* scales = stackalloc float[activationRows * blocks];
        ActivationRowScales(job, start, scales);
        var totals = stackalloc Vector128<float>[activationRows];
        for (int r = 0; r < activationRows; r++) totals[r] = Vector128<float>.Zero;
        var lowBytes = Vector128.Load((byte*)job->Table16 + 64);
        var highBytes = Vector128.Load((byte*)job->Table16 + 96);
        byte* codes = job->Codes + (start >> 1);
        for (int c = 0; c < columns; c += BlockSize)
        {
            PrefetchCodes(codes, c);
            Lookup32(codes + c / 2, lowBytes, highBytes, out var w0, out var w1, out var w2, out var w3);
            Lookup32(codes + c / 2 + 16, lowBytes, highBytes, out var w4, out var w5, out var w6, out var w7);
            for (int r = 0; r < activationRows; r++)
            {
                short* x = job->Quantized + (long)r * columns + c;
                var sum = (Dot(w0, x) + Dot(w1, x + 8)) + (Dot(w2, x + 16) + Dot(w3, x + 24))
                    + ((Dot(w4, x + 32) + Dot(w5, x + 40)) + (Dot(w6, x + 48) + Dot(w7, x + 56)));
                totals[r] = Vector128.FusedMultiplyAdd(Vector128.ConvertToSingle(sum), Vector128.Create(scales[r * blocks + c / BlockSize]), totals[r]);
            }
        }
        for (int r = 0; r < activationRows; r++) values[r] = Vector128.Sum(totals[r]);
    }

    /// <summary>Eight 16-bit codes times eight 16-bit activations, summed in pairs into four int32 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<int> Dot(Vector128<short> codes, short* x)
    {
        var activations = Vector128.Load(x);
        return Vector128.WidenLower(codes) * Vector128.WidenLower(activations) + Vector128.WidenUpper(codes) * Vector128.WidenUpper(activations);
    }

    /// <summary>
    /// 32 codes from 16 bytes as 16-bit integers: the even weights (high nibbles) in <paramref name="w0"/> and
    /// <paramref name="w1"/>, then the odd ones (see <see cref="QuantizeActivations"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Lookup32(byte* codes, Vector128<byte> lowBytes, Vector128<byte> highBytes, out Vector128<short> w0,
        out Vector128<short> w1, out Vector128<short> w2, out Vector128<short> w3)
    {
        var bytes = Vector128.Load(codes);
        var even = Vector128.ShiftRightLogical(bytes, 4);
        var odd = bytes & Vector128.Create((byte)0x0F);
        Join(Vector128.ShuffleNative(lowBytes, even), Vector128.ShuffleNative(highBytes, even), out w0, out w1);
        Join(Vector128.ShuffleNative(lowBytes, odd), Vector128.ShuffleNative(highBytes, odd), out w2, out w3);
    }

    /// <summary>Sixteen codes' low and high bytes joined into two vectors of eight 16-bit codes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Join(Vector128<byte> low, Vector128<byte> high, out Vector128<short> first, out Vector128<short> second)
    {
        first = (Vector128.WidenLower(low) | Vector128.ShiftLeft(Vector128.WidenLower(high), 8)).AsInt16();
        second = (Vector128.WidenUpper(low) | Vector128.ShiftLeft(Vector128.WidenUpper(high), 8)).AsInt16();
    }

    /// <summary>128 codes from 64 bytes: <c>vpermw</c> over the 16-bit words shifted by 0, 4, 8 and 12 (lookup k gives weight 4w + (k ^ 1)).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Lookup128(byte* codes, Vector512<short> table, out Vector512<short> w0, out Vector512<short> w1,
        out Vector512<short> w2, out Vector512<short> w3)
    {
        var words = Vector512.Load(codes).AsInt16();
        w0 = Avx512BW.PermuteVar32x16(table, words);
        w1 = Avx512BW.PermuteVar32x16(table, Avx512BW.ShiftRightLogical(words, 4));
        w2 = Avx512BW.PermuteVar32x16(table, Avx512BW.ShiftRightLogical(words, 8));
        w3 = Avx512BW.PermuteVar32x16(table, Avx512BW.ShiftRightLogical(words, 12));
    }

    /// <summary>
    /// 64 codes from 32 bytes: each nibble indexes the code book's low and high byte planes (<c>vpshufb</c>), unpacked
    /// into 16-bit codes: even weights' halves, then odd weights' (see <see cref="QuantizeActivations"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Lookup64(byte* codes, Vector256<byte> lowBytes, Vector256<byte> highBytes, Vector256<byte> nibble,
        out Vector256<short> w0, out Vector256<short> w1, out Vector256<short> w2, out Vector256<short> w3)
    {
        var bytes = Vector256.Load(codes);
        var odd = bytes & nibble;
        var even = Avx2.ShiftRightLogical(bytes.AsUInt16(), 4).AsByte() & nibble;
        var evenLow = Avx2.Shuffle(lowBytes, even);
        var evenHigh = Avx2.Shuffle(highBytes, even);
        var oddLow = Avx2.Shuffle(lowBytes, odd);
        var oddHigh = Avx2.Shuffle(highBytes, odd);
        w0 = Avx2.UnpackLow(evenLow, evenHigh).AsInt16();
        w1 = Avx2.UnpackHigh(evenLow, evenHigh).AsInt16();
        w2 = Avx2.UnpackLow(oddLow, oddHigh).AsInt16();
        w3 = Avx2.UnpackHigh(oddLow, oddHigh).AsInt16();
    }
}
