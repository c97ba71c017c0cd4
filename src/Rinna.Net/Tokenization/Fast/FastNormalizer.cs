using System.Text;

namespace Rinna.Net.Tokenization.Fast;

/// <summary>A <c>normalizer</c> of <c>tokenizer.json</c>; applied to each stretch of text between added tokens.</summary>
internal abstract class FastNormalizer
{
    public abstract string Normalize(string text);

    /// <summary>NFC, NFD, NFKC or NFKD (the BCL's Unicode normalization).</summary>
    public sealed class UnicodeForm(NormalizationForm form) : FastNormalizer
    {
        public override string Normalize(string text) => text.IsNormalized(form) ? text : text.Normalize(form);
    }

    /// <summary><c>Lowercase</c>: Unicode lower case, character by character.</summary>
    public sealed class Lowercase : FastNormalizer
    {
        public override string Normalize(string text) => text.ToLowerInvariant();
    }

    /// <summary><c>Prepend</c>: a fixed string before non-empty text.</summary>
    public sealed class Prepend(string prefix) : FastNormalizer
    {
        public override string Normalize(string text) => text.Length == 0 ? text : prefix + text;
    }

    /// <summary><c>Replace</c> with a literal string pattern.</summary>
    public sealed class Replace(string pattern, string content) : FastNormalizer
    {
        public override string Normalize(string text) => pattern.Length == 0 ? text : text.Replace(pattern, content, StringComparison.Ordinal);
    }

    /// <summary><c>Strip</c>: removes White_Space at either end.</summary>
    public sealed class Strip(bool left, bool right) : FastNormalizer
    {
        public override string Normalize(string text)
        {
            int start = 0, end = text.Length;
            while (left && start < end && UnicodeClasses.IsWhiteSpace(UnicodeClasses.At(text, start))) start += UnicodeClasses.At(text, start).Utf16SequenceLength;
            while (right && end > start && UnicodeClasses.IsWhiteSpace(UnicodeClasses.Before(text, end))) end -= UnicodeClasses.Before(text, end).Utf16SequenceLength;
            return text[start..end];
        }
    }

    /// <summary><c>Sequence</c>: each normalizer in turn.</summary>
    public sealed class Sequence(IReadOnlyList<FastNormalizer> normalizers) : FastNormalizer
    {
        public override string Normalize(string text)
        {
            foreach (var normalizer in normalizers) text = normalizer.Normalize(text);
            return text;
        }
    }
}
