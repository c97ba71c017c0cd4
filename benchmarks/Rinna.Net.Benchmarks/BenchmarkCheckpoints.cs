using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using static TorchSharp.torch;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// Deterministic random-weight checkpoints in Hugging Face layout (float16 safetensors, like rinna's published files),
/// written once per shape under the temp directory and reused by every benchmark process.
/// </summary>
public static class BenchmarkCheckpoints
{
    public static string Directory(string shape) => Path.Combine(Path.GetTempPath(), "rinna-net-bench", shape);

    public static string Ensure(string shape)
    {
        if (shape == ModelShapes.Demo) return ModelShapes.DemoDirectory();
        var directory = Directory(shape);
        var done = Path.Combine(directory, ".complete");
        if (File.Exists(done)) return directory;
        using (var model = GptNeoXForCausalLM.CreateRandom(ModelShapes.Get(shape) with { TorchDtype = "float16" }, seed: 1234, ScalarType.Float16))
            model.SavePretrained(directory);
        File.WriteAllText(done, DateTime.UtcNow.ToString("O"));
        return directory;
    }

    /// <summary>
    /// What every model benchmark's setup does: loads TorchSharp's native libraries (before the first torch call, for
    /// Debian 12's libstdc++), runs libtorch on 2 threads, and loads <paramref name="shape"/> with the options of
    /// <paramref name="dtype"/> (or <paramref name="options"/>).
    /// </summary>
    public static GptNeoXForCausalLM Load(string shape, string dtype, ModelLoadOptions? options = null)
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        TorchSharp.torch.set_num_threads(2);
        return AutoModelForCausalLM.FromPretrainedAsync(Ensure(shape), options ?? Options(dtype)).GetAwaiter().GetResult();
    }

    public static ModelLoadOptions Options(string dtype) => dtype switch
    {
        "Float32" => new ModelLoadOptions { TorchDtype = TorchDtype.Float32 },
        "BFloat16" => new ModelLoadOptions { TorchDtype = TorchDtype.BFloat16 },
        "Float16" => new ModelLoadOptions { TorchDtype = TorchDtype.Float16 },
        // The model card's switches: int8 layers, float16 for the rest (the head streams through the float16 GEMV).
        "Int8" => new ModelLoadOptions { TorchDtype = TorchDtype.Float16, LoadIn8Bit = true },
        // llm_int8_skip_modules=[]: the head is int8 too, as in llama.cpp's Q8_0 files, so both engines stream the same bytes.
        "Int8All" => new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float16,
            QuantizationConfig = new QuantizationConfig { LoadIn8Bit = true, SkipModules = [] },
        },
        // load_in_4bit with NF4, float16 for the rest as the int8 entry above, and prompts in bfloat16
        // (bnb_4bit_compute_dtype=torch.bfloat16, the usual QLoRA-style setting; float32 prompts run at float32 speed).
        "Nf4" => new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float16,
            QuantizationConfig = new QuantizationConfig
            {
                LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4, Bnb4BitComputeDtype = TorchDtype.BFloat16,
            },
        },
        // llm_int8_skip_modules=[] for 4-bit: the head is NF4 too, as in llama.cpp's Q4_0 files written with --pure,
        // so both engines stream about the same bytes per token (on request: RINNA_BENCH_DTYPES).
        "Nf4All" => new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float16,
            QuantizationConfig = new QuantizationConfig
            {
                LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4, Bnb4BitComputeDtype = TorchDtype.BFloat16, SkipModules = [],
            },
        },
        // Nf4All with double quantization (bnb_4bit_use_double_quant=True, QLoRA's setting): each block's scale is 8-bit
        // with a float32 scale per 256 blocks, 4.13 bits a weight against Q4_0's 4.5 (on request: RINNA_BENCH_DTYPES).
        "Nf4AllDq" => new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float16,
            QuantizationConfig = new QuantizationConfig
            {
                LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4, Bnb4BitComputeDtype = TorchDtype.BFloat16,
                Bnb4BitUseDoubleQuant = true, SkipModules = [],
            },
        },
        // The same 4-bit weights computing in float32 (bitsandbytes' default compute dtype): decode through the exact
        // float32 GEMV instead of the integer one, for a baseline in the same run (on request: RINNA_BENCH_DTYPES).
        "Nf4Float32" => new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float16,
            QuantizationConfig = new QuantizationConfig
            {
                LoadIn4Bit = true, Bnb4BitQuantType = Bnb4BitQuantization.Nf4, Bnb4BitComputeDtype = TorchDtype.Float32,
            },
        },
        _ => throw new ArgumentException($"unknown dtype '{dtype}'", nameof(dtype)),
    };
}
