using System.Buffers;

namespace Rinna.Net.Tokenization.Fast;

/// <summary>An entry of <c>added_tokens</c> in <c>tokenizer.json</c>.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool SingleWord, bool LStrip, bool RStrip, bool Normalized);

/// <summary>A piece of input: plain text for the model, or an added token with the text it covers.</summary>
internal readonly record struct Piece(string Text, int? TokenId);

/// <summary>
/// Finds added tokens in text as Hugging Face <c>tokenizers</c> does: leftmost-longest over all contents, the
/// <c>single_word</c> check applied to each match (a rejected match is skipped, not retried shorter), and
/// <c>lstrip</c>/<c>rstrip</c> extending the match over neighbouring whitespace.
/// </summary>
internal sealed class AddedTokenMatcher
{
    private readonly Node root = new();
    private readonly SearchValues<char> firstChars;
    private readonly bool empty;

    public AddedTokenMatcher(IEnumerable<(string Pattern, AddedToken Token)> patterns)
    {
        var first = new HashSet<char>();
        foreach (var (pattern, token) in patterns)
        {
            if (pattern.Length == 0) continue;
            var node = root;
            foreach (var c in pattern)
            {
                node.Children ??= [];
                if (!node.Children.TryGetValue(c, out var child)) node.Children[c] = child = new Node();
                node = child;
            }

            // The first token listed wins when two contents coincide (after normalization).
            node.Token ??= token;
            first.Add(pattern[0]);
        }

        empty = first.Count == 0;
        firstChars = SearchValues.Create([.. first]);
    }

    /// <summary>Splits <paramref name="text"/> into added tokens and the text between them (empty pieces omitted).</summary>
    /// <param name="text">The text.</param>
    /// <param name="output">Receives the pieces.</param>
    /// <param name="work">Counts the characters examined, for the linear-time check.</param>
    public void Split(string text, List<Piece> output, ref long work)
    {
        if (empty)
        {
            if (text.Length > 0) output.Add(new Piece(text, null));
            return;
        }

        var emitted = 0;
        var position = 0;
        while (position < text.Length)
        {
            var next = text.AsSpan(position).IndexOfAny(firstChars);
            work += next < 0 ? text.Length - position : next + 1;
            if (next < 0) break;
            var start = position + next;
            var (token, end) = LongestAt(text, start, ref work);
            if (token is null)
            {
                position = start + 1;
                continue;
            }

            position = end;
            if (start < emitted) continue; // inside whitespace a previous rstrip took
            if (token.SingleWord
                && ((start > 0 && UnicodeClasses.IsWordCharacter(UnicodeClasses.Before(text, start)))
                    || (end < text.Length && UnicodeClasses.IsWordCharacter(UnicodeClasses.At(text, end)))))
                continue;

            if (token.LStrip)
            {
                var newStart = start;
                while (newStart > emitted && UnicodeClasses.IsWhiteSpace(UnicodeClasses.Before(text, newStart)))
                    newStart -= UnicodeClasses.Before(text, newStart).Utf16SequenceLength;
                work += start - newStart;
                start = newStart;
            }

            if (token.RStrip)
            {
                var newEnd = end;
                while (newEnd < text.Length && UnicodeClasses.IsWhiteSpace(UnicodeClasses.At(text, newEnd)))
                    newEnd += UnicodeClasses.At(text, newEnd).Utf16SequenceLength;
                work += newEnd - end;
                end = newEnd;
            }

            if (emitted < start) output.Add(new Piece(text[emitted..start], null));
            output.Add(new Piece(text[start..end], token.Id));
            emitted = end;
            position = Math.Max(position, end);
        }

        if (emitted < text.Length) output.Add(new Piece(text[emitted..], null));
    }

    private (AddedToken? Token, int End) LongestAt(string text, int start, ref long work)
    {
        AddedToken? best = null;
        var bestEnd = start;
        var node = root;
        for (var i = start; i < text.Length && node.Children is not null && node.Children.TryGetValue(text[i], out node); i++)
        {
            work++;
            if (node.Token is null) continue;
            // A match must not end inside a surrogate pair (Rust matches on whole characters).
            if (i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) && char.IsHighSurrogate(text[i])) continue;
            best = node.Token;
            bestEnd = i + 1;
        }

        return (best, bestEnd);
    }

    private sealed class Node
    {
        public Dictionary<char, Node>? Children;
        public AddedToken? Token;
    }
}
