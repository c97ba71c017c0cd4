namespace Rinna.Net.Tokenization.SentencePiece;

/// <summary>UTF-8 helpers with SentencePiece's exact rules (<c>string_util::OneCharLen</c> and <c>DecodeUTF8</c>).</summary>
internal static class Utf8Char
{
    /// <summary>The UTF-8 encoding of U+FFFD, which SentencePiece substitutes for each invalid byte.</summary>
    public static ReadOnlySpan<byte> ReplacementCharacter => [0xEF, 0xBF, 0xBD];

    /// <summary>Length of the character starting with <paramref name="lead"/>, judged from the lead byte alone.</summary>
    public static int LengthFromLeadByte(byte lead) => (lead >> 4) switch
    {
        < 0xC => 1,
        0xC or 0xD => 2,
        0xE => 3,
        _ => 4,
    };

    /// <summary>
    /// Decodes the first character of <paramref name="bytes"/>. Returns false for a structurally invalid sequence
    /// (bad trail byte, overlong form, surrogate, above U+10FFFF, or truncated), in which case <paramref name="length"/> is 1.
    /// </summary>
    public static bool TryDecode(ReadOnlySpan<byte> bytes, out int length)
    {
        length = 1;
        var b0 = bytes[0];
        if (b0 < 0x80) return true;
        int cp;
        if (bytes.Length >= 2 && (b0 & 0xE0) == 0xC0)
        {
            cp = ((b0 & 0x1F) << 6) | (bytes[1] & 0x3F);
            if (IsTrail(bytes[1]) && cp >= 0x80 && IsValidCodePoint(cp)) { length = 2; return true; }
        }
        else if (bytes.Length >= 3 && (b0 & 0xF0) == 0xE0)
        {
            cp = ((b0 & 0x0F) << 12) | ((bytes[1] & 0x3F) << 6) | (bytes[2] & 0x3F);
            if (IsTrail(bytes[1]) && IsTrail(bytes[2]) && cp >= 0x800 && IsValidCodePoint(cp)) { length = 3; return true; }
        }
        else if (bytes.Length >= 4 && (b0 & 0xF8) == 0xF0)
        {
            cp = ((b0 & 0x07) << 18) | ((bytes[1] & 0x3F) << 12) | ((bytes[2] & 0x3F) << 6) | (bytes[3] & 0x3F);
            if (IsTrail(bytes[1]) && IsTrail(bytes[2]) && IsTrail(bytes[3]) && cp >= 0x10000 && IsValidCodePoint(cp)) { length = 4; return true; }
        }

        return false;
    }

    /// <summary>
    /// How many bytes <see cref="TryDecode"/> may look at for a sequence starting with <paramref name="lead"/>;
    /// a streaming decoder waits for that many before deciding.
    /// </summary>
    public static int BytesNeededToDecide(byte lead) => lead switch
    {
        < 0xC0 => 1,
        < 0xE0 => 2,
        < 0xF0 => 3,
        < 0xF8 => 4,
        _ => 1,
    };

    private static bool IsTrail(byte b) => (b & 0xC0) == 0x80;

    private static bool IsValidCodePoint(int cp) => cp < 0xD800 || (cp >= 0xE000 && cp <= 0x10FFFF);
}
