namespace Rinna.Net.AspNetCore;

/// <summary>Settings of the OpenAI-compatible endpoints mapped by <see cref="OpenAIEndpointRouteBuilderExtensions.MapOpenAIChatCompletions"/>.</summary>
public sealed class OpenAIEndpointOptions
{
    /// <summary>The largest request body accepted, in bytes (default 1 MiB); a larger one is answered with 413 before it is read.</summary>
    public long MaxRequestBodySize { get; set; } = 1 << 20;

    /// <summary>The most messages one request may hold (default 1,024); the model's context is smaller than that anyway.</summary>
    public int MaxMessages { get; set; } = 1024;

    /// <summary>
    /// The most continuations one <c>/v1/completions</c> request may ask for, prompts × <c>n</c> (default 16): they run
    /// as one batch, so this bounds a request's share of the model's batch and memory.
    /// </summary>
    public int MaxCompletionChoices { get; set; } = 16;

    /// <summary>
    /// The models served, by the name clients give as <c>model</c>, each mapped to the key of a keyed <c>IChatClient</c>
    /// service (<c>null</c> for the unkeyed one). Empty (the default): the unkeyed <c>IChatClient</c> answers whatever
    /// <c>model</c> says, and responses and <c>/v1/models</c> name it by its <c>ChatClientMetadata.DefaultModelId</c>.
    /// With entries, a request for a name not listed is answered with 404 <c>model_not_found</c>, as OpenAI does.
    /// </summary>
    public IDictionary<string, object?> Models { get; } = new Dictionary<string, object?>(StringComparer.Ordinal);

    internal void Validate()
    {
        if (MaxRequestBodySize < 1024)
            throw new ArgumentOutOfRangeException(nameof(MaxRequestBodySize), MaxRequestBodySize, "MaxRequestBodySize must be at least 1024 bytes.");
        if (MaxMessages < 1)
            throw new ArgumentOutOfRangeException(nameof(MaxMessages), MaxMessages, "MaxMessages must be at least 1.");
        if (MaxCompletionChoices < 1)
            throw new ArgumentOutOfRangeException(nameof(MaxCompletionChoices), MaxCompletionChoices, "MaxCompletionChoices must be at least 1.");
        foreach (var name in Models.Keys)
            if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("A served model name is empty.", nameof(Models));
    }
}
