using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// <c>x · Wᵀ + b</c> for one row of activations and a float16 weight on the CPU (a decode step), in managed vector code
/// on libtorch's OpenMP threads, with the bias and the conversion to the activations' dtype done in the same pass.
/// The dot products come in three widths (<see cref="Float16GemvVariant"/>): AVX-512, and portable 256- and 128-bit
/// code on .NET's cross-platform vectors (AVX2 and SSE on x64, NEON on Arm64) that computes the same bits.
/// </summary>
/// <remarks>
/// Why: libtorch's float16 GEMV streams about as fast as this kernel, but a float16 linear layer around it was four
/// ATen calls (input to float16, the product, the result to bfloat16, the bias), and the product itself was rounded to
/// float16 on the way. Here it is one pass, and the product stays float32 until the single rounding at the end.
/// <para>
/// Exact float16 widening without F16C (which .NET does not expose) in plain integer vector operations: the weight's bits, sign-extended and shifted left
/// by 13, are the float32 value <c>w · 2⁻¹¹²</c> exactly, subnormals included. The activations are scaled by 2⁵⁶
/// beforehand and the sum by 2⁵⁶ afterwards; powers of two are exact, so this is an ordinary float32 dot product
/// unless a single product is below 2⁻⁷⁰ (negligible) or an activation exceeds 2⁶⁴ (such rows go to libtorch). Float16
/// subnormal weights become float32 subnormal operands: free on some CPUs, but CPUs that take a
/// microcode assist for them (Intel's) would be many times slower, so a one-time probe (<see cref="SubnormalsAreSlow"/>)
/// switches those to <see cref="Float16Widening.Exact"/>: a vector of weights with a zero float16 exponent (about one
/// in 25 for trained weights) takes each weight's exact float32 value (<see cref="Float16Bits.Exact(Vector512{int})"/>)
/// scaled so that the products are the same, and every other vector the shifted form, which has no subnormal to form.
/// Both widenings compute the same bits. Weights with infinities or NaNs must not come here (the caller checks once).
/// </para>
/// </remarks>
internal static unsafe class Float16Gemv
{
    internal const float Up = 72057594037927936f; // 2^56
    private const float MaxActivation = 18446744073709551616f; // 2^64

    /// <summary>
    /// Software prefetch distance in weights (4 KiB): one page ahead, so the next page's lines are requested before the
    /// hardware prefetcher, which stops at page boundaries, would; it measured best among 1–16 KiB and none. Every
    /// prefetch here goes to L2 (<c>prefetcht1</c>): weight lines are read once, while the float32 activations (11 KiB
    /// for 2816 columns) must stay in L1, and four rows' lines prefetched into L1 pushed them out (capped at AVX2 on a
    /// Zen 4 EPYC the GEMV streamed 31–32 GB/s with L1 prefetches and 46–50 with L2 ones; AVX-512 28–30 and 30–33).
    /// </summary>
    private const int PrefetchAhead = 2048;

    /// <summary>
    /// The variant decode uses, or <c>null</c> to leave it to libtorch: AVX-512 where the CPU has it, else the 256-bit
    /// variant on x64 with AVX2 (measured 1.4× faster than libtorch's AVX2 float16 GEMV, benchmarks/RESULTS.md). The
    /// 128-bit variant (NEON on Arm64) is correct but unmeasured against libtorch on such a CPU, so only tests and
    /// benchmarks run it until one measures it.
    /// </summary>
    public static Float16GemvVariant? DefaultVariant { get; } = IsAccelerated(Float16GemvVariant.Avx512) ? Float16GemvVariant.Avx512
        : Avx2.IsSupported ? Float16GemvVariant.Vector256 : null;

    /// <summary>The widest variant the CPU runs in hardware, or <c>null</c>: what a few rows use (<see cref="MultiRowGemv"/>), and what the subnormal probe times.</summary>
    internal static Float16GemvVariant? WidestAccelerated { get; } =
        IsAccelerated(Float16GemvVariant.Avx512) ? Float16GemvVariant.Avx512
        : IsAccelerated(Float16GemvVariant.Vector256) ? Float16GemvVariant.Vector256
        : IsAccelerated(Float16GemvVariant.Vector128) ? Float16GemvVariant.Vector128
        : null;

    /// <summary>
    /// How float16 weights become float32 operands on this CPU, for one row and for a few (<see cref="MultiRowGemv"/>):
    /// <see cref="Float16Widening.Scaled"/> unless subnormal operands take a microcode assist here, then
    /// <see cref="Float16Widening.Exact"/>. A property of the CPU, so the probe (<see cref="SubnormalsAreSlow"/>) runs once.
    /// </summary>
    public static Float16Widening Widening { get; } =
        LibTorchOpenMp.IsAvailable && WidestAccelerated is not null && SubnormalsAreSlow() ? Float16Widening.Exact : Float16Widening.Scaled;

    /// <summary>
    /// Whether decode takes the managed path: a default variant and libtorch's libgomp found. With either widening it
    /// decodes faster than libtorch's float16 GEMV in the model, the exact widening's 256-bit form included
    /// (benchmarks/RESULTS.md).
    /// </summary>
    public static bool IsSupported { get; } = DefaultVariant is not null && LibTorchOpenMp.IsAvailable;

