using Rinna.Net.Model;

namespace Rinna.Net;

/// <summary>Hugging Face's <c>AutoModelForCausalLM</c>: builds the right causal language model for a model directory or id.</summary>
public static class AutoModelForCausalLM
{
    /// <summary>
    /// Loads a GPT-NeoX causal language model: HF's <c>AutoModelForCausalLM.from_pretrained(model_id_or_path, ...)</c>.
    /// </summary>
    /// <param name="modelIdOrPath">A directory holding <c>config.json</c> and the weights.</param>
    /// <param name="options">dtype, progress and logging options; <c>null</c> for defaults (float32).</param>
    /// <param name="cancellationToken">Stops loading between tensors.</param>
    /// <exception cref="ModelConfigException"><c>config.json</c> is missing or invalid.</exception>
    /// <exception cref="CheckpointException">The weights are missing, corrupt or do not match the config.</exception>
    public static Task<GptNeoXForCausalLM> FromPretrainedAsync(string modelIdOrPath, ModelLoadOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelIdOrPath);
        options ??= new ModelLoadOptions();
        if (!Directory.Exists(modelIdOrPath))
            throw new DirectoryNotFoundException($"model directory '{modelIdOrPath}' does not exist.");
        return Task.Run(() => GptNeoXLoader.Load(modelIdOrPath, options, cancellationToken), cancellationToken);
    }
}
