using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Native;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Tests.Kernels.Cpu;

public class RowLayerNormTests
{
    public RowLayerNormTests() => TorchSharpNativeLoader.EnsureInstalled();

    /// <summary>
    /// Against libtorch's bfloat16 LayerNorm (what the separate operations and HF run): only the statistics are summed in
    /// another order, so a result may differ by its last bit, rarely. Lengths cover the vector loop, its tail, and both.
    /// </summary>
    public static TheoryData<string, int> Cases
    {
        get
        {
            var data = new TheoryData<string, int>();
            foreach (var width in Enum.GetNames<LaneWidth>())
                foreach (int length in new[] { 128, 192, 768, 2816, 100, 5 }) data.Add(width, length);
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public unsafe void EqualsLibTorchsBFloat16LayerNormToItsLastBitRarely(string widthName, int length)
    {
        var width = Enum.Parse<LaneWidth>(widthName);
        if (!LaneWidths.IsAccelerated(width)) Assert.Skip($"this CPU does not run {width} vectors in hardware.");
        var generator = new Generator(7);
        int differing = 0, rows = 200;
        for (int r = 0; r < rows; r++)
        {
            using var scope = NewDisposeScope();
            // Rows with an offset mean and a spread, and LayerNorm gains and biases like trained ones.
            var x = (randn(length, generator: generator) * 3 + 0.5 * (r % 7)).to(ScalarType.BFloat16);
            var w = (randn(length, generator: generator) * 0.2 + 1).to(ScalarType.BFloat16);
            var b = (randn(length, generator: generator) * 0.1).to(ScalarType.BFloat16);
            var expected = F.layer_norm(x, [length], w, b, 1e-5).to(ScalarType.Float32).data<float>().ToArray();
            var actual = new float[length];
            fixed (byte* xp = x.bytes)
            fixed (byte* wp = w.bytes)
            fixed (byte* bp = b.bytes)
            fixed (float* ap = actual)
                RowLayerNorm.Apply((ushort*)xp, (ushort*)wp, (ushort*)bp, 1e-5, length, ap, width);
            // Where γ·x̂ and β nearly cancel, a statistic's last float32 bit is many bfloat16 bits of the small result, so
            // a difference may also be up to 10⁻⁵ of the row's largest value.
            float scale = expected.Max(MathF.Abs);
            for (int i = 0; i < length; i++)
            {
                if (expected[i] == actual[i]) continue;
                differing++;
                int ulps = Math.Abs((BitConverter.SingleToInt32Bits(expected[i]) >> 16) - (BitConverter.SingleToInt32Bits(actual[i]) >> 16));
                Assert.True(ulps == 1 || MathF.Abs(actual[i] - expected[i]) <= 1e-5f * scale, $"row {r} element {i}: {actual[i]} against libtorch's {expected[i]}");
            }
        }
        Assert.True(differing <= rows * length / 1000, $"{differing} of {rows * length} elements differ from libtorch's");
    }

    [Theory]
    [InlineData("Vector128")]
    [InlineData("Vector256")]
    public unsafe void NonFiniteInputsGiveNaNAsLibTorchDoes(string widthName)
    {
        var width = Enum.Parse<LaneWidth>(widthName);
        if (!LaneWidths.IsAccelerated(width)) Assert.Skip($"this CPU does not run {width} vectors in hardware.");
        using var x = tensor(new float[] { 1, 2, float.PositiveInfinity, 4, 5, 6, 7, 8, 9 }).to(ScalarType.BFloat16);
        using var w = ones(9, ScalarType.BFloat16);
        using var b = zeros(9, ScalarType.BFloat16);
        var expected = F.layer_norm(x, [9], w, b, 1e-5).to(ScalarType.Float32).data<float>().ToArray();
        var actual = new float[9];
        fixed (byte* xp = x.bytes)
        fixed (byte* wp = w.bytes)
        fixed (byte* bp = b.bytes)
        fixed (float* ap = actual)
            RowLayerNorm.Apply((ushort*)xp, (ushort*)wp, (ushort*)bp, 1e-5, 9, ap, width);
        Assert.All(expected, e => Assert.True(float.IsNaN(e)));
        Assert.All(actual, a => Assert.True(float.IsNaN(a)));
    }
}
