using Rinna.Net.Tokenization;

namespace Rinna.Net.Generation;

/// <summary>
/// Turns a growing list of token ids into a stream of text pieces with any whole-sequence decode function: each token
/// re-decodes the sequence and yields what was added. A trailing U+FFFD is held back, because with byte-fallback
/// vocabularies it usually means a character whose remaining UTF-8 bytes are still to come.
/// </summary>
internal sealed class DecodedTextStream(Func<int[], string> decode) : StreamingDecoder
{
    private const char ReplacementCharacter = '\uFFFD';
    private readonly List<int> ids = [];
    private string emitted = "";

    /// <summary>Adds a token and returns the new text it completes (often empty).</summary>
    public override string Append(int tokenId)
    {
        ids.Add(tokenId);
        return Release(Decode().TrimEnd(ReplacementCharacter));
    }

    /// <summary>Returns the text not yet released, replacement characters included, and starts a new sequence.</summary>
    public override string Flush()
    {
        var rest = Release(Decode());
        ids.Clear();
        emitted = "";
        return rest;
    }

    private string Decode() => decode(ids.ToArray()) ?? throw new InvalidOperationException("The decode function returned null.");

    private string Release(string text)
    {
        // A decoder may rewrite text it already produced (whitespace clean-up, for instance). Released text cannot be
        // taken back, so only what lies beyond the released length is new.
        if (text.Length <= emitted.Length) return "";
        var piece = text[emitted.Length..];
        emitted = text;
        return piece;
    }
}
