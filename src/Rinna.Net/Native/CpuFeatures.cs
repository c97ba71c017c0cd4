using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace Rinna.Net.Native;

/// <summary>What the CPU offers beyond the instruction sets .NET reports, for choices between libtorch's kernels.</summary>
internal static class CpuFeatures
{
    private static readonly (string ModelName, HashSet<string> Flags) CpuInfo = ReadCpuInfo();

    /// <summary>The CPU's model name from <c>/proc/cpuinfo</c>, or "unknown CPU" where it cannot be read.</summary>
    public static string ModelName => CpuInfo.ModelName;

    /// <summary>The flags (x64) or features (Arm64) of the first CPU in <c>/proc/cpuinfo</c>; empty where it cannot be read.</summary>
    public static IReadOnlySet<string> Flags => CpuInfo.Flags;

    /// <summary>
    /// Whether the CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX-BF16 on x64, the BF16 extension on Arm64), so
    /// that libtorch's bfloat16 GEMM runs at about twice its float32 rate. Elsewhere oneDNN emulates it, at under half the
    /// float32 rate (benchmarks/RESULTS.md). AVX-512 must also be enabled for .NET: a process told to stop at AVX2
    /// (<c>DOTNET_EnableAVX512=0</c>) is treated as the AVX2 CPU it asks to be.
    /// </summary>
    public static bool HasBFloat16Arithmetic { get; } = RuntimeInformation.ProcessArchitecture == Architecture.Arm64
        ? Flags.Contains("bf16")
        : Avx512F.IsSupported && (Flags.Contains("avx512_bf16") || Flags.Contains("amx_bf16"));

    private static (string, HashSet<string>) ReadCpuInfo()
    {
        string model = "unknown CPU";
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                {
                    if (line.StartsWith("model name", StringComparison.Ordinal)) model = line[(line.IndexOf(':') + 1)..].Trim();
                    else if (line.StartsWith("flags", StringComparison.Ordinal) || line.StartsWith("Features", StringComparison.Ordinal))
                        return (model, line[(line.IndexOf(':') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal));
                }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Unknown features: assume none, which keeps every path correct and at worst slower.
        }
        return (model, []);
    }
}
