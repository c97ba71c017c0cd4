using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Rinna.Net.Native;

/// <summary>
/// How loading treats native memory. glibc keeps freed heap memory mapped, so a loader that converts tensors one after
/// another leaves every freed staging copy in the resident set; trimming after each conversion returns those pages to
/// the OS, which keeps the peak of a load near the size of the finished model. Fresh tensors are populated before they
/// are filled (see <see cref="Prefault"/>). All of it is a no-op outside glibc-based Linux.
/// </summary>
internal static partial class NativeHeap
{
    private static readonly bool Available = OperatingSystem.IsLinux() && NativeLibrary.TryLoad("libc.so.6", out _);

    public static void Trim()
    {
        if (Available) MallocTrim(0);
    }

    /// <summary>
    /// Asks the kernel to back a freshly allocated, not yet written tensor with transparent huge pages
    /// (<c>madvise(MADV_HUGEPAGE)</c> on its 2 MiB-aligned interior): staging copies that are freed after loading, and
    /// float16 weights that stay (see <see cref="Prefault"/> for which kept weights must not get it).
    /// </summary>
    /// <remarks>
    /// The advice only changes how pages fault in. When the allocator hands out heap memory it had used before, that
    /// interior is already mapped in 4 KiB pages and would stay so (a test loading in a busy process got no huge pages and
    /// no fallback from the kernel), so after the advice those pages are dropped (<c>MADV_DONTNEED</c>) and fault in again
    /// as huge pages when the tensor is populated or filled: the tensor holds nothing yet, and the interior lies wholly inside it.
    /// </remarks>
    public static void AdviseHugePages(Tensor tensor)
    {
        Advise(tensor, MadvHugePage, HugePageBytes);
        Advise(tensor, MadvDontNeed, HugePageBytes);
    }

    /// <summary>
    /// Keeps a freshly allocated, not yet written tensor on small pages (<c>madvise(MADV_NOHUGEPAGE)</c> on its whole
    /// pages): heap memory freed by a tensor that had <see cref="AdviseHugePages"/> keeps that advice, and often its huge
    /// pages, for whatever the allocator places there next. Those pages are dropped (<c>MADV_DONTNEED</c>) as in
    /// <see cref="AdviseHugePages"/>, so that they fault in again as small pages.
    /// </summary>
    public static void AdviseSmallPages(Tensor tensor)
    {
        Advise(tensor, MadvNoHugePage, PageBytes);
        Advise(tensor, MadvDontNeed, PageBytes);
    }

    /// <summary>
    /// Maps in all pages of a freshly allocated tensor in one call (<c>madvise(MADV_POPULATE_WRITE)</c>, Linux 5.14+)
    /// before it is filled, instead of one page fault per 4 KiB page while it is written. A no-op for tensors under two
    /// pages or over 2 GB (<see cref="Tensor.bytes"/> is a span), off glibc Linux, and on kernels without that advice.
    /// </summary>
    public static void Prefault(Tensor tensor) => Advise(tensor, MadvPopulateWrite, PageBytes);

    /// <summary><see cref="Prefault"/>, after <see cref="AdviseHugePages"/> when <paramref name="hugePages"/> is set.</summary>
    public static void Populate(Tensor tensor, bool hugePages)
    {
        if (hugePages) AdviseHugePages(tensor);
        Prefault(tensor);
    }

    private static unsafe void Advise(Tensor tensor, int advice, long alignment)
    {
        long bytes = tensor.NumberOfElements * tensor.ElementSize;
        if (!Available || bytes < 2 * alignment || bytes > int.MaxValue || tensor.device_type != TorchSharp.DeviceType.CPU || !tensor.is_contiguous()) return;
        fixed (byte* data = tensor.bytes)
        {
            long start = ((long)data + alignment - 1) & ~(alignment - 1);
            long end = ((long)data + bytes) & ~(alignment - 1);
            // Advice is only a hint: an old kernel without MADV_POPULATE_WRITE answers EINVAL and the pages fault as usual.
            if (end > start) _ = MAdvise((nint)start, (nuint)(end - start), advice);
        }
    }

    /// <summary>
    /// Allocations of at least this many bytes get a mapping of their own from glibc, which it unmaps when they are
    /// freed (the ceiling of its dynamic mmap threshold on 64-bit systems); smaller ones come from the heap and stay there.
    /// </summary>
    public const long OwnMappingBytes = 32L << 20;

    private const long PageBytes = 4096;
    private const long HugePageBytes = 2L << 20;

    private const int MadvDontNeed = 4;
    private const int MadvHugePage = 14;
    private const int MadvNoHugePage = 15;
    private const int MadvPopulateWrite = 23;

    [LibraryImport("libc.so.6", EntryPoint = "madvise")]
    private static partial int MAdvise(nint address, nuint length, int advice);

    [LibraryImport("libc.so.6", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
