using System.IO.Compression;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Rinna.Net.Kernels.Cpu;

namespace Rinna.Net.Model.Quantization;

/// <summary>
/// The float32 arithmetic of bitsandbytes' CUDA kernels, which are built with <c>--use_fast_math</c>: subnormal inputs
/// and results flush to (signed) zero, and <c>1.0f / x</c> is the GPU's approximate reciprocal (<c>MUFU.RCP</c>,
/// within one unit in the last place but not correctly rounded). Quantizing with these operations gives the codes and
/// scales <c>load_in_4bit</c> stores on a GPU, bit for bit.
/// </summary>
internal static class CudaFastMath
{
    private const string TableResource = "Rinna.Net.CudaReciprocal.bin";
    private const int MantissaCount = 1 << 23;

    // Two bitmaps over the 2^23 mantissas: where the GPU's reciprocal is one unit above, and one below, the correctly
    // rounded one (about 13 % of mantissas; measured on an H200, see tests/fixtures/bnb4bit/README.md).
    private static readonly Lazy<(ulong[] Above, ulong[] Below)> table = new(LoadTable);

    /// <summary>The smallest normal float32 (FLT_MIN); smaller magnitudes flush to zero.</summary>
    public const float MinNormal = FlushToZero.MinNormal;

    /// <summary>A subnormal flushed to zero of the same sign, as the GPU's <c>.ftz</c> instructions do.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Flush(float x) => FlushToZero.Flush(x);

    /// <summary>The same, lane by lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Flush(Vector256<float> x) => FlushToZero.Flush(x);

    /// <summary><c>a * b</c> with flush-to-zero on the inputs and the result.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Multiply(float a, float b) => Flush(Flush(a) * Flush(b));

    /// <summary>
    /// <c>1.0f / x</c> as a fast-math CUDA kernel computes it: the correctly rounded reciprocal moved by one unit where
    /// the GPU's differs (the difference depends only on the mantissa of <paramref name="x"/>), a subnormal
    /// <paramref name="x"/> read as zero (giving infinity) and a subnormal result flushed to zero.
    /// </summary>
    public static float Reciprocal(float x)
    {
        x = Flush(x);
        float r = 1.0f / x;
        if (x == 0f || !float.IsFinite(x)) return r;
        r = Flush(r);
        if (r == 0f) return r;
        int mantissa = BitConverter.SingleToInt32Bits(x) & (MantissaCount - 1);
        var (above, below) = table.Value;
        int bits = BitConverter.SingleToInt32Bits(r);
        if ((above[mantissa >> 6] >> mantissa & 1) != 0) bits++;
        else if ((below[mantissa >> 6] >> mantissa & 1) != 0) bits--;
        return Flush(BitConverter.Int32BitsToSingle(bits));
    }

    private static (ulong[] Above, ulong[] Below) LoadTable()
    {
        using var stream = typeof(CudaFastMath).Assembly.GetManifestResourceStream(TableResource)
            ?? throw new InvalidOperationException($"The embedded resource {TableResource} is missing from {typeof(CudaFastMath).Assembly.GetName().Name}.");
        using var zlib = new ZLibStream(stream, CompressionMode.Decompress);
        using var reader = new BufferedStream(zlib);
        var above = new ulong[MantissaCount / 64];
        var below = new ulong[MantissaCount / 64];
        long count = ReadNumber(reader);
        long mantissa = 0;
        for (long i = 0; i < count; i++)
        {
            long v = ReadNumber(reader);
            mantissa += v >> 1;
            if (mantissa >= MantissaCount) throw new InvalidDataException($"{TableResource}: mantissa {mantissa} is out of range.");
            (((v & 1) != 0) ? above : below)[mantissa >> 6] |= 1UL << (int)(mantissa & 63);
        }
        return (above, below);
    }

    private static long ReadNumber(Stream stream)
    {
        long value = 0;
        for (int shift = 0; shift < 35; shift += 7)
        {
            int b = stream.ReadByte();
            if (b < 0) throw new InvalidDataException($"{TableResource} ends early.");
            value |= (long)(b & 0x7F) << shift;
            if (b < 0x80) return value;
        }
        throw new InvalidDataException($"{TableResource} holds a number longer than 35 bits.");
    }
}
