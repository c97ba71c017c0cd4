using System.Runtime.InteropServices;

namespace Rinna.Net.Native;

/// <summary>
/// glibc keeps freed heap memory mapped, so a loader that converts tensors one after another leaves every freed
/// staging copy in the resident set. Trimming after each conversion returns those pages to the OS, which keeps the peak
/// of a load near the size of the finished model. A no-op outside glibc-based Linux.
/// </summary>
internal static partial class NativeHeap
{
    private static readonly bool Available = OperatingSystem.IsLinux() && NativeLibrary.TryLoad("libc.so.6", out _);

    public static void Trim()
    {
        if (Available) MallocTrim(0);
    }

    [LibraryImport("libc.so.6", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
