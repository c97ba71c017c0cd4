using static TorchSharp.torch;

namespace Rinna.Net.Native;

/// <summary>How a loading model's weights are placed in native memory: the page policy in one place.</summary>
/// <remarks>
/// Every weight is populated in one call before it is filled: page faults one 4 KiB page at a time dominated the
/// loading of multi-gigabyte models. Weights that a decode step streams whole through a managed GEMV (float16 matrices)
/// also get transparent huge pages, which spares the TLB misses and prefetcher restarts of 4 KiB pages; int8 weights
/// do not, because ATen's int8 GEMM decoded slower from huge pages. Freed staging copies are returned to the OS after
/// each conversion, so a load peaks near the size of the finished model.
/// </remarks>
internal static class WeightMemory
{
    /// <summary>A new contiguous tensor for a weight that is about to be filled.</summary>
    /// <param name="shape">The weight's shape.</param>
    /// <param name="dtype">The dtype it is stored in.</param>
    /// <param name="device">Its device; policy applies to CPU memory only.</param>
    /// <param name="streamedPerToken">Whether a decode step reads it whole through a managed GEMV (a float16 matrix).</param>
    public static Tensor Allocate(long[] shape, ScalarType dtype, Device device, bool streamedPerToken)
    {
        var tensor = empty(shape, dtype, device);
        if (device.type == TorchSharp.DeviceType.CPU) NativeHeap.Populate(tensor, hugePages: streamedPerToken);
        return tensor;
    }

    /// <summary>
    /// A new contiguous CPU tensor for a staging copy: a weight read as stored only to be quantized to int8 and freed while
    /// loading. It gets huge pages, since populating and freeing it 4 KiB at a time made an int8 load take twice as long
    /// as a float16 one; the int8 weight it becomes keeps <see cref="Allocate"/>'s policy. 4-bit loads do not use it:
    /// with it their decode measured about a tenth slower (benchmarks/RESULTS.md), for a reason not yet found.
    /// </summary>
    public static Tensor AllocateStaging(long[] shape, ScalarType dtype)
    {
        var tensor = empty(shape, dtype, CPU);
        NativeHeap.Populate(tensor, hugePages: true);
        return tensor;
    }

    /// <summary>Returns the memory of freed staging copies to the OS.</summary>
    public static void ReleaseFreed() => NativeHeap.Trim();
}
