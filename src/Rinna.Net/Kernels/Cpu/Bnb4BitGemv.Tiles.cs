using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// How the integer variants multiply many activation rows (a prompt, a batched step): in one OpenMP region the team
/// first turns the activations into 16-bit integers, a row per claim, then multiplies them a tile of rows at a time.
/// A tile's integer activations stay in the core's L1 cache (L2 for long rows) while the weight streams past them once
/// per tile, and each code looked up is multiplied with four activation rows (AVX-512 and AVX2), so the lookup is a
/// small share of the work. Where prompts would otherwise multiply in float32 this beats dequantizing the weight for
/// libtorch's GEMM at every prompt length measured (benchmarks/RESULTS.md).
/// </summary>
/// <remarks>
/// Every row gets exactly what it gets alone (the same sums in the same order), so a prompt's rows agree bit for bit
/// with the decode steps that follow it.
/// </remarks>
internal static unsafe partial class Bnb4BitGemv
{
    /// <summary>
    /// Bytes of 16-bit activations one tile holds: about an L1 data cache. Tiles in L1 ran faster than larger ones in
    /// L2, though the weight then streams past more often (benchmarks/RESULTS.md).
    /// </summary>
    private const int TileBytes = 48 * 1024;

    /// <summary>
    /// Activation rows per tile for rows of <paramref name="columns"/>: a multiple of four from 8 to 64. At least eight, so
    /// that a batched decode step of up to eight rows reads the weight once (longer rows then tile in L2, which measured
    /// level with tiles of four).
    /// </summary>
    internal static int TileRows(int columns) => Math.Clamp(TileBytes / (2 * columns) / 4 * 4, MaxActivationRows, 64);

    /// <summary>
    /// <paramref name="x"/> (any number of rows up to <see cref="MaxInt16ActivationRows"/>) through the integer
    /// <paramref name="variant"/>; false, with nothing allocated left behind, where an activation is not finite.
    /// </summary>
    private static bool TryMultiplyInt16(Tensor x, Bnb4BitMatrix weight, Tensor? bias, Bnb4BitGemvVariant variant, out Tensor result)
    {
        result = null!;
        int rows = weight.Rows, columns = weight.Columns, blocks = columns / BlockSize;
        int activationRows = (int)(x.numel() / columns);
        int tileRows = TileRows(columns), tiles = (activationRows + tileRows - 1) / tileRows;
        if ((long)tiles * rows > int.MaxValue) return false;
        var quantized = ArrayPool<short>.Shared.Rent(activationRows * columns);
        var inverseScales = ArrayPool<float>.Shared.Rent(activationRows * blocks);
        Span<short> table16 = stackalloc short[64];
        Int16Table(weight.Code, table16);
        var output = empty(TensorShapes.WithLastDimension(x, rows), dtype: x.dtype == ScalarType.Float16 ? ScalarType.Float32 : x.dtype);
        bool nonFinite;
        try
        {
            fixed (short* quantizedInputs = quantized)
            fixed (float* scales = inverseScales)
            fixed (short* table = table16)
            fixed (byte* source = x.bytes)
            {
                int threads = get_num_threads();
                var job = new Job
                {
                    OutputIsBFloat16 = x.dtype == ScalarType.BFloat16, Rows = rows, Columns = columns,
                    Claims = new RowClaims(tiles * rows, threads, 8), Grouped = true, Variant = variant,
                    Quantized = quantizedInputs, Table16 = table, InverseScales = scales, ActivationRows = activationRows,
                    Source = source, SourceType = x.dtype, SourceClaims = new RowClaims(activationRows, threads, 1), TileRows = tileRows,
                };
                RunOnTeam(&RunTiles, ref job, weight, bias, output, threads);
                nonFinite = job.NonFinite != 0;
            }
        }
        finally
        {
            ArrayPool<short>.Shared.Return(quantized);
            ArrayPool<float>.Shared.Return(inverseScales);
        }
        if (nonFinite)
        {
            output.Dispose();
            return false;
        }
        result = FinishOutput(output, x.dtype);
        return true;
    }

