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
    public void AShortDestinationIsRefused() =>
        Assert.Throws<ArgumentException>(() => Float16Bits.Widen(new ushort[4], new float[3]));
}