    /// <summary>Whether the CPU runs <paramref name="variant"/> in hardware (it is correct everywhere, but slow in software).</summary>
    public static bool IsAccelerated(Float16GemvVariant variant) => variant switch
    {
        Float16GemvVariant.Avx512 => Avx512F.IsSupported,
        Float16GemvVariant.Vector256 => Vector256.IsHardwareAccelerated,
        Float16GemvVariant.Vector128 => Vector128.IsHardwareAccelerated,
        _ => false,
    };

    /// <summary>One product's arguments, shared by the threads that claim its rows (also one stage of <see cref="DecodeLayer"/>).</summary>
    internal struct Job
    {
        public ushort* Weight;
        public float* Input;
        public void* Bias;
        public bool BiasIsBFloat16;
        public void* Output;
        public bool OutputIsBFloat16;
        public bool Gelu;
        public void* Residual;
        /// <summary>A second residual added after the first, each sum rounded to the output dtype (a parallel-residual layer's input).</summary>
        public void* SecondResidual;
        public int Rows;
        public int Columns;
        public RowClaims Claims;
        public Float16GemvVariant Variant;
        public Float16Widening Widening;
    }

    /// <summary>
    /// Computes <c>x · Wᵀ + b</c> for a single row <paramref name="x"/> (<c>[1, K]</c>, <c>[1, 1, K]</c>, ...: bfloat16 or
    /// float32, contiguous, CPU) and the contiguous float16 <paramref name="weight"/> <c>[N, K]</c>, with an optional bias
    /// <c>[N]</c> in bfloat16 or float32, returning x's shape with N last, in x's dtype. Returns false, doing nothing, for
    /// anything else.
    /// Optionally the exact (erf) GELU of that (<paramref name="gelu"/>), and a <paramref name="residual"/> added last
    /// (a contiguous <c>N</c>-element tensor of <paramref name="x"/>'s dtype).
    /// </summary>
    /// <remarks>
    /// Each step rounds to the output dtype as the separate libtorch operations would (the product, the GELU, the sum),
    /// so fusing them changes nothing but the GELU's last bit now and then (its erf is a different approximation).
    /// </remarks>
    public static bool TryMultiply(Tensor x, Tensor weight, Tensor? bias, out Tensor result, bool gelu = false, Tensor? residual = null)
    {
        result = null!;
        return IsSupported && TryMultiply(x, weight, bias, out result, gelu, residual, DefaultVariant!.Value, Widening);
    }

    /// <summary>
    /// <see cref="TryMultiply(Tensor, Tensor, Tensor?, out Tensor, bool, Tensor?)"/> with a chosen variant, which must be
    /// accelerated, and a chosen widening; for tests and benchmarks.
    /// </summary>
    internal static bool TryMultiply(Tensor x, Tensor weight, Tensor? bias, out Tensor result, bool gelu, Tensor? residual, Float16GemvVariant variant,
        Float16Widening widening)
    {
        result = null!;
        if (!IsAccelerated(variant) || !LibTorchOpenMp.IsAvailable || !Eligible(x, weight, bias, residual)) return false;
        int rows = (int)weight.size(0), columns = (int)weight.size(1);
        var pooled = ArrayPool<float>.Shared.Rent(columns);
        try
        {
            if (!ScaleInput(x, pooled.AsSpan(0, columns))) return false;
            var output = empty(TensorShapes.WithLastDimension(x, rows), dtype: x.dtype);
            fixed (float* input = pooled)
            fixed (byte* weightBytes = weight.bytes)
            fixed (byte* biasBytes = bias is null ? default : bias.bytes)
            fixed (byte* outputBytes = output.bytes)
            fixed (byte* residualBytes = residual is null ? default : residual.bytes)
            {
                int threads = get_num_threads();
                var job = new Job
                {
                    Claims = new RowClaims(rows, threads, 16),
                    Weight = (ushort*)weightBytes, Input = input, Bias = biasBytes, BiasIsBFloat16 = bias?.dtype == ScalarType.BFloat16,
                    Output = outputBytes, OutputIsBFloat16 = x.dtype == ScalarType.BFloat16, Rows = rows, Columns = columns,
                    Gelu = gelu, Residual = residualBytes, Variant = variant, Widening = widening,
                };
                LibTorchOpenMp.Run(&RunRows, &job, threads);
            }
            result = output;
            return true;
        }
        finally
        {
            ArrayPool<float>.Shared.Return(pooled);
        }
    }

    /// <summary>True when no element of the float16 <paramref name="weight"/> is infinite or NaN (exponent bits all ones).</summary>
    public static bool IsFinite(Tensor weight)
    {
        var bits = MemoryMarshal.Cast<byte, ushort>(weight.bytes);
        int i = 0;
        var exponent = Vector128.Create((ushort)0x7C00);
        for (; i + Vector128<ushort>.Count <= bits.Length; i += Vector128<ushort>.Count)
            if (Vector128.EqualsAny(Vector128.Create(bits.Slice(i, Vector128<ushort>.Count)) & exponent, exponent)) return false;
        for (; i < bits.Length; i++)
            if ((bits[i] & 0x7C00) == 0x7C00) return false;
        return true;
    }

