using Rinna.Net.Model;

namespace Rinna.Net;

/// <summary>Hugging Face's <c>AutoModelForCausalLM</c>: builds the right causal language model for a model directory or id.</summary>
public static class AutoModelForCausalLM
{
    /// <summary>
    /// Loads a GPT-NeoX causal language model: HF's <c>AutoModelForCausalLM.from_pretrained(model_id_or_path, ...)</c>.
    /// </summary>
    /// <param name="modelIdOrPath">
    /// A directory holding <c>config.json</c> and the weights, or a Hugging Face model id such as
    /// <c>rinna/bilingual-gpt-neox-4b-instruction-ppo</c>, downloaded into (or found in) the same cache Python uses.
    /// </param>
    /// <param name="options">Hub, dtype, progress and logging options; <c>null</c> for defaults (float32, revision main).</param>
    /// <param name="cancellationToken">Stops a download mid-file (it stays resumable) or loading between tensors.</param>
    /// <exception cref="ModelConfigException"><c>config.json</c> is missing or invalid.</exception>
    /// <exception cref="CheckpointException">The weights are missing, corrupt or do not match the config.</exception>
    /// <exception cref="Model.Adapters.AdapterConfigException"><see cref="ModelLoadOptions.Adapter"/> is not a supported LoRA adapter.</exception>
    /// <exception cref="Hub.HubException">The model id (or the adapter's) cannot be resolved or downloaded (or is not cached when offline).</exception>
    /// <exception cref="ArgumentException"><paramref name="modelIdOrPath"/> is neither a directory nor a valid model id.</exception>
    public static async Task<GptNeoXForCausalLM> FromPretrainedAsync(string modelIdOrPath, ModelLoadOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelIdOrPath);
        options ??= new ModelLoadOptions();
        var directory = await options.ResolveAsync(modelIdOrPath, Hub.HubFileSet.Model, cancellationToken).ConfigureAwait(false);
        var adapter = options.Adapter is { } id
            ? await options.ForRevision(options.AdapterRevision).ResolveAsync(id, Hub.HubFileSet.Adapter, cancellationToken).ConfigureAwait(false)
            : null;
        // A thread of its own, which exits after loading: see LibTorchOpenMp.RunOnOwnThread.
        return await Native.LibTorchOpenMp.RunOnOwnThread(() => GptNeoXLoader.Load(directory, options, cancellationToken, adapter), "Rinna.Net model load",
            cancellationToken).ConfigureAwait(false);
    }
}
