using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Rinna.Net.Native;
using TorchSharp;
using static Rinna.Net.Kernels.Cpu.FlushToZero;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>How <see cref="Bnb4BitDequantize"/> writes each dequantized weight.</summary>
internal enum Bnb4BitDequantizedForm
{
    /// <summary>Float32, bitsandbytes' value exactly.</summary>
    Float32,

    /// <summary>bfloat16, rounded to nearest even as libtorch's float32 → bfloat16 conversion rounds.</summary>
    BFloat16,

    /// <summary>Float32 holding the value rounded to float16 (ties to even, overflow to infinity), as a float16 round trip gives.</summary>
    Float16InFloat32,

    /// <summary>Float32 holding the value rounded to bfloat16, as a bfloat16 round trip gives.</summary>
    BFloat16InFloat32,
}

/// <summary>
/// Rows of a bitsandbytes 4-bit weight dequantized into a dense block for a prompt's GEMM, on libtorch's OpenMP team:
/// each weight is <c>code[q] · absmax</c> in bitsandbytes' float32 arithmetic (subnormal operands and results flushed to
/// zero, as its fast-math CUDA kernels compute it), written in the block's form in the same pass.
/// </summary>
/// <remarks>
/// Why a kernel and not a parallel loop plus a libtorch conversion: .NET pool threads dequantizing next to libgomp's
/// spinning workers shared their cores with them, and converting the float32 block to bfloat16 cost another pass over
/// it; together they took several times the dequantization itself (benchmarks/RESULTS.md).
/// </remarks>
internal static unsafe class Bnb4BitDequantize
{
    private const int BlockSize = 64;

    /// <summary>Blocks a thread claims at once: 4,096 weights, so claims stay cheap beside the work.</summary>
    private const int BlocksPerClaim = 64;

    /// <summary>Magnitudes below this round to a float16 normal or subnormal (65520 and above round to infinity).</summary>
    private const float Float16Overflow = 65520f;

    private struct Job
    {
        public byte* Codes;
        public float* Absmax;
        public byte* ScaleCodes;
        public float* Nested;
        public float* NestedCode;
        public float Offset;
        public ulong* Pairs;
        public float LargestCode;
        public long Start;
        public long Elements;
        public void* Output;
        public Bnb4BitDequantizedForm Form;
        public bool Streaming;
        public LaneWidth Width;
        public RowClaims Claims;
    }

    /// <summary>Whether the kernel can run in this process (it needs libtorch's libgomp).</summary>
    public static bool IsAvailable => LibTorchOpenMp.IsAvailable;

    /// <summary>
    /// Writes rows <c>[firstRow, firstRow + rowCount)</c> of <paramref name="weight"/> into <paramref name="destination"/>
    /// (contiguous, at least <c>rowCount · Columns</c> elements: float32 for <see cref="Bnb4BitDequantizedForm.Float32"/>,
    /// <see cref="Bnb4BitDequantizedForm.Float16InFloat32"/> and <see cref="Bnb4BitDequantizedForm.BFloat16InFloat32"/>, bfloat16 for <see cref="Bnb4BitDequantizedForm.BFloat16"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The rows do not start on a 64-weight block of the flattened weight, lie outside it, or the destination does not fit.</exception>
    public static void Rows(Bnb4BitMatrix weight, int firstRow, int rowCount, Tensor destination, Bnb4BitDequantizedForm form)
        => Rows(weight, firstRow, rowCount, destination, form, LaneWidths.Default);

    /// <summary><see cref="Rows(Bnb4BitMatrix, int, int, Tensor, Bnb4BitDequantizedForm)"/> in a chosen vector width; for tests.</summary>
    internal static void Rows(Bnb4BitMatrix weight, int firstRow, int rowCount, Tensor destination, Bnb4BitDequantizedForm form, LaneWidth width)
    {
        if (!IsAvailable) throw new InvalidOperationException("libtorch's OpenMP runtime (libgomp) is not loaded in this process.");
        long start = (long)firstRow * weight.Columns, elements = (long)rowCount * weight.Columns;
        if (firstRow < 0 || rowCount < 0 || firstRow + (long)rowCount > weight.Rows || start % BlockSize != 0)
            throw new ArgumentException($"Rows [{firstRow}, {firstRow + (long)rowCount}) of a {weight.Rows} × {weight.Columns} weight do not start on a {BlockSize}-weight block.", nameof(firstRow));
        var dtype = form == Bnb4BitDequantizedForm.BFloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
        if (destination.dtype != dtype || !destination.is_contiguous() || destination.device_type != DeviceType.CPU || destination.numel() < elements)
            throw new ArgumentException($"The destination must be a contiguous CPU {dtype} tensor of at least {elements} elements.", nameof(destination));
        long blocks = ((long)weight.Rows * weight.Columns + BlockSize - 1) / BlockSize;
        if (weight.Code.Length != 16 || weight.Codes.numel() < ((long)weight.Rows * weight.Columns + 1) / 2
            || weight.Absmax.numel() < blocks || (weight.NestedAbsmax is { } n && (n.numel() < (blocks + 255) / 256 || weight.NestedCode is not { Length: 256 })))
            throw new ArgumentException("The 4-bit weight's code book, codes or scales do not match its shape.", nameof(weight));
        if (elements == 0) return;

        // Each code byte's two values, high nibble first, as adjacent floats, flushed as the product's operands are.
        ulong* pairs = stackalloc ulong[256];
        float largest = 0;
        for (int b = 0; b < 256; b++)
        {
            float high = Flush(weight.Code[b >> 4]), low = Flush(weight.Code[b & 15]);
            pairs[b] = BitConverter.SingleToUInt32Bits(high) | ((ulong)BitConverter.SingleToUInt32Bits(low) << 32);
        }
        foreach (var value in weight.Code) largest = MathF.Max(largest, MathF.Abs(value));

        int threads = get_num_threads();
        fixed (float* nestedCode = weight.NestedCode)
        fixed (byte* codes = weight.Codes.bytes)
        fixed (byte* absmax = weight.Absmax.bytes)
        fixed (byte* nested = weight.NestedAbsmax is null ? default : weight.NestedAbsmax.bytes)
        fixed (byte* output = destination.bytes)
        {
            var job = new Job
            {
                Codes = codes, Absmax = weight.NestedAbsmax is null ? (float*)absmax : null,
                ScaleCodes = weight.NestedAbsmax is null ? null : absmax, Nested = (float*)nested, NestedCode = nestedCode,
                Offset = weight.Offset, Pairs = pairs, LargestCode = largest, Start = start, Elements = elements, Output = output,
                Form = form, Streaming = Sse2.IsSupported && (nint)output % 32 == 0, Width = width, Claims = new RowClaims((int)((elements + BlockSize - 1) / BlockSize), threads, BlocksPerClaim),
            };
            LibTorchOpenMp.Run(&RunBlocks, &job, threads);
        }
    }

