using System.Runtime.Intrinsics;
using Rinna.Net.Kernels.Cpu;

namespace Rinna.Net.Tests.Kernels.Cpu;

/// <summary>The vectorized float16 widening gives what <c>(float)Half</c> gives, for every bit pattern.</summary>
public class Float16BitsTests
{
    [Fact]
    public void EveryFloat16WidensBitForBitAsHalfDoes()
    {
        // All 65,536 patterns in order, so vectors hold normals, subnormals, zeros, infinities and NaNs side by side,
        // then shifted by 3 so that vector boundaries fall elsewhere and the scalar tail is used too.
        var all = Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();
        foreach (int offset in new[] { 0, 3 })
        {
            var source = all.AsSpan(offset);
            var widened = new float[source.Length];
            Float16Bits.Widen(source, widened);
            for (int i = 0; i < source.Length; i++)
            {
                float expected = (float)BitConverter.UInt16BitsToHalf(source[i]);
                Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(widened[i]),
                    $"0x{source[i]:X4}: expected {expected:R}, got {widened[i]:R}");
            }
        }
    }

    [Fact]
    public void EveryFiniteFloat16IsExactInEachVectorWidthWithoutSubnormalSteps()
    {
        // Exact's contract is every finite pattern (callers exclude infinities and NaNs), sign-extended as the kernels load it.
        var finite = Enumerable.Range(0, 65536).Where(b => (b & 0x7C00) != 0x7C00).Select(b => (int)(short)b).ToArray();
        for (int i = 0; i + 16 <= finite.Length; i += 16)
        {
            var bits = Vector512.Create(finite.AsSpan(i, 16));
            var w512 = Float16Bits.Exact(bits);
            var w256 = Float16Bits.Exact(bits.GetLower());
            var w128 = Float16Bits.Exact(bits.GetLower().GetLower());
            for (int lane = 0; lane < 16; lane++)
            {
                int expected = BitConverter.SingleToInt32Bits((float)BitConverter.UInt16BitsToHalf((ushort)finite[i + lane]));
                Assert.True(expected == BitConverter.SingleToInt32Bits(w512[lane]), $"0x{(ushort)finite[i + lane]:X4}: 512-bit gave {w512[lane]:R}");
                if (lane < 8) Assert.Equal(expected, BitConverter.SingleToInt32Bits(w256[lane]));
                if (lane < 4) Assert.Equal(expected, BitConverter.SingleToInt32Bits(w128[lane]));
            }
        }
    }

    [Fact]
    public void AShortDestinationIsRefused() =>
        Assert.Throws<ArgumentException>(() => Float16Bits.Widen(new ushort[4], new float[3]));
}
