using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Layers;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Native;
using System.Runtime.Intrinsics.X86;

namespace Rinna.Net.Benchmarks;

/// <summary>The CPU a run measured and which kernel each phase takes on it, for the report: figures differ by ISA.</summary>
public static class KernelChoices
{
    /// <summary>The CPU's model name and the instruction sets the kernels choose by.</summary>
    public static string Cpu()
    {
        string flags = string.Join(" ", new[] { "avx2", "f16c", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "asimd", "bf16" }
            .Where(CpuFeatures.Flags.Contains));
        // DOTNET_EnableAVX512=0 and the like (benchmarks' ISA=avx2) hide instruction sets the CPU has: say what .NET uses.
        string capped = (flags.Contains("avx512f", StringComparison.Ordinal) && !Avx512F.IsSupported ? " avx512f" : "")
            + (flags.Contains("avx_vnni", StringComparison.Ordinal) && !AvxVnni.IsSupported ? " avx_vnni" : "");
        return $"{CpuFeatures.ModelName} ({Environment.ProcessorCount} CPUs; {flags}{(capped.Length > 0 ? $"; disabled for .NET:{capped}" : "")})";
    }

    /// <summary>One line per phase: the managed kernel and variant it runs, or the libtorch path it falls back to.</summary>
    public static IEnumerable<string> Describe()
    {
        string team = LibTorchOpenMp.IsAvailable ? "" : " (no OpenMP interop: libtorch's kernels run instead)";
        yield return "float16 decode, one row: " + (Float16Gemv.IsSupported ? $"Float16Gemv {Float16Gemv.DefaultVariant}, {Float16Gemv.Widening.ToString().ToLowerInvariant()} widening" : "libtorch's float16 GEMV") + team;
        yield return "2-32 rows (batched steps, short prompts): " + (MultiRowGemv.DefaultVariant is { } rows
            ? $"MultiRowGemv {rows} (float16 {(MultiRowGemv.SupportsFloat16 ? $"yes, {Float16Gemv.Widening.ToString().ToLowerInvariant()} widening{ExactWideningBy(rows)}" : "no")}, float32 {(MultiRowGemv.SupportsFloat32 ? "yes" : "no")})"
            : "libtorch");
        yield return "int8 decode: " + (Int8Gemv.IsPreferredForDecode ? $"Int8Gemv {Int8Gemv.DefaultVariant}, 2-32 rows Int8Gemv {Int8Gemv.RowsVariant}" : "oneDNN's _int_mm");
        yield return "int8 prompts (33+ rows): " + (AtenInt8Kernels.IntMmIsExactOnCpu ? "oneDNN's _int_mm"
            : Int8Gemv.IsSupported ? $"Int8Gemv {Int8Gemv.RowsVariant}, 32 rows a call (oneDNN's _int_mm saturates here)" : "float32 blocks (oneDNN's _int_mm saturates here)");
        yield return "float16 prompts (33+ rows): " + (Float16Linear.PromptsInBFloat16 ? "bfloat16 GEMM" : "float32 GEMM (bfloat16 no faster here)");
        yield return $"4-bit decode: Bnb4BitGemv {Bnb4BitGemv.DefaultVariant} (float32 compute), {Bnb4BitGemv.Int16VariantFor(2816, Bnb4BitQuantization.Nf4Code)?.ToString() ?? "the same"} (bfloat16 and float16 compute, rinna-4b's rows)";
        var nf4 = Bnb4BitQuantization.Nf4Code;
        static string Rows(int rows) => rows == int.MaxValue ? "every row" : $"up to {rows} rows";
        yield return $"4-bit prompts: Bnb4BitGemv {Rows(Bnb4BitLinear.GemvRowsFor(TorchSharp.torch.ScalarType.BFloat16, 2816, nf4))} with bfloat16 compute "
            + $"(tiles of {Bnb4BitGemv.TileRows(2816)}), {Rows(Bnb4BitLinear.GemvRowsFor(TorchSharp.torch.ScalarType.Float16, 2816, nf4))} with float16 "
            + $"and {Rows(Bnb4BitLinear.GemvRowsFor(TorchSharp.torch.ScalarType.Float32, 2816, nf4))} with float32 (rinna-4b's rows), more dequantized by "
            + (Bnb4BitDequantize.IsAvailable ? "Bnb4BitDequantize" : "Parallel.For") + " for a "
            + (Bnb4BitLinear.PromptsInBFloat16 ? "bfloat16" : "float32") + " GEMM with bfloat16 compute";
        yield return "decode attention: DecodeAttention" + (LibTorchOpenMp.IsAvailable ? " on libtorch's OpenMP team" : ", one thread");
    }

    /// <summary>Who widens float16 rows for <see cref="MultiRowGemv"/> when the exact widening is in force.</summary>
    private static string ExactWideningBy(Float16GemvVariant variant)
    {
        if (Float16Gemv.Widening != Float16Widening.Exact) return "";
        return MultiRowGemv.WidensThroughLibTorch(variant) ? " through libtorch's F16C conversion" : " in managed code";
    }
}