    private static bool Eligible(Tensor x, Tensor weight, Tensor? bias, Tensor? residual)
    {
        static bool OnCpuContiguous(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();
        return OnCpuContiguous(x) && x.dim() >= 1 && x.numel() == x.size(-1) && x.dtype is ScalarType.BFloat16 or ScalarType.Float32
            && OnCpuContiguous(weight) && weight.dtype == ScalarType.Float16 && weight.dim() == 2 && weight.size(1) == x.size(-1)
            && weight.numel() * sizeof(ushort) <= int.MaxValue
            && (bias is null || (OnCpuContiguous(bias) && bias.dim() == 1 && bias.size(0) == weight.size(0)
                && bias.dtype is ScalarType.BFloat16 or ScalarType.Float32))
            && (residual is null || (OnCpuContiguous(residual) && residual.numel() == weight.size(0) && residual.dtype == x.dtype));
    }

    /// <summary>Writes <paramref name="x"/> as float32, unscaled; false if some element is NaN or infinite, which libtorch handles.</summary>
    internal static bool WidenInput(Tensor x, Span<float> input)
    {
        if (x.dtype == ScalarType.Float32) MemoryMarshal.Cast<byte, float>(x.bytes).CopyTo(input);
        else BFloat16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(x.bytes), input);
        return AllFinite(input);
    }

    /// <summary>Whether no value is infinite or NaN, a vector at a time (the span search for a range compares floats one by one).</summary>
    internal static bool AllFinite(ReadOnlySpan<float> values)
    {
        var largest = Vector128.Create(float.MaxValue);
        int c = 0;
        for (; c + Vector128<float>.Count <= values.Length; c += Vector128<float>.Count)
        {
            // written so that NaN fails the test too
            if (!Vector128.LessThanOrEqualAll(Vector128.Abs(Vector128.Create(values.Slice(c, Vector128<float>.Count))), largest)) return false;
        }
        for (; c < values.Length; c++)
            if (!(MathF.Abs(values[c]) <= float.MaxValue)) return false;
        return true;
    }

