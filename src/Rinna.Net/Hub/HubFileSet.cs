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

    /// <summary>
    /// A PEFT adapter repository: <c>adapter_config.json</c> and the weights, <c>adapter_model.safetensors</c>, else
    /// <c>adapter_model.bin</c> (what PEFT's <c>PeftModel.from_pretrained</c> downloads).
    /// </summary>
    Adapter = 4,
}
