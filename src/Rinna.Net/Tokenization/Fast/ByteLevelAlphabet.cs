namespace Rinna.Net.Tokenization.Fast;

/// <summary>
/// GPT-2's reversible byte-to-character map (<c>bytes_to_unicode</c>): printable Latin-1 bytes map to themselves, the
/// other 68 bytes to U+0100 onwards in byte order, so every byte is one visible BMP character.
/// </summary>
internal static class ByteLevelAlphabet
{
    private static readonly char[] CharByByte = BuildCharByByte();
    private static readonly short[] ByteByChar = BuildByteByChar();

    /// <summary>The character standing for <paramref name="value"/>.</summary>
    public static char ToChar(byte value) => CharByByte[value];

    /// <summary>The byte <paramref name="c"/> stands for, or -1 when <paramref name="c"/> is not in the alphabet.</summary>
    public static int ToByte(char c) => c < ByteByChar.Length ? ByteByChar[c] : -1;

    /// <summary>Appends the UTF-8 bytes of <paramref name="text"/> as alphabet characters.</summary>
    public static void Map(ReadOnlySpan<char> text, System.Text.StringBuilder output)
    {
        Span<byte> buffer = stackalloc byte[4];
        foreach (var rune in text.EnumerateRunes())
        {
            var length = rune.EncodeToUtf8(buffer);
            for (var i = 0; i < length; i++) output.Append(CharByByte[buffer[i]]);
        }
    }

    /// <summary>
    /// Appends the bytes a token stands for, as the ByteLevel decoder does: each character's byte when every character
    /// is in the alphabet, otherwise the token's own UTF-8 (added tokens such as <c>"  "</c> or <c>&lt;|endoftext|&gt;</c>).
    /// </summary>
    public static void AppendBytes(string token, List<byte> output)
    {
        foreach (var c in token)
        {
            if (ToByte(c) < 0)
            {
                output.AddRange(System.Text.Encoding.UTF8.GetBytes(token));
                return;
            }
        }

        foreach (var c in token) output.Add((byte)ToByte(c));
    }

    private static bool IsPrintable(int b) => b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;

    private static char[] BuildCharByByte()
    {
        var map = new char[256];
        var next = 256;
        for (var b = 0; b < 256; b++) map[b] = IsPrintable(b) ? (char)b : (char)next++;
        return map;
    }

    private static short[] BuildByteByChar()
    {
        var map = new short[256 + 68];
        Array.Fill(map, (short)-1);
        for (var b = 0; b < 256; b++) map[CharByByte[b]] = (short)b;
        return map;
    }
}
