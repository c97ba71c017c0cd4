namespace Rinna.Net.Generation;

/// <summary>Why a sequence stopped growing.</summary>
public enum FinishReason
{
    /// <summary>It reached <see cref="GenerationConfig.MaxNewTokens"/> (or <see cref="GenerationConfig.MaxLength"/>).</summary>
    Length,

    /// <summary>It generated one of <see cref="GenerationConfig.EosTokenId"/> (the id is the last of its tokens).</summary>
    EndOfSequence,

    /// <summary>Its decoded text contained one of <see cref="GenerationConfig.StopStrings"/>.</summary>
    StopString,

    /// <summary>The generation was cancelled before the sequence finished otherwise.</summary>
    Cancelled,
}
