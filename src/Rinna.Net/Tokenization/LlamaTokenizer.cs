using Rinna.Net.Tokenization.SentencePiece;

namespace Rinna.Net.Tokenization;

/// <summary>
/// Hugging Face's slow <c>LlamaTokenizer</c> (<c>legacy=True</c>): SentencePiece with a dummy prefix per chunk,
/// <c>&lt;s&gt;</c> prepended when <c>add_bos_token</c> is set, <c>&lt;/s&gt;</c> appended when <c>add_eos_token</c> is set.
/// </summary>
public sealed class LlamaTokenizer : SlowSentencePieceTokenizer
{
    internal LlamaTokenizer(SentencePieceModel model, SpecialTokens specialTokens, bool cleanUpTokenizationSpaces, bool addBosToken, bool addEosToken)
        : base(model, specialTokens, new DecodeRules(
            StripAllLeadingSpaceSymbolsOfFirstToken: false,
            SpaceBeforeLeadingSpecial: false,
            StripResult: false,
            CleanUpTokenizationSpaces: cleanUpTokenizationSpaces))
    {
        AddBosToken = addBosToken;
        AddEosToken = addEosToken;
    }

    /// <summary>Whether encoding with special tokens prepends <see cref="PreTrainedTokenizer.BosToken"/> (<c>add_bos_token</c>).</summary>
    public bool AddBosToken { get; }

    /// <summary>Whether encoding with special tokens appends <see cref="PreTrainedTokenizer.EosToken"/> (<c>add_eos_token</c>).</summary>
    public bool AddEosToken { get; }

    private protected override int[] BuildInputsWithSpecialTokens(List<int> ids)
    {
        var result = new List<int>(ids.Count + 2);
        if (AddBosToken && BosTokenId is { } bos) result.Add(bos);
        result.AddRange(ids);
        if (AddEosToken && EosTokenId is { } eos) result.Add(eos);
        return [.. result];
    }
}
