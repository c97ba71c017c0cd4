using static TorchSharp.torch;

namespace Rinna.Net.Native;

/// <summary>How a loading model's weights are placed in native memory: the page policy in one place.</summary>
/// <remarks>
/// Every weight is populated in one call before it is filled: page faults one 4 KiB page at a time dominated the
/// loading of multi-gigabyte models. Weights that a decode step streams whole through the float16 GEMV also get
/// transparent huge pages, which spares the TLB misses and prefetcher restarts of 4 KiB pages; int8 and 4-bit weights
/// are held to small pages, because their decode ran slower from huge pages. Weights read only to be quantized share one
/// <see cref="Staging"/> buffer, and freed memory is returned to the OS after each conversion, so a load peaks near the
/// size of the finished model.
/// </remarks>
internal static class WeightMemory
{
    /// <summary>A new contiguous tensor for a weight that is about to be filled.</summary>
    /// <param name="shape">The weight's shape.</param>
    /// <param name="dtype">The dtype it is stored in.</param>
    /// <param name="device">Its device; policy applies to CPU memory only.</param>
    /// <param name="pages">The pages it gets.</param>
    public static Tensor Allocate(long[] shape, ScalarType dtype, Device device, WeightPages pages)
    {
        var tensor = empty(shape, dtype, device);
        if (device.type != TorchSharp.DeviceType.CPU) return tensor;
        if (pages == WeightPages.Huge) NativeHeap.AdviseHugePages(tensor);
        else if (pages == WeightPages.Small) NativeHeap.AdviseSmallPages(tensor);
        NativeHeap.Prefault(tensor);
        return tensor;
    }

    /// <summary>
    /// One buffer that a load reuses for every weight it reads only to quantize (to int8 or 4-bit) or to convert to
    /// another dtype, and then drops: each <see cref="Take"/> is a view of its start, valid until the next one.
    /// </summary>
    /// <remarks>
    /// Why one buffer: a fresh staging tensor per weight was populated page by page and freed again, which (with the
    /// TLB misses of reading it from 4 KiB pages) took half of a 4-bit load. The buffer gets transparent huge pages only
    /// where glibc maps it on its own (<see cref="NativeHeap.OwnMappingBytes"/>) and so unmaps it when it is freed; a
    /// smaller one would leave its advice in the heap for whatever is allocated there next.
    /// </remarks>
    internal sealed class Staging : IDisposable
    {
        private readonly long capacity;
        private Tensor? buffer;
        private bool disposed;

        /// <param name="capacity">Elements of the largest weight expected, so that the buffer is allocated once.</param>
        public Staging(long capacity) => this.capacity = capacity;

        /// <summary>A contiguous CPU view of <paramref name="shape"/> and <paramref name="dtype"/>, to be filled, read and disposed before the next call.</summary>
        public Tensor Take(long[] shape, ScalarType dtype)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            long elements = shape.Aggregate(1L, (a, b) => a * b);
            if (buffer is null || buffer.dtype != dtype || buffer.numel() < elements)
            {
                buffer?.Dispose();
                buffer = null;
                // It outlives whichever module's construction asks first, so no dispose scope may own it.
                var fresh = empty(Math.Max(elements, capacity), dtype, CPU).DetachFromDisposeScope();
                NativeHeap.Populate(fresh, hugePages: fresh.numel() * fresh.ElementSize >= NativeHeap.OwnMappingBytes);
                buffer = fresh;
            }
            using var start = buffer.narrow(0, 0, elements);
            return start.view(shape);
        }

        /// <summary>Frees the buffer now (a later <see cref="Take"/> allocates it again) and returns freed heap memory to the OS.</summary>
        public void Release()
        {
            buffer?.Dispose();
            buffer = null;
            NativeHeap.Trim();
        }

        /// <summary>Frees the buffer; <see cref="Take"/> then throws.</summary>
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            Release();
        }
    }

    /// <summary>Returns the memory of freed staging copies to the OS.</summary>
    public static void ReleaseFreed() => NativeHeap.Trim();
}

/// <summary>The pages a weight's memory gets (<see cref="WeightMemory.Allocate"/>).</summary>
internal enum WeightPages
{
    /// <summary>The system's default for anonymous memory.</summary>
    Default,

    /// <summary>Transparent huge pages: float16 matrices that a decode step streams whole through the managed GEMV.</summary>
    Huge,

    /// <summary>
    /// Small pages, even where the memory comes back from a freed tensor that had huge pages: int8 and 4-bit weights,
    /// whose decode ran slower from huge pages (ATen's int8 GEMM, and the 4-bit GEMV by 7 %).
    /// </summary>
    Small,
}
