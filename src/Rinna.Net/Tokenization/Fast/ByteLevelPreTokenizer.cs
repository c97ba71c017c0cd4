using System.Text;

namespace Rinna.Net.Tokenization.Fast;

/// <summary>
/// The <c>ByteLevel</c> pre-tokenizer: optionally a leading space, then (with <c>use_regex</c>) GPT-2's split pattern
/// <c>'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+</c>. The words come out as
/// text; <see cref="BpeModel"/> writes them in <see cref="ByteLevelAlphabet"/> characters.
/// </summary>
/// <remarks>
/// The pattern is matched by hand on code points rather than with .NET's regex, whose classes see UTF-16 units: it
/// would class a supplementary-plane letter (𠮷) as two non-letters and split words differently from the Rust
/// library. Each alternative is a greedy run, so one left-to-right pass gives the same words in linear time.
/// </remarks>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex)
{
    public bool AddPrefixSpace { get; } = addPrefixSpace;

    public bool UseRegex { get; } = useRegex;

    /// <summary>The text the split applies to: <paramref name="text"/> with the prefix space when configured.</summary>
    public string Prepare(string text) => AddPrefixSpace && text.Length > 0 && text[0] != ' ' ? " " + text : text;

    /// <summary>Appends the words of <paramref name="text"/> to <paramref name="words"/>.</summary>
    public void Split(string text, List<string> words, ref long work)
    {
        if (text.Length == 0) return;
        text = Prepare(text);
        if (!UseRegex)
        {
            words.Add(text);
            work += text.Length;
            return;
        }

        var position = 0;
        while (position < text.Length)
        {
            var end = WordEnd(text, position);
            work += end - position;
            words.Add(text[position..end]);
            position = end;
        }
    }

    /// <summary>1 for <c>\p{L}</c>, 2 for <c>\p{N}</c>, 3 for whitespace, 0 for anything else.</summary>
    private static int ClassOf(Rune rune) =>
        UnicodeClasses.IsLetter(rune) ? 1 : UnicodeClasses.IsNumber(rune) ? 2 : UnicodeClasses.IsWhiteSpace(rune) ? 3 : 0;

    /// <summary>End of the word the GPT-2 pattern matches at <paramref name="start"/> (always past it).</summary>
    internal static int WordEnd(ReadOnlySpan<char> text, int start)
    {
        var c = text[start];
        if (c == '\'' && start + 1 < text.Length)
        {
            var rest = text[(start + 1)..];
            if (rest.StartsWith("re", StringComparison.Ordinal) || rest.StartsWith("ve", StringComparison.Ordinal) || rest.StartsWith("ll", StringComparison.Ordinal))
                return start + 3;
            if (rest[0] is 's' or 't' or 'm' or 'd') return start + 2;
        }

        var first = UnicodeClasses.At(text, start);
        var body = start;
        var bodyRune = first;
        if (c == ' ' && start + 1 < text.Length)
        {
            var next = UnicodeClasses.At(text, start + 1);
            if (!UnicodeClasses.IsWhiteSpace(next))
            {
                body = start + 1;
                bodyRune = next;
            }
        }

        if (body != start || !UnicodeClasses.IsWhiteSpace(first))
        {
            var wordClass = ClassOf(bodyRune);
            var end = body;
            while (end < text.Length)
            {
                // ASCII letters continue a letter word without a category lookup, the common case in English.
                if (wordClass == 1 && char.IsAsciiLetter(text[end]))
                {
                    end++;
                    continue;
                }

                var rune = UnicodeClasses.At(text, end);
                if (ClassOf(rune) != wordClass) break;
                end += rune.Utf16SequenceLength;
            }

            return end;
        }

        // A whitespace run: all of it at the end of the text; before other text, all but its last character (which
        // then leads the next word), unless it is a single character.
        var runEnd = start;
        var lastLength = 0;
        var count = 0;
        while (runEnd < text.Length)
        {
            var rune = UnicodeClasses.At(text, runEnd);
            if (!UnicodeClasses.IsWhiteSpace(rune)) break;
            lastLength = rune.Utf16SequenceLength;
            runEnd += lastLength;
            count++;
        }

        return runEnd == text.Length || count == 1 ? runEnd : runEnd - lastLength;
    }
}