    /// <summary>Writes <c>x · 2⁵⁶</c> as float32; false if some |x| exceeds 2⁶⁴ or is NaN.</summary>
    internal static bool ScaleInput(Tensor x, Span<float> scaled)
    {
        if (x.dtype == ScalarType.Float32) MemoryMarshal.Cast<byte, float>(x.bytes).CopyTo(scaled);
        else BFloat16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(x.bytes), scaled);
        return ScaleInPlace(scaled);
    }

    /// <summary>Multiplies float32 activations by 2⁵⁶ in place; false if some |x| exceeds 2⁶⁴ or is NaN.</summary>
    internal static bool ScaleInPlace(Span<float> scaled)
    {
        var limit = Vector128.Create(MaxActivation);
        var up = Vector128.Create(Up);
        int c = 0;
        for (; c + Vector128<float>.Count <= scaled.Length; c += Vector128<float>.Count)
        {
            var value = Vector128.Create(scaled.Slice(c, Vector128<float>.Count));
            // written so that NaN fails the test too
            if (!Vector128.LessThanOrEqualAll(Vector128.Abs(value), limit)) return false;
            (value * up).CopyTo(scaled.Slice(c, Vector128<float>.Count));
        }
        for (; c < scaled.Length; c++)
        {
            if (!(MathF.Abs(scaled[c]) <= MaxActivation)) return false;
            scaled[c] *= Up;
        }
        return true;
    }

    [UnmanagedCallersOnly]
    private static void RunRows(void* state) => MultiplyClaimed((Job*)state, ((Job*)state)->Input);

    /// <summary>
    /// Claims runs of <paramref name="job"/>'s rows until none are left and computes them from the scaled activations
    /// <paramref name="input"/> (<c>x · 2⁵⁶</c>, see <see cref="ScaleInput(Tensor, Span{float})"/>), which each thread may hold in its own copy.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MultiplyClaimed(Job* job, float* input)
    {
        const int Block = 64;
        float* values = stackalloc float[Block];
        while (job->Claims.TryClaim(out int first, out int end))
        {
            // A block of rows at a time, so that their GELUs run four to a vector.
            for (int start = first; start < end; start += Block)
            {
                int count = Math.Min(Block, end - start);
                // Four rows at a time share each load of the activations and one reduction's overhead, which for short
                // rows (small models) was most of a row's cost. Claims start at multiples of four, so the same rows are
                // grouped whatever the thread count, and only a matrix's last rows % 4 go one by one.
                int i = 0;
                for (; i + 4 <= count; i += 4)
                {
                    ushort* weight = job->Weight + (long)(start + i) * job->Columns;
                    (job->Widening == Float16Widening.Scaled
                        ? DotFour<ScaledWidening>(job->Variant, weight, input, job->Columns)
                        : DotFour<ExactWidening>(job->Variant, weight, input, job->Columns)).Store(values + i);
                }
                for (; i < count; i++)
                {
                    ushort* weight = job->Weight + (long)(start + i) * job->Columns;
                    values[i] = job->Widening == Float16Widening.Scaled
                        ? Dot<ScaledWidening>(job->Variant, weight, input, job->Columns)
                        : Dot<ExactWidening>(job->Variant, weight, input, job->Columns);
                }
                Finish(job, start, count, values);
            }
        }
    }

    /// <summary>
    /// A block's sums (scaled domain) to outputs: the bias, the GELU, the residuals, each rounded to the output dtype
    /// where the separate operations would round; eight rows to a vector, as a row's scalar steps were a good part of a
    /// short row's cost.
    /// </summary>
    private static void Finish(Job* job, int start, int count, float* values) => Finish(job, start, count, values, Up);

    /// <summary>
    /// <see cref="Finish(Job*, int, int, float*)"/> for sums that <paramref name="scale"/> brings to their value (1 for
    /// another kernel's plain sums): <paramref name="job"/>'s output, bias, GELU and residual fields are the epilogue.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Finish(Job* job, int start, int count, float* values, float scale)
    {
        bool bfloat16 = job->OutputIsBFloat16;
        int i = 0;
        for (; i + 8 <= count; i += 8)
        {
            var value = Vector256.Load(values + i) * Vector256.Create(scale);
            if (job->Bias != null) value += Widen8(job->Bias, job->BiasIsBFloat16, start + i);
            (job->Gelu && bfloat16 ? BFloat16Bits.RoundTrip(value) : value).Store(values + i);
        }
        for (; i < count; i++)
        {
            int row = start + i;
            float value = values[i] * scale;
            if (job->Bias != null)
                value += job->BiasIsBFloat16 ? BFloat16Bits.Widen(((ushort*)job->Bias)[row]) : ((float*)job->Bias)[row];
            values[i] = job->Gelu ? ToOutput(value, bfloat16) : value;
        }
        if (job->Gelu) ExactGelu.Apply(new Span<float>(values, count));
        for (i = 0; i + 8 <= count; i += 8)
        {
            var value = Vector256.Load(values + i);
            if (job->Residual != null) value = (bfloat16 ? BFloat16Bits.RoundTrip(value) : value) + Widen8(job->Residual, bfloat16, start + i);
            if (job->SecondResidual != null) value = (bfloat16 ? BFloat16Bits.RoundTrip(value) : value) + Widen8(job->SecondResidual, bfloat16, start + i);
            if (bfloat16) BFloat16Bits.Round(value).Store((ushort*)job->Output + start + i);
            else value.Store((float*)job->Output + start + i);
        }
        for (; i < count; i++)
        {
            int row = start + i;
            float value = values[i];
            if (job->Residual != null)
                value = ToOutput(value, bfloat16) + (bfloat16 ? BFloat16Bits.Widen(((ushort*)job->Residual)[row]) : ((float*)job->Residual)[row]);
            if (job->SecondResidual != null)
                value = ToOutput(value, bfloat16) + (bfloat16 ? BFloat16Bits.Widen(((ushort*)job->SecondResidual)[row]) : ((float*)job->SecondResidual)[row]);
            if (bfloat16) ((ushort*)job->Output)[row] = BFloat16Bits.Round(value);
            else ((float*)job->Output)[row] = value;
        }
    }

    /// <summary>Eight values from <paramref name="at"/> of a bfloat16 or float32 vector, as float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Widen8(void* source, bool bfloat16, int at) => bfloat16
        ? FloatLanes256.LoadBFloat16((ushort*)source + at)
        : Vector256.Load((float*)source + at);

    /// <summary>The value as the output dtype holds it: what a libtorch operation returning bfloat16 would pass to the next.</summary>
    internal static float ToOutput(float value, bool bfloat16) => bfloat16 ? BFloat16Bits.RoundTrip(value) : value;

    /// <summary>Σ w·x over one weight row: with <see cref="ScaledWidening"/> in the scaled domain (a result of <c>w · x · 2⁻⁵⁶</c>).</summary>
    private static float Dot<TWidening>(Float16GemvVariant variant, ushort* weight, float* input, int columns) where TWidening : IWidening => variant switch
    {
        Float16GemvVariant.Avx512 => Dot512<TWidening>(weight, input, columns),
        Float16GemvVariant.Vector256 => Dot256<TWidening>(weight, input, columns),
        _ => Dot128<TWidening>(weight, input, columns),
    };

    /// <summary>
    /// <see cref="Dot{TWidening}"/> of four consecutive rows (<paramref name="weight"/> is the first) in one pass over the
    /// activations, each row in two accumulator chains.
    /// </summary>
    private static Vector128<float> DotFour<TWidening>(Float16GemvVariant variant, ushort* weight, float* input, int columns) where TWidening : IWidening => variant switch
    {
        Float16GemvVariant.Avx512 => DotFour512<TWidening>((short*)weight, input, columns),
        Float16GemvVariant.Vector256 => DotFour256<TWidening>((short*)weight, input, columns),
        _ => DotFour128<TWidening>((short*)weight, input, columns),
    };

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> DotFour512<TWidening>(short* r0, float* input, int columns) where TWidening : IWidening
    {
        short* r1 = r0 + columns, r2 = r1 + columns, r3 = r2 + columns;
        // The same columns of the next four rows: the group reads four places at once, so a fixed distance ahead of
        // each would land in rows another pointer has already read.
        long ahead = 4L * columns;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        int c = 0;
        for (; c + 32 <= columns; c += 32)
        {
            Sse.Prefetch1(r0 + c + ahead);
            Sse.Prefetch1(r1 + c + ahead);
            Sse.Prefetch1(r2 + c + ahead);
            Sse.Prefetch1(r3 + c + ahead);
            var x = Avx512F.LoadVector512(input + c);
            var y = Avx512F.LoadVector512(input + c + 16);
            a0 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r0 + c)), x, a0);
            a1 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r1 + c)), x, a1);
            a2 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r2 + c)), x, a2);
            a3 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r3 + c)), x, a3);
            b0 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r0 + c + 16)), y, b0);
            b1 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r1 + c + 16)), y, b1);
            b2 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r2 + c + 16)), y, b2);
            b3 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r3 + c + 16)), y, b3);
        }
        if (c + 16 <= columns)
        {
            var x = Avx512F.LoadVector512(input + c);
            a0 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r0 + c)), x, a0);
            a1 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r1 + c)), x, a1);
            a2 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r2 + c)), x, a2);
            a3 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(r3 + c)), x, a3);
            c += 16;
        }
        return TailFour<TWidening>(Vector512.Sum(a0 + b0), Vector512.Sum(a1 + b1), Vector512.Sum(a2 + b2), Vector512.Sum(a3 + b3),
            r0, columns, input, c);
    }

    /// <summary>The portable 256-bit form of <see cref="DotFour512"/>: AVX2 on x64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> DotFour256<TWidening>(short* r0, float* input, int columns) where TWidening : IWidening
    {
        short* r1 = r0 + columns, r2 = r1 + columns, r3 = r2 + columns;
        // The same columns of the next four rows: the group reads four places at once, so a fixed distance ahead of
        // each would land in rows another pointer has already read.
        long ahead = 4L * columns;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        int c = 0;
        for (; c + 16 <= columns; c += 16)
        {
            if (Sse.IsSupported && (c & 31) == 0)
            {
                Sse.Prefetch1(r0 + c + ahead);
                Sse.Prefetch1(r1 + c + ahead);
                Sse.Prefetch1(r2 + c + ahead);
                Sse.Prefetch1(r3 + c + ahead);
            }
            var x = Vector256.Load(input + c);
            var y = Vector256.Load(input + c + 8);
            a0 = TWidening.MultiplyAdd(SignExtend256(r0 + c), x, a0);
            a1 = TWidening.MultiplyAdd(SignExtend256(r1 + c), x, a1);
            a2 = TWidening.MultiplyAdd(SignExtend256(r2 + c), x, a2);
            a3 = TWidening.MultiplyAdd(SignExtend256(r3 + c), x, a3);
            b0 = TWidening.MultiplyAdd(SignExtend256(r0 + c + 8), y, b0);
            b1 = TWidening.MultiplyAdd(SignExtend256(r1 + c + 8), y, b1);
            b2 = TWidening.MultiplyAdd(SignExtend256(r2 + c + 8), y, b2);
            b3 = TWidening.MultiplyAdd(SignExtend256(r3 + c + 8), y, b3);
        }
        if (c + 8 <= columns)
        {
            var x = Vector256.Load(input + c);
            a0 = TWidening.MultiplyAdd(SignExtend256(r0 + c), x, a0);
            a1 = TWidening.MultiplyAdd(SignExtend256(r1 + c), x, a1);
            a2 = TWidening.MultiplyAdd(SignExtend256(r2 + c), x, a2);
            a3 = TWidening.MultiplyAdd(SignExtend256(r3 + c), x, a3);
            c += 8;
        }
        return TailFour<TWidening>(Vector256.Sum(a0 + b0), Vector256.Sum(a1 + b1), Vector256.Sum(a2 + b2), Vector256.Sum(a3 + b3),
            r0, columns, input, c);
    }

    /// <summary>The portable 128-bit form of <see cref="DotFour512"/>: NEON on Arm64, SSE on x64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> DotFour128<TWidening>(short* r0, float* input, int columns) where TWidening : IWidening
    {
        short* r1 = r0 + columns, r2 = r1 + columns, r3 = r2 + columns;
        // The same columns of the next four rows: the group reads four places at once, so a fixed distance ahead of
        // each would land in rows another pointer has already read.
        long ahead = 4L * columns;
        Vector128<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        int c = 0;
        for (; c + 8 <= columns; c += 8)
        {
            if (Sse.IsSupported && (c & 31) == 0)
            {
                Sse.Prefetch1(r0 + c + ahead);
                Sse.Prefetch1(r1 + c + ahead);
                Sse.Prefetch1(r2 + c + ahead);
                Sse.Prefetch1(r3 + c + ahead);
            }
            var x = Vector128.Load(input + c);
            var y = Vector128.Load(input + c + 4);
            var w0 = Vector128.Load(r0 + c);
            var w1 = Vector128.Load(r1 + c);
            var w2 = Vector128.Load(r2 + c);
            var w3 = Vector128.Load(r3 + c);
            a0 = TWidening.MultiplyAdd(Vector128.WidenLower(w0), x, a0);
            a1 = TWidening.MultiplyAdd(Vector128.WidenLower(w1), x, a1);
            a2 = TWidening.MultiplyAdd(Vector128.WidenLower(w2), x, a2);
            a3 = TWidening.MultiplyAdd(Vector128.WidenLower(w3), x, a3);
            b0 = TWidening.MultiplyAdd(Vector128.WidenUpper(w0), y, b0);
            b1 = TWidening.MultiplyAdd(Vector128.WidenUpper(w1), y, b1);
            b2 = TWidening.MultiplyAdd(Vector128.WidenUpper(w2), y, b2);
            b3 = TWidening.MultiplyAdd(Vector128.WidenUpper(w3), y, b3);
        }
        return TailFour<TWidening>(Vector128.Sum(a0 + b0), Vector128.Sum(a1 + b1), Vector128.Sum(a2 + b2), Vector128.Sum(a3 + b3),
            r0, columns, input, c);
    }

    /// <summary>Four rows' vector sums with the columns from <paramref name="c"/> on added one at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> TailFour<TWidening>(float s0, float s1, float s2, float s3, short* r0, int columns, float* input, int c)
        where TWidening : IWidening
    {
        if (c < columns)
        {
            ushort* w = (ushort*)r0;
            s0 = Tail<TWidening>(s0, w, input, c, columns);
            s1 = Tail<TWidening>(s1, w + columns, input, c, columns);
            s2 = Tail<TWidening>(s2, w + 2L * columns, input, c, columns);
            s3 = Tail<TWidening>(s3, w + 3L * columns, input, c, columns);
        }
        return Vector128.Create(s0, s1, s2, s3);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot512<TWidening>(ushort* weight, float* input, int columns) where TWidening : IWidening
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int c = 0;
        for (; c + 64 <= columns; c += 64)
        {
            // Prefetches never fault, so running past the end of the weight is harmless.
            Sse.Prefetch1(weight + c + PrefetchAhead);
            Sse.Prefetch1(weight + c + PrefetchAhead + 32);
            a0 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)weight + c)), Avx512F.LoadVector512(input + c), a0);
            a1 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)weight + c + 16)), Avx512F.LoadVector512(input + c + 16), a1);
            a2 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)weight + c + 32)), Avx512F.LoadVector512(input + c + 32), a2);
            a3 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)weight + c + 48)), Avx512F.LoadVector512(input + c + 48), a3);
        }
        for (; c + 16 <= columns; c += 16)
            a0 = TWidening.MultiplyAdd(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)weight + c)), Avx512F.LoadVector512(input + c), a0);
        return Tail<TWidening>(Vector512.Sum((a0 + a1) + (a2 + a3)), weight, input, c, columns);
    }

    /// <summary>The portable 256-bit form of <see cref="Dot512"/>: AVX2 on x64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot256<TWidening>(ushort* weight, float* input, int columns) where TWidening : IWidening
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int c = 0;
        for (; c + 32 <= columns; c += 32)
        {
            if (Sse.IsSupported) Sse.Prefetch1(weight + c + PrefetchAhead);
            a0 = TWidening.MultiplyAdd(SignExtend256((short*)weight + c), Vector256.Load(input + c), a0);
            a1 = TWidening.MultiplyAdd(SignExtend256((short*)weight + c + 8), Vector256.Load(input + c + 8), a1);
            a2 = TWidening.MultiplyAdd(SignExtend256((short*)weight + c + 16), Vector256.Load(input + c + 16), a2);
            a3 = TWidening.MultiplyAdd(SignExtend256((short*)weight + c + 24), Vector256.Load(input + c + 24), a3);
        }
        for (; c + 8 <= columns; c += 8)
            a0 = TWidening.MultiplyAdd(SignExtend256((short*)weight + c), Vector256.Load(input + c), a0);
        return Tail<TWidening>(Vector256.Sum((a0 + a1) + (a2 + a3)), weight, input, c, columns);
    }

    /// <summary>The portable 128-bit form of <see cref="Dot512"/>: NEON on Arm64, SSE on x64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot128<TWidening>(ushort* weight, float* input, int columns) where TWidening : IWidening
    {
        Vector128<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int c = 0;
        for (; c + 16 <= columns; c += 16)
        {
            if (Sse.IsSupported) Sse.Prefetch1(weight + c + PrefetchAhead);
            var w = Vector128.Load((short*)weight + c);
            var v = Vector128.Load((short*)weight + c + 8);
            a0 = TWidening.MultiplyAdd(Vector128.WidenLower(w), Vector128.Load(input + c), a0);
            a1 = TWidening.MultiplyAdd(Vector128.WidenUpper(w), Vector128.Load(input + c + 4), a1);
            a2 = TWidening.MultiplyAdd(Vector128.WidenLower(v), Vector128.Load(input + c + 8), a2);
            a3 = TWidening.MultiplyAdd(Vector128.WidenUpper(v), Vector128.Load(input + c + 12), a3);
        }
        return Tail<TWidening>(Vector128.Sum((a0 + a1) + (a2 + a3)), weight, input, c, columns);
    }

    /// <summary>Adds the columns from <paramref name="c"/> on, one at a time, to a vector loop's <paramref name="sum"/>.</summary>
    private static float Tail<TWidening>(float sum, ushort* weight, float* input, int c, int columns) where TWidening : IWidening
    {
        for (; c < columns; c++) sum += TWidening.Product(weight[c], input[c]);
        return sum;
    }

    /// <summary>
    /// How float16 bits, sign-extended to int32, multiply activations scaled by 2⁵⁶ into sums of <c>w · x · 2⁻⁵⁶</c>
    /// (one JIT-compiled copy of the loops per widening).
    /// </summary>
    private interface IWidening
    {
        static abstract float Product(ushort bits, float scaledInput);

        static abstract Vector128<float> MultiplyAdd(Vector128<int> bits, Vector128<float> scaledInput, Vector128<float> sum);

        static abstract Vector256<float> MultiplyAdd(Vector256<int> bits, Vector256<float> scaledInput, Vector256<float> sum);

        static abstract Vector512<float> MultiplyAdd(Vector512<int> bits, Vector512<float> scaledInput, Vector512<float> sum);
    }

    /// <summary>
    /// <see cref="Float16Widening.Scaled"/>: float32 <c>w · 2⁻¹¹²</c> by shifting exponent and mantissa into place and
    /// keeping the sign and value bits.
    /// </summary>
    private readonly struct ScaledWidening : IWidening
    {
        public static float Product(ushort bits, float scaledInput) => Float16Bits.Scaled(bits) * scaledInput;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<float> MultiplyAdd(Vector128<int> bits, Vector128<float> scaledInput, Vector128<float> sum) =>
            Vector128.FusedMultiplyAdd(Float16Bits.Scaled(bits), scaledInput, sum);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> MultiplyAdd(Vector256<int> bits, Vector256<float> scaledInput, Vector256<float> sum) =>
            Vector256.FusedMultiplyAdd(Float16Bits.Scaled(bits), scaledInput, sum);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> MultiplyAdd(Vector512<int> bits, Vector512<float> scaledInput, Vector512<float> sum) =>
            Avx512F.FusedMultiplyAdd(Float16Bits.Scaled(bits), scaledInput, sum);
    }

    /// <summary>
    /// <see cref="Float16Widening.Exact"/> for one row: the scaled widening for every vector of weights whose float16
    /// exponents are all nonzero (no subnormal, so no subnormal operand), and for a vector with a zero exponent each
    /// weight's exact value (<see cref="Float16Bits.Exact(Vector512{int})"/>) times 2⁻⁵⁶ against the activations times
    /// 2⁻⁵⁶. Both give the product <c>w · x · 2⁻⁵⁶</c> exactly before the one rounding of the multiply-add, so the sums
    /// are the scaled widening's bits, without a subnormal operand. Trained weights hold about 0.24 % subnormals, so
    /// about one vector of 16 in 25 takes the longer way; the common one costs two operations and a test instead of
    /// the exact widening's seven.
    /// </summary>
    private readonly struct ExactWidening : IWidening
    {
        private const float Down = 1f / Up;

        public static float Product(ushort bits, float scaledInput) => (float)BitConverter.UInt16BitsToHalf(bits) * Down * (scaledInput * Down);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<float> MultiplyAdd(Vector128<int> bits, Vector128<float> scaledInput, Vector128<float> sum) =>
            Vector128.EqualsAny(bits & Vector128.Create(ExponentBits), Vector128<int>.Zero)
                ? Vector128.FusedMultiplyAdd(Float16Bits.Exact(bits) * Down, scaledInput * Down, sum)
                : Vector128.FusedMultiplyAdd(Float16Bits.Scaled(bits), scaledInput, sum);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> MultiplyAdd(Vector256<int> bits, Vector256<float> scaledInput, Vector256<float> sum) =>
            Vector256.EqualsAny(bits & Vector256.Create(ExponentBits), Vector256<int>.Zero)
                ? Vector256.FusedMultiplyAdd(Float16Bits.Exact(bits) * Down, scaledInput * Down, sum)
                : Vector256.FusedMultiplyAdd(Float16Bits.Scaled(bits), scaledInput, sum);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> MultiplyAdd(Vector512<int> bits, Vector512<float> scaledInput, Vector512<float> sum) =>
            Vector512.EqualsAny(bits & Vector512.Create(ExponentBits), Vector512<int>.Zero)
                ? Avx512F.FusedMultiplyAdd(Float16Bits.Exact(bits) * Down, scaledInput * Down, sum)
                : Avx512F.FusedMultiplyAdd(Float16Bits.Scaled(bits), scaledInput, sum);

        /// <summary>float16's exponent field: zero for subnormals (and zeros).</summary>
        private const int ExponentBits = 0x7C00;
    }

    /// <summary>
    /// 8 int16 sign-extended to int32: one <c>vpmovsxwd</c> from memory on AVX2, where the portable form (two half
    /// widenings and an insert) took a third more time per GEMV on this kernel's AVX2 path.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> SignExtend256(short* values)
    {
        if (Avx2.IsSupported) return Avx2.ConvertToVector256Int32(values);
        var bits = Vector128.Load(values);
        return Vector256.Create(Vector128.WidenLower(bits), Vector128.WidenUpper(bits));
    }

    /// <summary>
    /// Whether subnormal float32 operands are slow here: <see cref="SubnormalSlowdown"/> above three. A microcode assist
    /// costs on the order of a hundred cycles per instruction, so real penalties are far above that.
    /// </summary>
    internal static bool SubnormalsAreSlow() => SubnormalSlowdown() > 3;

    /// <summary>
    /// How much slower fused multiply-adds run on the operands the scaled widening forms from float16 subnormals (float32
    /// subnormals) than on normal ones, single-threaded: the ratio of their best times over alternating runs, at least
    /// nine, and up to a hundred while the ratio stays near the threshold of <see cref="SubnormalsAreSlow"/> (between 1.5
    /// and 6), since a loaded machine can interrupt a few runs.
    /// </summary>
    /// <remarks>
    /// The timed loop is self-contained 128-bit vector code (NEON or SSE): in a debug build of this assembly the JIT
    /// neither optimizes nor inlines, and a probe through the kernels themselves measured 2.4–5× there (against 33–70×
    /// optimized), too near the threshold to decide. An assist is taken per instruction whatever its width, so one
    /// width answers for all (benchmarks/RESULTS.md).
    /// </remarks>
    internal static double SubnormalSlowdown()
    {
        const int Length = 4096;
        var normal = new float[Length];
        var subnormal = new float[Length];
        for (int i = 0; i < Length; i++)
        {
            normal[i] = BitConverter.Int32BitsToSingle(0x3F800000 | ((i & 0x3FF) << 13)); // 1.0 .. 2.0
            subnormal[i] = BitConverter.Int32BitsToSingle(((i & 0x3FF) | 1) << 13);       // a float16 subnormal shifted into place
        }
        long Time(float[] weights)
        {
            fixed (float* w = weights)
            {
                var clock = Stopwatch.StartNew();
                float sink = MultiplyAddAll(w, Length);
                return clock.ElapsedTicks + (sink == float.PositiveInfinity ? 1 : 0);
            }
        }
        long normalTicks = long.MaxValue, subnormalTicks = long.MaxValue;
        double ratio = 0;
        for (int round = 0; round < 100; round++)
        {
            normalTicks = Math.Min(normalTicks, Time(normal));
            subnormalTicks = Math.Min(subnormalTicks, Time(subnormal));
            ratio = (double)subnormalTicks / Math.Max(1, normalTicks);
            if (round >= 8 && (ratio > 6 || ratio < 1.5)) break;
        }
        return ratio;
    }

    /// <summary>Σ w · 2⁵⁶ (the scaled kernels' activation scale) over <paramref name="count"/> weights, eight times, in four chains.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    private static float MultiplyAddAll(float* weights, int count)
    {
        var x = Vector128.Create(72057594037927936f); // 2⁵⁶
        Vector128<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int repeat = 0; repeat < 8; repeat++)
        {
            for (int c = 0; c + 16 <= count; c += 16)
            {
                a0 = Vector128.FusedMultiplyAdd(Vector128.Load(weights + c), x, a0);
                a1 = Vector128.FusedMultiplyAdd(Vector128.Load(weights + c + 4), x, a1);
                a2 = Vector128.FusedMultiplyAdd(Vector128.Load(weights + c + 8), x, a2);
                a3 = Vector128.FusedMultiplyAdd(Vector128.Load(weights + c + 12), x, a3);
            }
        }
        return Vector128.Sum(a0 + a1 + a2 + a3);
    }
}

