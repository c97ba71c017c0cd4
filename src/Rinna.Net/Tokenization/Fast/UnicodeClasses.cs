using System.Globalization;
using System.Text;

namespace Rinna.Net.Tokenization.Fast;

/// <summary>The Unicode character classes the Rust <c>tokenizers</c> regexes use (<c>\s</c>, <c>\w</c>, <c>\p{L}</c>, <c>\p{N}</c>), on code points.</summary>
internal static class UnicodeClasses
{
    /// <summary>The White_Space property (what <c>\s</c> matches in Oniguruma and the Rust regex crate).</summary>
    public static bool IsWhiteSpace(Rune r) => r.Value is (>= 0x09 and <= 0x0D) or 0x20 or 0x85 or 0xA0 or 0x1680
        or (>= 0x2000 and <= 0x200A) or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000;

    public static bool IsLetter(Rune r) => Rune.GetUnicodeCategory(r) is UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter
        or UnicodeCategory.TitlecaseLetter or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter;

    public static bool IsNumber(Rune r) => Rune.GetUnicodeCategory(r) is UnicodeCategory.DecimalDigitNumber
        or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber;

    /// <summary>Unicode <c>\w</c>: letters, marks, decimal digits, letter numbers, connector punctuation, joiners.</summary>
    public static bool IsWordCharacter(Rune r) => r.Value is 0x200C or 0x200D || IsLetter(r) || Rune.GetUnicodeCategory(r) is
        UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark
        or UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.ConnectorPunctuation;

    /// <summary>The code point starting at <paramref name="index"/> (strings reaching here hold no lone surrogates).</summary>
    public static Rune At(string text, int index) => Rune.GetRuneAt(text, index);

    /// <inheritdoc cref="At(string, int)"/>
    public static Rune At(ReadOnlySpan<char> text, int index)
    {
        Rune.DecodeFromUtf16(text[index..], out var rune, out _);
        return rune;
    }

    /// <summary>The code point ending just before <paramref name="end"/>.</summary>
    public static Rune Before(string text, int end)
    {
        Rune.DecodeLastFromUtf16(text.AsSpan(0, end), out var rune, out _);
        return rune;
    }
}
