namespace Rinna.Net.Hub;

/// <summary>Which files of a repository <see cref="HubClient.ResolveAsync"/> makes available locally.</summary>
[Flags]
public enum HubFileSet
{
    /// <summary>
    /// <c>config.json</c>, <c>generation_config.json</c> when it exists, and the weights: <c>model.safetensors</c>, else
    /// <c>model.safetensors.index.json</c> with every shard it names, else <c>pytorch_model.bin</c>.
    /// </summary>
    Model = 1,

    /// <summary>
    /// Those of <c>tokenizer_config.json</c>, <c>special_tokens_map.json</c>, <c>spiece.model</c> and <c>tokenizer.json</c> that exist;
    /// at least one of <c>spiece.model</c> and <c>tokenizer.json</c> must.
    /// </summary>
    Tokenizer = 2,
}
