using System.Runtime.InteropServices;

namespace Rinna.Net.Native;

/// <summary>
/// The float16 → float32 conversions that the Linux LibTorch's bundled fbgemm exports (<c>fbgemm::Float16ToFloat_avx2</c>
/// and <c>_avx512</c>): F16C's <c>vcvtph2ps</c>, one instruction per vector and exact for every value, subnormals
/// included, which .NET 10 exposes no intrinsic for. Managed kernels that widen a float16 weight into a float32 buffer
/// call them where found and widen in managed code elsewhere.
/// </summary>
internal static unsafe class LibTorchFloat16
{
    private static readonly nint Handle = Load();

    /// <summary><c>fbgemm::Float16ToFloat_avx2(const uint16_t*, float*, size_t)</c> (F16C, 256-bit), or null.</summary>
    private static readonly delegate* unmanaged<ushort*, float*, nuint, void> Avx2 =
        CpuFeatures.Flags.Contains("f16c") && System.Runtime.Intrinsics.X86.Avx2.IsSupported ? Export("_ZN6fbgemm19Float16ToFloat_avx2EPKtPfm") : null;

    /// <summary><c>fbgemm::Float16ToFloat_avx512(const uint16_t*, float*, size_t)</c>, or null.</summary>
    private static readonly delegate* unmanaged<ushort*, float*, nuint, void> Avx512 =
        System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? Export("_ZN6fbgemm21Float16ToFloat_avx512EPKtPfm") : null;

    /// <summary>Whether a conversion of <paramref name="width"/> bits (256 or 512) was found for this CPU.</summary>
    public static bool IsAvailable(int width) => (width == 512 ? Avx512 : width == 256 ? Avx2 : null) != null;

    /// <summary>
    /// Widens <paramref name="count"/> float16 values to float32 with the conversion of <paramref name="width"/> bits, which
    /// <see cref="IsAvailable"/> must have confirmed.
    /// </summary>
    public static void Widen(int width, ushort* source, float* destination, long count)
    {
        var convert = width == 512 ? Avx512 : Avx2;
        if (convert == null) throw new InvalidOperationException($"No {width}-bit float16 conversion was found in libtorch.");
        convert(source, destination, (nuint)count);
    }

    private static nint Load()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        // Touching TorchSharp first makes sure libtorch_cpu is mapped.
        _ = TorchSharp.torch.get_num_threads();
        var path = MappedLibraries.Find("libtorch_cpu.so");
        return path is not null && NativeLibrary.TryLoad(path, out var handle) ? handle : 0;
    }

    private static delegate* unmanaged<ushort*, float*, nuint, void> Export(string name) =>
        Handle != 0 && NativeLibrary.TryGetExport(Handle, name, out var export) ? (delegate* unmanaged<ushort*, float*, nuint, void>)export : null;
}
