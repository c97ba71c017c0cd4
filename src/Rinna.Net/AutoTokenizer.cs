using Rinna.Net.Tokenization;

namespace Rinna.Net;

/// <summary>Hugging Face's <c>AutoTokenizer</c>: picks and loads the right tokenizer class for a model.</summary>
public static class AutoTokenizer
{
    /// <summary>
    /// Loads the tokenizer of a model (<c>AutoTokenizer.from_pretrained</c>) from a directory in Hugging Face's layout
    /// (<c>spiece.model</c>, <c>tokenizer_config.json</c>, <c>special_tokens_map.json</c>, or <c>tokenizer.json</c>) or from a
    /// model id on the hub, downloaded into (or found in) the cache Python uses.
    /// </summary>
    /// <param name="modelIdOrPath">A local tokenizer directory or a model id such as <c>rinna/bilingual-gpt-neox-4b-instruction-ppo</c>.</param>
    /// <param name="options">Loading options; rinna's models need <see cref="TokenizerOptions.UseFast"/> = <c>false</c> in Hugging Face, and load either way here.</param>
    /// <param name="cancellationToken">Cancels the load.</param>
    /// <exception cref="TokenizerException">A tokenizer file is missing, corrupt or inconsistent.</exception>
    /// <exception cref="Hub.HubException">The model id cannot be resolved or downloaded (or is not cached when offline).</exception>
    /// <exception cref="ArgumentException"><paramref name="modelIdOrPath"/> is neither a directory nor a valid model id.</exception>
    public static async Task<PreTrainedTokenizer> FromPretrainedAsync(string modelIdOrPath, TokenizerOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelIdOrPath);
        options ??= new TokenizerOptions();
        var directory = await options.ResolveAsync(modelIdOrPath, Hub.HubFileSet.Tokenizer, cancellationToken).ConfigureAwait(false);
        return await Task.Run(() => FromDirectory(directory, options, cancellationToken), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Loads the tokenizer from a local Hugging Face tokenizer directory.</summary>
    /// <param name="directory">The directory.</param>
    /// <param name="options">Loading options (<see cref="TokenizerOptions.UseFast"/>, padding side, logging); hub options are ignored.</param>
    /// <param name="cancellationToken">Cancels the load.</param>
    /// <exception cref="TokenizerException">A tokenizer file is missing, corrupt or inconsistent.</exception>
    public static PreTrainedTokenizer FromDirectory(string directory, TokenizerOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        return TokenizerLoader.Load(directory, options ?? new TokenizerOptions(), cancellationToken);
    }
}
