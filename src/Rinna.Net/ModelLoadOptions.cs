using Rinna.Net.Hub;

namespace Rinna.Net;

/// <summary>The element type the model's weights are kept and computed in (HF's <c>torch_dtype</c>).</summary>
public enum TorchDtype
{
    /// <summary>The dtype the checkpoint stores its weights in (read from the weights, not from <c>config.json</c>, which can disagree).</summary>
    Auto,
    /// <summary>float32: exact, largest, slowest; Hugging Face's default.</summary>
    Float32,
    /// <summary>float16. On CPU, libtorch's float16 matrix products are slow for prompts, so the model computes in bfloat16 there (logged).</summary>
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

    /// <summary>Reports loading progress tensor by tensor.</summary>
    public IProgress<LoadProgress>? LoadProgress { get; set; }
}
