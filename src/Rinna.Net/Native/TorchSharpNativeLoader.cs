using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Loader;
using System.Text;

namespace Rinna.Net.Native;

/// <summary>
/// Makes TorchSharp 0.107's native bridge load on Linux distributions whose libstdc++ predates GCC 13
/// (Debian 12, Ubuntu 22.04).
/// </summary>
/// <remarks>
/// <c>libLibTorchSharp.so</c> declares a dependency on the symbol version <c>GLIBCXX_3.4.32</c> only for
/// <c>std::ios_base_library_init()</c>, a link-time marker that no relocation uses. The dynamic loader
/// nevertheless refuses the library when the version is missing. When — and only when — the normal load fails,
/// this resolver hands the runtime a private copy of the library whose requirement is marked weak
/// (<c>VER_FLG_WEAK</c>). The NuGet package cache is never modified. It installs itself when the Rinna.Net assembly
/// is first used; call <see cref="EnsureInstalled"/> before touching <c>TorchSharp.torch</c> directly.
/// </remarks>
public static class TorchSharpNativeLoader
{
    private const string MissingVersion = "GLIBCXX_3.4.32";
    private const uint ShtGnuVerneed = 0x6ffffffe;
    private const ushort VerFlagWeak = 0x2;

    private static readonly object Gate = new();
    private static int installed;
    private static IntPtr patchedHandle;

    /// <summary>The path of the patched copy, when the workaround was needed and applied; otherwise <c>null</c>.</summary>
    public static string? PatchedLibraryPath { get; private set; }

    [ModuleInitializer]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255", Justification = "The resolver must exist before any TorchSharp call.")]
    internal static void InstallOnModuleLoad() => EnsureInstalled();

    /// <summary>Installs the resolver once per process. Safe to call many times and on any OS.</summary>
    public static void EnsureInstalled()
    {
        if (!OperatingSystem.IsLinux() || Interlocked.Exchange(ref installed, 1) == 1) return;
        AssemblyLoadContext.Default.ResolvingUnmanagedDll += Resolve;
    }

    private static IntPtr Resolve(System.Reflection.Assembly requester, string name)
    {
        if (name != "LibTorchSharp" && name != "libLibTorchSharp.so") return IntPtr.Zero;
        lock (Gate)
        {
            if (patchedHandle != IntPtr.Zero) return patchedHandle;
            try
            {
                patchedHandle = LoadPatchedCopy();
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or DllNotFoundException or BadImageFormatException)
            {
                // Returning zero lets TorchSharp report its own load error, which names the library it could not load.
                patchedHandle = IntPtr.Zero;
            }
            return patchedHandle;
        }
    }

    private static IntPtr LoadPatchedCopy()
    {
        var source = FindOriginal();
        if (source is null) return IntPtr.Zero;
        var image = File.ReadAllBytes(source);
        if (!TryMarkVersionWeak(image, MissingVersion)) return IntPtr.Zero;

        var info = new FileInfo(source);
        var dir = Path.Combine(Path.GetTempPath(), "rinna-net", "torchsharp-glibcxx-fix",
            $"{info.Length}-{info.LastWriteTimeUtc.Ticks}");
        Directory.CreateDirectory(dir);
        var target = Path.Combine(dir, "libLibTorchSharp.so");
        if (!File.Exists(target) || new FileInfo(target).Length != image.Length)
        {
            // Write under a private name and rename, so a concurrent process never maps a half-written file.
            var temp = $"{target}.{Environment.ProcessId}.tmp";
            File.WriteAllBytes(temp, image);
            File.Move(temp, target, overwrite: true);
        }

        // The copy lives elsewhere, so its DT_NEEDED entries must already be loaded for the soname lookup to succeed.
        var libTorchDir = FindLoadedLibTorchDirectory() ?? Path.GetDirectoryName(source)!;
        foreach (var dependency in new[] { "libc10.so", "libtorch_cpu.so", "libtorch.so" })
        {
            var path = Path.Combine(libTorchDir, dependency);
            if (File.Exists(path)) NativeLibrary.Load(path);
        }

        var handle = NativeLibrary.Load(target);
        PatchedLibraryPath = target;
        return handle;
    }

