using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace Rinna.Net.Native;

/// <summary>What the CPU offers beyond the instruction sets .NET reports, for choices between libtorch's kernels.</summary>
internal static class CpuFeatures
{
    private static readonly (string ModelName, string Vendor, HashSet<string> Flags) CpuInfo = ReadCpuInfo();

    /// <summary>The CPU's model name from <c>/proc/cpuinfo</c>, or "unknown CPU" where it cannot be read.</summary>
    public static string ModelName => CpuInfo.ModelName;

    /// <summary>The x64 CPU's <c>vendor_id</c> from <c>/proc/cpuinfo</c> (<c>GenuineIntel</c>, <c>AuthenticAMD</c>); empty where there is none.</summary>
    public static string Vendor => CpuInfo.Vendor;

    /// <summary>The flags (x64) or features (Arm64) of the first CPU in <c>/proc/cpuinfo</c>; empty where it cannot be read.</summary>
    public static IReadOnlySet<string> Flags => CpuInfo.Flags;

    /// <summary>
    /// Whether libtorch's bfloat16 GEMM outruns its float32 one on this CPU (<see cref="BFloat16GemmOutruns"/>), so that
    /// rounding a float16 weight to bfloat16 for a prompt pays.
    /// </summary>
    public static bool BFloat16GemmOutrunsFloat32 { get; } =
        BFloat16GemmOutruns(RuntimeInformation.ProcessArchitecture, Avx512F.IsSupported, Vendor, Flags);

    /// <summary>
    /// Whether a CPU multiplies bfloat16 at about twice its float32 FMA rate: AMX-BF16, AVX512_BF16 on AMD's cores (Zen 4
    /// and later), or Arm64's BF16 extension. Intel's cores without AMX run AVX512_BF16's dot product at their float32
    /// FMA rate, and CPUs without bfloat16 instructions have oneDNN emulate it at under half that rate, so there MKL's
    /// float32 GEMM is the faster (benchmarks/RESULTS.md). AVX-512 must also be enabled for .NET: a process told to
    /// stop at AVX2 (<c>DOTNET_EnableAVX512=0</c>) is treated as the AVX2 CPU it asks to be.
    /// </summary>
    internal static bool BFloat16GemmOutruns(Architecture architecture, bool avx512Enabled, string vendor, IReadOnlySet<string> flags) =>
        architecture == Architecture.Arm64
            ? flags.Contains("bf16")
            : avx512Enabled && (flags.Contains("amx_bf16") || (flags.Contains("avx512_bf16") && vendor != "GenuineIntel"));

    private static (string, string, HashSet<string>) ReadCpuInfo()
    {
        string model = "unknown CPU", vendor = "";
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                {
                    if (line.StartsWith("model name", StringComparison.Ordinal)) model = line[(line.IndexOf(':') + 1)..].Trim();
                    else if (line.StartsWith("vendor_id", StringComparison.Ordinal)) vendor = line[(line.IndexOf(':') + 1)..].Trim();
                    else if (line.StartsWith("flags", StringComparison.Ordinal) || line.StartsWith("Features", StringComparison.Ordinal))
                        return (model, vendor, line[(line.IndexOf(':') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal));
                }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Unknown features: assume none, which keeps every path correct and at worst slower.
        }
        return (model, vendor, []);
    }
}
