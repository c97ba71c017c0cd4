using BenchmarkDotNet.Attributes;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Benchmarks;

/// <summary>Read bandwidth as libtorch sees it (sum over 1 GiB, 2 threads): the denominator of the decode roofline.</summary>
public class MemoryBandwidthBenchmarks
{
    public const long Bytes = 1L << 30;
    private Tensor buffer = null!;

    [GlobalSetup]
    public void Setup()
    {
        Rinna.Net.Native.TorchSharpNativeLoader.EnsureInstalled(); // before the first torch call (Debian 12 libstdc++)
        torch.set_num_threads(2);
        buffer = ones(Bytes / 4, ScalarType.Float32);
    }

    [GlobalCleanup]
    public void Cleanup() => buffer.Dispose();

    [Benchmark]
    public float ReadOneGiB()
    {
        using var sum = buffer.sum();
        return sum.item<float>();
    }
}