    private static string? FindOriginal()
    {
        var torchDir = Path.GetDirectoryName(typeof(TorchSharp.torch).Assembly.Location) ?? AppContext.BaseDirectory;
        string[] candidates =
        [
            torchDir,
            Path.Combine(torchDir, "runtimes", "linux-x64", "native"),
            AppContext.BaseDirectory,
            Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native"),
        ];
        return candidates.Select(d => Path.Combine(d, "libLibTorchSharp.so")).FirstOrDefault(File.Exists);
    }

    private static string? FindLoadedLibTorchDirectory() =>
        MappedLibraries.Find("libtorch_cpu.so") is { } path ? Path.GetDirectoryName(path) : null;

    /// <summary>
    /// Sets <c>VER_FLG_WEAK</c> on every version-needed auxiliary entry named <paramref name="version"/> in an
    /// ELF64 little-endian image. Returns false (and leaves the image unchanged) when the image is not such an ELF
    /// file or has no such entry; all offsets are bounds-checked.
    /// </summary>
    internal static bool TryMarkVersionWeak(byte[] elf, string version)
    {
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F'
            || elf[4] != 2 || elf[5] != 1) return false;
        var span = elf.AsSpan();
        long sectionTable = ReadInt64(span, 0x28);
        int entrySize = ReadUInt16(span, 0x3A), count = ReadUInt16(span, 0x3C);
        if (entrySize < 0x40 || sectionTable < 0 || sectionTable + (long)entrySize * count > elf.Length) return false;

        var wanted = Encoding.ASCII.GetBytes(version);
        var patches = new List<int>();
        for (int i = 0; i < count; i++)
        {
            int header = checked((int)(sectionTable + (long)i * entrySize));
            if (ReadUInt32(span, header + 4) != ShtGnuVerneed) continue;
            long offset = ReadInt64(span, header + 0x18);
            int link = ReadInt32(span, header + 0x28), needCount = ReadInt32(span, header + 0x2C);
            if (link < 0 || link >= count) return false;
            long strings = ReadInt64(span, checked((int)(sectionTable + (long)link * entrySize)) + 0x18);
            long need = offset;
            for (int n = 0; n < needCount; n++)
            {
                if (need < 0 || need + 16 > elf.Length) return false;
                int auxCount = ReadUInt16(span, (int)need + 2);
                long aux = need + ReadUInt32(span, (int)need + 8);
                for (int a = 0; a < auxCount; a++)
                {
                    if (aux < 0 || aux + 16 > elf.Length) return false;
                    long name = strings + ReadUInt32(span, (int)aux + 8);
                    if (name < 0 || name + wanted.Length + 1 > elf.Length) return false;
                    if (span.Slice((int)name, wanted.Length).SequenceEqual(wanted) && elf[name + wanted.Length] == 0)
                        patches.Add((int)aux + 4);
                    aux += ReadUInt32(span, (int)aux + 12);
                }
                need += ReadUInt32(span, (int)need + 12);
            }
        }
        foreach (var flagsOffset in patches)
            BitConverter.TryWriteBytes(span.Slice(flagsOffset, 2), (ushort)(ReadUInt16(span, flagsOffset) | VerFlagWeak));
        return patches.Count > 0;
    }

    private static ushort ReadUInt16(ReadOnlySpan<byte> s, int at) => System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(s[at..]);
    private static uint ReadUInt32(ReadOnlySpan<byte> s, int at) => System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(s[at..]);
    private static int ReadInt32(ReadOnlySpan<byte> s, int at) => System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(s[at..]);
    private static long ReadInt64(ReadOnlySpan<byte> s, int at) => System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(s[at..]);
}
