using Rinna.Net.Generation;

namespace Rinna.Net.Integration;

/// <summary>
/// What <see cref="RinnaServiceCollectionExtensions.AddRinna(Microsoft.Extensions.DependencyInjection.IServiceCollection, Action{RinnaOptions})"/>
/// loads and how it answers; bindable from configuration (e.g. a <c>"Rinna"</c> section of appsettings.json).
/// </summary>
public sealed class RinnaOptions
{
    /// <summary>Model id (<c>rinna/bilingual-gpt-neox-4b-instruction-ppo</c>) or local directory. Required.</summary>
    public string ModelId { get; set; } = "";

    /// <summary>Tokenizer id or directory; <c>null</c> means <see cref="ModelId"/>.</summary>
    public string? TokenizerId { get; set; }

    /// <summary>Hub revision (branch, tag, commit or <c>refs/pr/N</c>).</summary>
    public string? Revision { get; set; }

    /// <summary>Hub cache directory; <c>null</c> means Python's (<c>HF_HUB_CACHE</c>, <c>HF_HOME</c>, <c>~/.cache/huggingface/hub</c>).</summary>
    public string? CacheDir { get; set; }

    /// <summary>Use only cached files.</summary>
    public bool LocalFilesOnly { get; set; }

    /// <summary>Hub access token; <c>null</c> means <c>HF_TOKEN</c>.</summary>
    public string? Token { get; set; }

    /// <summary>Hub endpoint; <c>null</c> means <c>HF_ENDPOINT</c> or huggingface.co.</summary>
    public string? Endpoint { get; set; }

    /// <summary>The weights' dtype.</summary>
    public TorchDtype TorchDtype { get; set; } = TorchDtype.Float32;

    /// <summary>The conversation format; <c>null</c> detects it from <see cref="ModelId"/> (falls back to the bilingual format).</summary>
    public RinnaChatFormat? ChatFormat { get; set; }

    /// <summary>Load the model when the host starts instead of on the first request.</summary>
    public bool LoadOnStart { get; set; }

    /// <summary>Default tokens per answer (a request's <c>MaxOutputTokens</c> overrides it).</summary>
    public int MaxNewTokens { get; set; } = 128;

    /// <summary>Default sampling switch; rinna's cards sample.</summary>
    public bool DoSample { get; set; } = true;

    /// <summary>Default temperature (rinna's cards: 0.7).</summary>
    public double Temperature { get; set; } = 0.7;

    /// <summary>Default nucleus threshold.</summary>
    public double TopP { get; set; } = 1.0;

    /// <summary>Default repetition penalty (rinna's cards: 1.1).</summary>
    public double RepetitionPenalty { get; set; } = 1.1;

    /// <summary>
    /// What a request does when the conversation and its answer outgrow the model's context: drop the oldest exchanges
    /// (the default; instructions and the latest message stay, and the answer's length is clamped to what fits) or throw.
    /// </summary>
    public ContextOverflowPolicy ContextOverflow { get; set; } = ContextOverflowPolicy.DropOldestTurns;
}