/// <summary>How <see cref="Float16Gemv"/> and <see cref="MultiRowGemv"/> turn float16 weights into float32 operands; both give the same bits.</summary>
internal enum Float16Widening
{
    /// <summary>
    /// Shifted into float32's places as <c>w · 2⁻¹¹²</c> (three operations per vector), activations scaled to match;
    /// float16 subnormals become float32 subnormal operands, which some CPUs (Intel's) handle by microcode assists.
    /// </summary>
    Scaled,

    /// <summary>
    /// Never a subnormal operand: <see cref="MultiRowGemv"/> widens each weight to its exact float32 value
    /// (<see cref="Float16Bits.Exact(Vector512{int})"/>, seven operations per vector), <see cref="Float16Gemv"/> does so
    /// only for vectors holding a zero float16 exponent and shifts the rest as <see cref="Scaled"/> does.
    /// </summary>
    Exact,
}

/// <summary>The vector width of <see cref="Float16Gemv"/>'s dot products.</summary>
internal enum Float16GemvVariant
{
    /// <summary>128-bit portable vectors: NEON on Arm64, SSE on x64.</summary>
    Vector128,

    /// <summary>256-bit portable vectors: AVX2 on x64.</summary>
    Vector256,

    /// <summary>AVX-512 intrinsics.</summary>
    Avx512,
}
