using Rinna.Net.Native;
using Xunit;

namespace Rinna.Net.Tests.Native;

public class LibTorchFloat16Tests
{
    public LibTorchFloat16Tests() => TorchSharpNativeLoader.EnsureInstalled();

    /// <summary>Every float16 bit pattern, at an odd count so that the conversions' scalar tails run too, against .NET's own conversion.</summary>
    [Theory]
    [InlineData(256)]
    [InlineData(512)]
    public unsafe void WidensEveryFloat16AsDotNetDoes(int width)
    {
        if (!LibTorchFloat16.IsAvailable(width))
            Assert.Skip($"libtorch's {width}-bit float16 conversion runs only in the Linux x64 LibTorch on CPUs with {(width == 512 ? "AVX-512" : "AVX2 and F16C")}.");
        const int count = (1 << 16) + 7;
        var source = Enumerable.Range(0, count).Select(i => (ushort)i).ToArray();
        var destination = new float[count + 1];
        destination[count] = 42f;
        fixed (ushort* s = source)
        fixed (float* d = destination)
            LibTorchFloat16.Widen(width, s, d, count);
        for (int i = 0; i < count; i++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf(source[i]);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(destination[i]), $"0x{source[i]:X4} should widen to a NaN");
            else Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(destination[i]),
                $"0x{source[i]:X4} widened to {destination[i]:R}, not {expected:R}");
        }
        Assert.Equal(42f, destination[count]);
    }
}
