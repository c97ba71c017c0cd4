using System.Runtime.InteropServices;
using Rinna.Net.Native;
using Xunit;

namespace Rinna.Net.Tests.Native;

public class CpuFeaturesTests
{
    [Theory]
    // Intel without AMX (Cooper Lake, Sapphire Rapids in a VM that hides AMX): the bfloat16 dot product runs at the float32 FMA rate.
    [InlineData(Architecture.X64, true, "GenuineIntel", "avx2 avx512f avx512_bf16 avx512_fp16", false)]
    [InlineData(Architecture.X64, true, "GenuineIntel", "avx2 avx512f avx512_bf16 amx_bf16 amx_tile", true)]
    [InlineData(Architecture.X64, true, "AuthenticAMD", "avx2 avx512f avx512_bf16", true)]
    [InlineData(Architecture.X64, true, "AuthenticAMD", "avx2 avx512f", false)]
    [InlineData(Architecture.X64, false, "AuthenticAMD", "avx2 avx512f avx512_bf16", false)]
    [InlineData(Architecture.X64, false, "GenuineIntel", "avx2 amx_bf16", false)]
    [InlineData(Architecture.X64, true, "", "avx512f avx512_bf16", true)]
    [InlineData(Architecture.Arm64, false, "", "fp asimd bf16 i8mm", true)]
    [InlineData(Architecture.Arm64, false, "", "fp asimd", false)]
    public void BFloat16GemmOutrunsFloat32OnlyWhereItsDotProductDoublesTheFmaRate(Architecture architecture, bool avx512, string vendor, string flags, bool expected) =>
        Assert.Equal(expected, CpuFeatures.BFloat16GemmOutruns(architecture, avx512, vendor, flags.Split(' ').ToHashSet()));

    [Fact]
    public void ReadsTheVendorOfAnX64LinuxCpu()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) Assert.Skip("vendor_id is an x64 line of Linux's /proc/cpuinfo.");
        Assert.False(string.IsNullOrEmpty(CpuFeatures.Vendor));
        Assert.NotEqual("unknown CPU", CpuFeatures.ModelName);
        Assert.Contains("sse2", CpuFeatures.Flags);
    }
}