    /// <summary>
    /// One team thread of <see cref="TryMultiplyInt16"/>: claims activation rows to quantize until none are left, waits for
    /// the team, then claims runs of (tile, weight row) pairs, tile by tile, and multiplies them.
    /// </summary>
    [UnmanagedCallersOnly]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit]
    private static void RunTiles(void* state)
    {
        var shared = (Job*)state;
        float* widened = stackalloc float[128];
        while (shared->SourceClaims.TryClaim(out int firstRow, out int endRow))
            for (int r = firstRow; r < endRow; r++)
                if (!QuantizeRow(shared, r, widened))
                    Volatile.Write(ref shared->NonFinite, 1);
        LibTorchOpenMp.Barrier();
        if (Volatile.Read(ref shared->NonFinite) != 0) return;

        var job = *shared;
        int rows = job.Rows, columns = job.Columns, blocks = columns / BlockSize, tileRows = job.TileRows;
        int outputBytes = job.OutputIsBFloat16 ? sizeof(ushort) : sizeof(float);
        float* values = stackalloc float[tileRows];
        while (shared->Claims.TryClaim(out int first, out int end))
            while (first < end)
            {
                // A claim may run on into the next tile: each tile's part is one run of weight rows.
                int tile = first / rows, row = first - tile * rows, stop = Math.Min(end - tile * rows, rows);
                int firstActivation = tile * tileRows;
                job.ActivationRows = Math.Min(tileRows, shared->ActivationRows - firstActivation);
                job.Quantized = shared->Quantized + (long)firstActivation * columns;
                job.InverseScales = shared->InverseScales + (long)firstActivation * blocks;
                job.Output = (byte*)shared->Output + (long)firstActivation * rows * outputBytes;
                if (job.ActivationRows == 1 && job.Variant != Bnb4BitGemvVariant.Vector128Int16) RunInt16Rows(&job, row, stop);
                else
                    for (; row < stop; row++)
                    {
                        long start = (long)row * columns;
                        switch (job.Variant)
                        {
                            case Bnb4BitGemvVariant.Avx512Int16: RowsInt16Avx512(&job, start, values); break;
                            case Bnb4BitGemvVariant.Avx2Int16: RowsInt16Avx2<MaddDot>(&job, start, values); break;
                            case Bnb4BitGemvVariant.AvxVnniInt16: RowsInt16Avx2<VnniDot>(&job, start, values); break;
                            default: RowsInt16Vector128(&job, start, values); break;
                        }
                        for (int r = 0; r < job.ActivationRows; r++) Store(&job, row, r, values[r]);
                    }
                first = tile * rows + stop;
            }
    }

    /// <summary>
    /// Activation row <paramref name="row"/> of the source (float32, bfloat16 or float16) as 16-bit integers and block
    /// scales, a step of the variant at a time through <paramref name="widened"/> (128 floats); false where a value is not finite.
    /// </summary>
    private static bool QuantizeRow(Job* job, int row, float* widened)
    {
        int columns = job->Columns, chunk = Int16Chunk(job->Variant);
        long first = (long)row * columns;
        var buffer = new Span<float>(widened, chunk);
        for (int start = 0; start < columns; start += chunk)
        {
            long at = first + start;
            ReadOnlySpan<float> input;
            if (job->SourceType == ScalarType.Float32) input = new ReadOnlySpan<float>((float*)job->Source + at, chunk);
            else
            {
                var bits = new ReadOnlySpan<ushort>((ushort*)job->Source + at, chunk);
                if (job->SourceType == ScalarType.Float16) Float16Bits.Widen(bits, buffer);
                else BFloat16Bits.Widen(bits, buffer);
                input = buffer;
            }
            if (!QuantizeChunk(input, new Span<short>(job->Quantized + at, chunk),
                    new Span<float>(job->InverseScales + at / BlockSize, chunk / BlockSize), job->Variant))
                return false;
        }
        return true;
    }

    /// <summary>Rows <c>[first, end)</c> of one activation row through the AVX-512 or an AVX2 integer variant, a run at a time.</summary>
    private static void RunInt16Rows(Job* job, int first, int end)
    {
        const int Run = 64;
        float* values = stackalloc float[Run];
        for (int start = first; start < end; start += Run)
        {
            int count = Math.Min(Run, end - start);
            if (job->Variant == Bnb4BitGemvVariant.Avx512Int16) RunInt16Avx512(job, start, count, values);
            else if (job->Variant == Bnb4BitGemvVariant.AvxVnniInt16) RunInt16Avx2<VnniDot>(job, start, count, values);
            else RunInt16Avx2<MaddDot>(job, start, count, values);
            for (int i = 0; i < count; i++) Store(job, start + i, 0, values[i]);
        }
    }
}
