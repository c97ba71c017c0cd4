using Rinna.Net.Native;
using Xunit;

namespace Rinna.Net.Tests.Native;

public class MappedLibrariesTests
{
    [Fact]
    public void FindsTheLibTorchThisProcessLoaded()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("/proc/self/maps is Linux's.");
        TorchSharpNativeLoader.EnsureInstalled();
        _ = TorchSharp.torch.get_num_threads();

        var paths = MappedLibraries.Paths();
        Assert.All(paths, path => Assert.True(Path.IsPathRooted(path), path));
        Assert.Equal(paths.Count, paths.Distinct().Count());
        var libTorch = MappedLibraries.Find("libtorch_cpu.so");
        Assert.NotNull(libTorch);
        Assert.True(File.Exists(libTorch), libTorch);
        Assert.Null(MappedLibraries.Find("no-such-library.so"));
    }
}
