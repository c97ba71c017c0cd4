using Rinna.Net.Tokenization;

namespace Rinna.Net;

/// <summary>Hugging Face's <c>AutoTokenizer</c>: picks and loads the right tokenizer class for a model.</summary>
public static class AutoTokenizer
{
    /// <summary>
    /// Loads the tokenizer of a model (<c>AutoTokenizer.from_pretrained</c>) from a local directory in Hugging Face's
    /// layout (<c>spiece.model</c>, <c>tokenizer_config.json</c>, <c>special_tokens_map.json</c>).
    /// </summary>
    /// <param name="modelIdOrPath">Path of a local tokenizer directory.</param>
    /// <param name="options">Loading options; rinna's models need <see cref="TokenizerOptions.UseFast"/> = <c>false</c> in Hugging Face, and load either way here.</param>
    /// <param name="cancellationToken">Cancels the load.</param>
    /// <exception cref="TokenizerException">The directory does not exist, or a tokenizer file is missing, corrupt or inconsistent.</exception>
    public static async Task<PreTrainedTokenizer> FromPretrainedAsync(string modelIdOrPath, TokenizerOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelIdOrPath);
        if (!Directory.Exists(modelIdOrPath))
            throw new TokenizerException(modelIdOrPath, null, "no such directory; loading by Hub model id is not available yet, pass a local tokenizer directory");
        return await Task.Run(() => FromDirectory(modelIdOrPath, options, cancellationToken), cancellationToken).ConfigureAwait(false);
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
