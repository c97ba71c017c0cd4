using System.Runtime.Intrinsics.X86;

namespace Rinna.Net.Native;

/// <summary>What the CPU offers beyond the instruction sets .NET reports, for choices between libtorch's kernels.</summary>
internal static class CpuFeatures
{
    /// <summary>
    /// Whether the CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX-BF16 on x64, the BF16 extension on Arm64), so
    /// that libtorch's bfloat16 GEMM runs at about twice its float32 rate. Elsewhere oneDNN emulates it, at under half the
    /// float32 rate (benchmarks/RESULTS.md). AVX-512 must also be enabled for .NET: a process told to stop at AVX2
    /// (<c>DOTNET_EnableAVX512=0</c>) is treated as the AVX2 CPU it asks to be.
    /// </summary>
    public static bool HasBFloat16Arithmetic { get; } = Detect();

    private static bool Detect()
    {
        var flags = CpuFlags();
        if (OperatingSystem.IsLinux() && System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture
            == System.Runtime.InteropServices.Architecture.Arm64)
            return flags.Contains("bf16");
        return Avx512F.IsSupported && (flags.Contains("avx512_bf16") || flags.Contains("amx_bf16"));
    }

    /// <summary>The flags (x64) or features (Arm64) of the first CPU in <c>/proc/cpuinfo</c>; empty where it cannot be read.</summary>
    private static HashSet<string> CpuFlags()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("flags", StringComparison.Ordinal) || line.StartsWith("Features", StringComparison.Ordinal))
                        return line[(line.IndexOf(':') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Unknown features: assume none, which keeps every path correct and at worst slower.
        }
        return [];
    }
}
