using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Kernels.Cpu;

/// <summary>The vector bfloat16 conversions every row kernel uses, in each width, against libtorch's own conversions.</summary>
public unsafe class BFloat16BitsTests
{
    public BFloat16BitsTests() => TorchSharpNativeLoader.EnsureInstalled();

    /// <summary>
    /// float32 values of every kind: ties that round to even either way, the largest values below overflow and the
    /// ones that round to infinity, subnormals, signed zeros, infinities and NaN, then ordinary random values, so a
    /// run of 61 leaves a tail after every vector width.
    /// </summary>
    private static float[] Values()
    {
        uint[] bits =
        [
            0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0x7F7F7FFF, 0x7F7F8000, 0xFF7F8000, 0x00000001, 0x807FFFFF,
            0x00008000, 0x00018000, 0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001,
        ];
        var random = new Random(5);
        return [.. bits.Select(BitConverter.UInt32BitsToSingle), .. Enumerable.Range(0, 43).Select(_ => (float)(random.NextDouble() * 2 - 1) * MathF.Pow(2, random.Next(-40, 40)))];
    }

    /// <summary>libtorch's bfloat16 of each value (NaN as libtorch writes it, compared by kind below).</summary>
    private static ushort[] LibTorchBits(float[] values)
    {
        using var rounded = tensor(values).to(ScalarType.BFloat16);
        return MemoryMarshal.Cast<byte, ushort>(rounded.bytes).ToArray();
    }

    private static void AssertSameBFloat16(ushort expected, ushort actual, float value)
    {
        // A NaN stays a NaN; its payload is not what callers read.
        if (float.IsNaN(value)) Assert.True((actual & 0x7FFF) > 0x7F80, $"NaN became {actual:X4}");
        else Assert.True(expected == actual, $"{value:R} ({BitConverter.SingleToUInt32Bits(value):X8}): libtorch {expected:X4}, ours {actual:X4}");
    }

    public static TheoryData<string> Widths => new(Enum.GetNames<LaneWidth>().Append("Vector512"));

    [Theory]
    [MemberData(nameof(Widths))]
    public void StoreAndRoundTripRoundAsLibTorchDoes(string width)
    {
        var values = Values();
        var expected = LibTorchBits(values);
        var stored = new ushort[values.Length];
        var roundTripped = new float[values.Length];
        fixed (float* source = values)
        fixed (ushort* destination = stored)
        fixed (float* back = roundTripped)
        {
            int count = width switch
            {
                "Vector128" => Run<Vector128<float>, FloatLanes128>(source, destination, back, values.Length),
                "Vector256" => Run<Vector256<float>, FloatLanes256>(source, destination, back, values.Length),
                _ => Run<Vector512<float>, FloatLanes512>(source, destination, back, values.Length),
            };
            if (count < 0) Assert.Skip($"this CPU does not run {width} vectors in hardware.");
            for (int i = 0; i < count; i++)
            {
                AssertSameBFloat16(expected[i], stored[i], values[i]);
                AssertSameBFloat16(expected[i], (ushort)(BitConverter.SingleToUInt32Bits(roundTripped[i]) >> 16), values[i]);
                Assert.Equal(0u, BitConverter.SingleToUInt32Bits(roundTripped[i]) & 0xFFFF);
            }
        }
    }

    /// <summary>The vector part of a run through <typeparamref name="TLanes"/>' bfloat16 store and round trip; the count done, or −1.</summary>
    private static int Run<TVector, TLanes>(float* source, ushort* stored, float* roundTripped, int length)
        where TVector : unmanaged where TLanes : struct, IFloatLanes<TVector>
    {
        if (!TLanes.IsHardwareAccelerated) return -1;
        int i = 0;
        for (; i + TLanes.Count <= length; i += TLanes.Count)
        {
            TLanes.StoreBFloat16(TLanes.Load(source + i), stored + i);
            TLanes.Store(TLanes.RoundTripBFloat16(TLanes.Load(source + i)), roundTripped + i);
        }
        return i;
    }

    [Theory]
    [InlineData("Vector128")]
    [InlineData("Vector256")]
    public void WidenEqualsLibTorchsConversionInEveryWidth(string widthName)
    {
        var width = Enum.Parse<LaneWidth>(widthName);
        if (!LaneWidths.IsAccelerated(width)) Assert.Skip($"this CPU does not run {width} vectors in hardware.");
        var bits = LibTorchBits(Values());
        using var expected = tensor(Values()).to(ScalarType.BFloat16).to(ScalarType.Float32);
        var widened = new float[bits.Length];
        BFloat16Bits.Widen(bits, widened, width);
        Assert.Equal(MemoryMarshal.Cast<byte, uint>(expected.bytes).ToArray(), widened.Select(BitConverter.SingleToUInt32Bits).ToArray());
        Assert.Throws<ArgumentException>(() => BFloat16Bits.Widen(bits, new float[bits.Length - 1], width));
    }
}