    [UnmanagedCallersOnly]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunBlocks(void* state)
    {
        var job = (Job*)state;
        float* values = stackalloc float[BlockSize];
        while (job->Claims.TryClaim(out int first, out int end))
        {
            for (int b = first; b < end; b++)
            {
                long at = (long)b * BlockSize;
                int count = (int)Math.Min(BlockSize, job->Elements - at);
                long block = (job->Start + at) / BlockSize;
                float scale = Flush(job->Absmax != null ? job->Absmax[block] : NestedScale(job, block));
                var codes = job->Codes + (job->Start + at) / 2;
                var pairs = (ulong*)values;
                for (int j = 0; j < (count + 1) / 2; j++) pairs[j] = job->Pairs[codes[j]];
                Write(job, values, scale, at, count);
            }
        }
        // Streaming stores are weakly ordered: complete them before the team's end lets the GEMM read the block.
        if (job->Streaming) Sse.StoreFence();
    }

    /// <summary>A double-quantized block's scale: its 8-bit code in the dynamic map times its group's scale, plus the offset.</summary>
    private static float NestedScale(Job* job, long block)
        => Flush(Flush(job->NestedCode[job->ScaleCodes[block]]) * Flush(job->Nested[block >> 8])) + job->Offset;

    /// <summary>Scales a block's looked-up code values and writes them at element <paramref name="at"/> of the output.</summary>
    private static void Write(Job* job, float* values, float scale, long at, int count)
    {
        int i = 0;
        var form = job->Form;
        if (job->Width == LaneWidth.Vector256)
        {
            // Beyond float16's range the vector rounding does not apply; such a block rounds one value at a time.
            bool halfInRange = job->LargestCode * MathF.Abs(scale) < Float16Overflow;
            var scales = Vector256.Create(scale);
            for (; i + Vector256<float>.Count <= count && (form != Bnb4BitDequantizedForm.Float16InFloat32 || halfInRange); i += Vector256<float>.Count)
            {
                var x = Flush(Vector256.Load(values + i) * scales);
                if (form == Bnb4BitDequantizedForm.BFloat16) StoreStreaming(BFloat16Bits.Round(x), (ushort*)job->Output + at + i, job->Streaming);
                else
                {
                    var value = form switch
                    {
                        Bnb4BitDequantizedForm.Float16InFloat32 => Float16Bits.RoundToHalf(x),
                        Bnb4BitDequantizedForm.BFloat16InFloat32 => BFloat16Bits.RoundTrip(x),
                        _ => x,
                    };
                    StoreStreaming(value, (float*)job->Output + at + i, job->Streaming);
                }
            }
        }
        else if (form != Bnb4BitDequantizedForm.Float16InFloat32)
        {
            var scales = Vector128.Create(scale);
            for (; i + Vector128<float>.Count <= count; i += Vector128<float>.Count)
            {
                var x = Flush(Vector128.Load(values + i) * scales);
                if (form == Bnb4BitDequantizedForm.BFloat16) FloatLanes128.StoreBFloat16(x, (ushort*)job->Output + at + i);
                else (form == Bnb4BitDequantizedForm.BFloat16InFloat32 ? BFloat16Bits.RoundTrip(x) : x).Store((float*)job->Output + at + i);
            }
        }
        for (; i < count; i++)
        {
            float x = Flush(values[i] * scale);
            if (form == Bnb4BitDequantizedForm.BFloat16) ((ushort*)job->Output)[at + i] = BFloat16Bits.Round(x);
            else
            {
                ((float*)job->Output)[at + i] = form switch
                {
                    Bnb4BitDequantizedForm.Float16InFloat32 => (float)(Half)x,
                    Bnb4BitDequantizedForm.BFloat16InFloat32 => BFloat16Bits.RoundTrip(x),
                    _ => x,
                };
            }
        }
    }

    /// <summary>
    /// A store that bypasses the caches where <paramref name="streaming"/> (x86, aligned destination): the GEMM that read
    /// the previous block left its lines in the other cores' caches, and ordinary stores had to claim each line from
    /// there first, which made dequantizing into a reused buffer take twice to four times as long.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreStreaming(Vector256<float> x, float* address, bool streaming)
    {
        if (streaming && Avx.IsSupported) Avx.StoreAlignedNonTemporal(address, x);
        else x.Store(address);
    }

    /// <inheritdoc cref="StoreStreaming(Vector256{float}, float*, bool)"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreStreaming(Vector128<ushort> x, ushort* address, bool streaming)
    {
        if (streaming && Sse2.IsSupported) Sse2.StoreAlignedNonTemporal(address, x);
        else x.Store(address);
    }
}
