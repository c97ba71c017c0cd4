using Rinna.Net.Hub;
using Rinna.Net.Model.DeviceMap;
using Rinna.Net.Model.Quantization;

namespace Rinna.Net;

/// <summary>The element type the model's weights are kept and computed in (HF's <c>torch_dtype</c>).</summary>
public enum TorchDtype
{
    /// <summary>The dtype the checkpoint stores its weights in (read from the weights, not from <c>config.json</c>, which can disagree).</summary>
    Auto,
    /// <summary>float32: exact, largest, slowest; Hugging Face's default.</summary>
    Float32,
    /// <summary>
    /// float16. On CPU the matrices stay float16 (libtorch's float16 GEMV decodes about twice as fast as bfloat16; prompts
    /// convert them to bfloat16 block by block because libtorch has no fast float16 GEMM there), and LayerNorms,
    /// embeddings and activations compute in bfloat16 (logged): the fastest unquantized choice for decoding on CPU.
    /// </summary>
    Float16,
    /// <summary>bfloat16: half the memory of float32, fast prompt processing on CPUs with AVX-512 BF16.</summary>
    BFloat16,
}

/// <summary>Load progress: how many tensors and bytes of the checkpoint have been turned into model weights.</summary>
/// <param name="TensorsLoaded">Tensors done.</param>
/// <param name="TotalTensors">Tensors to load.</param>
/// <param name="CurrentTensor">The tensor just loaded.</param>
public sealed record LoadProgress(int TensorsLoaded, int TotalTensors, string CurrentTensor);

/// <summary>Options of <see cref="AutoModelForCausalLM.FromPretrainedAsync"/>, mirroring <c>from_pretrained</c>'s keyword arguments.</summary>
public class ModelLoadOptions : HubOptions
{
    /// <summary>HF's <c>torch_dtype</c>. Default <see cref="TorchDtype.Float32"/>, as in transformers.</summary>
    public TorchDtype TorchDtype { get; set; } = TorchDtype.Float32;

    /// <summary>
    /// HF's <c>load_in_8bit</c>: quantize every linear layer except the output head to int8 while loading (LLM.int8():
    /// per-row weight scales, per-token activation scales, outlier features above <see cref="Model.Quantization.QuantizationConfig.Int8Threshold"/>
    /// kept in floating point). Shorthand for <see cref="QuantizationConfig"/> with <c>LoadIn8Bit</c> set.
    /// </summary>
    public bool LoadIn8Bit { get; set; }

    /// <summary>
    /// HF's <c>load_in_4bit</c>: quantize every linear layer except the output head to 4 bits while loading, as
    /// bitsandbytes does (blocks of 64 weights, NF4 or FP4 codes, an absmax scale per block). Shorthand for
    /// <see cref="QuantizationConfig"/> with <c>LoadIn4Bit</c> set, whose <c>Bnb4BitQuantType</c> (<c>"fp4"</c> by
    /// default, <c>"nf4"</c>), <c>Bnb4BitUseDoubleQuant</c> and <c>Bnb4BitComputeDtype</c> apply. Cannot be combined with
    /// <see cref="LoadIn8Bit"/>.
    /// </summary>
    public bool LoadIn4Bit { get; set; }

    /// <summary>HF's <c>quantization_config</c> (<c>BitsAndBytesConfig</c>): 8- or 4-bit, their settings, and modules to skip.</summary>
    public QuantizationConfig? QuantizationConfig { get; set; }

    /// <summary>
    /// HF's <c>device_map</c>: <c>"auto"</c>, <c>"balanced"</c>, <c>"sequential"</c>, <c>"cpu"</c>, a device such as
    /// <c>"cuda:0"</c>, or an explicit map from module name (<c>gpt_neox.embed_in</c>, <c>gpt_neox.layers.N</c>,
    /// <c>gpt_neox.final_layer_norm</c>, <c>embed_out</c>) to device. <c>null</c> puts everything on the cpu, as HF does.
    /// </summary>
    public DeviceMapSpec? DeviceMap { get; set; }

    /// <summary>HF's <c>max_memory</c>: the most each device may hold for <see cref="DeviceMap"/> planning.</summary>
    public MaxMemory? MaxMemory { get; set; }

    /// <summary>
    /// A PEFT LoRA adapter to apply: a directory holding <c>adapter_config.json</c> and <c>adapter_model.safetensors</c>
    /// (or <c>adapter_model.bin</c>), or a hub id such as <c>org/my-rinna-lora</c>, resolved and cached like a model id
    /// (at <see cref="AdapterRevision"/>), as PEFT's <c>PeftModel.from_pretrained(model, adapter)</c>. By default it is merged
    /// into the weights while they load (<c>W + s·B·A</c> in float32, before float16 storage or int8 quantization), so it
    /// costs nothing at run time; with <see cref="MergeAdapter"/> off it stays a run-time adapter named <c>default</c>
    /// (see <see cref="Model.Adapters.AdapterExtensions"/>).
    /// </summary>
    public string? Adapter { get; set; }

    /// <summary>
    /// The branch, tag or commit of a hub-id <see cref="Adapter"/>; <c>null</c> means <c>main</c> (the model's own
    /// <see cref="HubOptions.Revision"/> names a commit of another repository, so it does not apply).
    /// </summary>
    public string? AdapterRevision { get; set; }

    /// <summary>Merge <see cref="Adapter"/> into the weights at load (default) or keep it unmerged and active.</summary>
    public bool MergeAdapter { get; set; } = true;

    /// <summary>
    /// Build every linear layer so that LoRA adapters can be loaded and switched at run time
    /// (<see cref="Model.Adapters.AdapterExtensions.LoadAdapter"/>); implied by an unmerged <see cref="Adapter"/>.
    /// </summary>
    public bool EnableAdapters { get; set; }

    /// <summary>Reports loading progress tensor by tensor.</summary>
    public IProgress<LoadProgress>? LoadProgress { get; set; }
}
