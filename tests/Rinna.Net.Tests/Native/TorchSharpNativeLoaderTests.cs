using Rinna.Net.Native;
using TorchSharp;

namespace Rinna.Net.Tests.Native;

public class TorchSharpNativeLoaderTests
{
    [Fact]
    public void TorchRunsAfterTheLoaderIsInstalled()
    {
        TorchSharpNativeLoader.EnsureInstalled();
        using var a = torch.arange(6, dtype: torch.float32);
        Assert.Equal(15f, a.sum().item<float>());
    }

    [Fact]
    public void PatchMarksOnlyTheNamedVersionWeak()
    {
        TorchSharpNativeLoader.EnsureInstalled();
        using var _ = torch.zeros(1);
        var original = Directory.GetFiles(AppContext.BaseDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories).First();
        var image = File.ReadAllBytes(original);
        var copy = (byte[])image.Clone();
        Assert.True(TorchSharpNativeLoader.TryMarkVersionWeak(copy, "GLIBCXX_3.4.32"));
        var changed = Enumerable.Range(0, image.Length).Where(i => image[i] != copy[i]).ToArray();
        Assert.Single(changed); // one flags byte of one Vernaux entry
        Assert.Equal(image[changed[0]] | 0x2, copy[changed[0]]);
        Assert.False(TorchSharpNativeLoader.TryMarkVersionWeak((byte[])image.Clone(), "GLIBCXX_9.9.99"));
    }

    [Fact]
    public void PatchRejectsNonElfInputWithoutThrowing()
    {
        Assert.False(TorchSharpNativeLoader.TryMarkVersionWeak(new byte[10], "GLIBCXX_3.4.32"));
        var garbage = new byte[4096];
        new Random(1).NextBytes(garbage);
        garbage[0] = 0x7f; garbage[1] = (byte)'E'; garbage[2] = (byte)'L'; garbage[3] = (byte)'F'; garbage[4] = 2; garbage[5] = 1;
        Assert.False(TorchSharpNativeLoader.TryMarkVersionWeak(garbage, "GLIBCXX_3.4.32"));
    }
}
