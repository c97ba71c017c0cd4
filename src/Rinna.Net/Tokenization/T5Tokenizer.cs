using Rinna.Net.Tokenization.SentencePiece;

namespace Rinna.Net.Tokenization;

/// <summary>
/// Hugging Face's slow <c>T5Tokenizer</c> (<c>legacy=True</c>), the class rinna's GPT-NeoX models name in
/// <c>tokenizer_config.json</c>. <see cref="PreTrainedTokenizer.Encode"/> with special tokens appends
/// <c>&lt;/s&gt;</c> (unless the ids already end with it); decoding strips the result and, by default, cleans up
/// spaces before punctuation.
/// </summary>
public sealed class T5Tokenizer : SlowSentencePieceTokenizer
{
    internal T5Tokenizer(SentencePieceModel model, SpecialTokens specialTokens, bool cleanUpTokenizationSpaces)
        : base(model, specialTokens, new DecodeRules(
            StripAllLeadingSpaceSymbolsOfFirstToken: true,
            SpaceBeforeLeadingSpecial: true,
            StripResult: true,
            CleanUpTokenizationSpaces: cleanUpTokenizationSpaces))
    {
    }

    private protected override int[] BuildInputsWithSpecialTokens(List<int> ids)
    {
        if (EosTokenId is not { } eos || (ids.Count > 0 && ids[^1] == eos)) return [.. ids];
        return [.. ids, eos];
    }
}
