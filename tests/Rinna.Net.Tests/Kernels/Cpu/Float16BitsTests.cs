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

    /// <summary>
    /// Rounding float32 to float16 in place gives <c>(float)(Half)x</c>: every midpoint between neighbouring float16
    /// values below 65520 and the float32 values a unit either side of it (the ties and near-ties), zeros, and a sweep
    /// of float32 bit patterns at a prime stride, both signs; the arrays' odd lengths use the scalar tail too.
    /// </summary>
    [Fact]
    public void RoundingToFloat16EqualsHalfsConversion()
    {
        var values = new List<float> { 0f, -0f, 65504f, 65519.996f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f, 2.9802326e-08f };
        for (int h = 0; h < 0x7BFF; h++)
        {
            float low = (float)BitConverter.UInt16BitsToHalf((ushort)h), high = (float)BitConverter.UInt16BitsToHalf((ushort)(h + 1));
            float middle = (float)(((double)low + high) / 2);
            values.AddRange([low, middle, MathF.BitIncrement(middle), MathF.BitDecrement(middle)]);
        }
        for (uint bits = 0; bits < 0x477FF000u; bits += 1021) values.Add(BitConverter.UInt32BitsToSingle(bits));
        var all = values.Concat(values.Select(v => -v)).Append(1f).ToArray();
        var rounded = (float[])all.Clone();
        Float16Bits.RoundToHalf(rounded);
        for (int i = 0; i < all.Length; i++)
        {
            float expected = (float)(Half)all[i];
            Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(rounded[i]),
                $"{all[i]:R} (0x{BitConverter.SingleToUInt32Bits(all[i]):X8}): expected {expected:R}, got {rounded[i]:R}");
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
