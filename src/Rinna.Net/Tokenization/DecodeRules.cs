namespace Rinna.Net.Tokenization;

/// <summary>
/// How a slow Hugging Face tokenizer turns tokens back into text (<c>convert_tokens_to_string</c> and <c>_decode</c>
/// of transformers 4.36), which differs between <c>T5Tokenizer</c> and <c>LlamaTokenizer</c>.
/// </summary>
/// <param name="StripAllLeadingSpaceSymbolsOfFirstToken">T5: <c>tokens[0].lstrip("▁")</c>; LLaMA: only one leading <c>▁</c> is removed.</param>
/// <param name="SpaceBeforeLeadingSpecial">T5 inserts a space before a group of special tokens even at index 0; LLaMA does not.</param>
/// <param name="StripResult">T5 applies Python's <c>str.strip()</c> to the result.</param>
/// <param name="CleanUpTokenizationSpaces"><c>clean_up_tokenization_spaces</c>: remove the space before <c>. ? ! ,</c> and English contractions.</param>
internal sealed record DecodeRules(
    bool StripAllLeadingSpaceSymbolsOfFirstToken,
    bool SpaceBeforeLeadingSpecial,
    bool StripResult,
    bool CleanUpTokenizationSpaces)
{
    private const char SpaceSymbol = '\u2581';

    /// <summary>The first token with its leading U+2581 removed as the tokenizer class does.</summary>
    public string StripFirstToken(string token)
    {
        if (StripAllLeadingSpaceSymbolsOfFirstToken) return token.TrimStart(SpaceSymbol);
        return token.Length > 0 && token[0] == SpaceSymbol ? token[1..] : token;
    }

    /// <summary>Python's <c>str.isspace</c> for one UTF-16 unit (no whitespace lies outside the BMP).</summary>
    public static bool IsPythonWhitespace(char c) =>
        c is (>= '\t' and <= '\r') or (>= '\x1c' and <= ' ') or '\x85' or '\xa0' or '\u1680'
            or (>= '\u2000' and <= '\u200a') or '\u2028' or '\u2029' or '\u202f' or '\u205f' or '\u3000';

    /// <summary>Python's <c>str.strip()</c>.</summary>
    public static string StripPython(string text)
    {
        int start = 0, end = text.Length;
        while (start < end && IsPythonWhitespace(text[start])) start++;
        while (end > start && IsPythonWhitespace(text[end - 1])) end--;
        return text[start..end];
    }

    /// <summary>Python's <c>str.rstrip()</c>.</summary>
    public static string TrimEndPython(string text)
    {
        var end = text.Length;
        while (end > 0 && IsPythonWhitespace(text[end - 1])) end--;
        return text[..end];
    }

    /// <summary>transformers' <c>clean_up_tokenization</c>: the same sequence of whole-string replacements.</summary>
    public static string CleanUp(string text) => text
        .Replace(" .", ".", StringComparison.Ordinal)
        .Replace(" ?", "?", StringComparison.Ordinal)
        .Replace(" !", "!", StringComparison.Ordinal)
        .Replace(" ,", ",", StringComparison.Ordinal)
        .Replace(" ' ", "'", StringComparison.Ordinal)
        .Replace(" n't", "n't", StringComparison.Ordinal)
        .Replace(" 'm", "'m", StringComparison.Ordinal)
        .Replace(" 's", "'s", StringComparison.Ordinal)
        .Replace(" 've", "'ve", StringComparison.Ordinal)
        .Replace(" 're", "'re", StringComparison.Ordinal);

    /// <summary>Applies <see cref="StripResult"/> and <see cref="CleanUpTokenizationSpaces"/> to a whole decoded string.</summary>
    public string Finish(string text)
    {
        if (StripResult) text = StripPython(text);
        return CleanUpTokenizationSpaces ? CleanUp(text) : text;
    }

    /// <summary>True when text is final once it is followed by more text (no end strip or clean-up to wait for).</summary>
    public bool EmitsImmediately => !StripResult && !CleanUpTokenizationSpaces;

    /// <summary>
    /// True when a string may be cut right after <paramref name="c"/> without changing what <see cref="Finish"/> does:
    /// <paramref name="c"/> is never stripped, is not a high surrogate, and (with clean-up) occurs in no clean-up
    /// pattern; since clean-up only deletes spaces, such a character stays and no pattern can span it.
    /// </summary>
    public bool IsSafeCutAfter(char c)
    {
        if (char.IsHighSurrogate(c)) return false;
        if (StripResult && IsPythonWhitespace(c)) return false;
        return !CleanUpTokenizationSpaces || c is not (' ' or '.' or '?' or '!' or ',' or '\'' or 'n' or 't' or 'm' or 's' or 'v' or 'e' or 'r');
    }
}
