namespace Rinna.Net.Generation;

/// <summary>Decoding settings, as Hugging Face's <c>GenerationConfig</c>.</summary>
public sealed record GenerationConfig
{
    /// <summary>Sample from the distribution instead of taking the most likely token.</summary>
    public bool DoSample { get; init; }
    /// <summary>Tokens to generate beyond the prompt; takes precedence over <see cref="MaxLength"/>.</summary>
    public int? MaxNewTokens { get; init; }
    /// <summary>Maximum total length (prompt + new tokens); HF's default is 20.</summary>
    public int MaxLength { get; init; } = 20;
    /// <summary>Token ids that end a sequence.</summary>
    public IReadOnlyList<int>? EosTokenId { get; init; }
    /// <summary>Id written after a sequence has finished; defaults to the first EOS id, as in HF.</summary>
    public int? PadTokenId { get; init; }
    /// <summary>Beginning-of-sequence id.</summary>
    public int? BosTokenId { get; init; }
}
