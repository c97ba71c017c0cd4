using System.Buffers;
using System.Buffers.Binary;

namespace Rinna.Net.Tokenization.SentencePiece;

/// <summary>
/// SentencePiece's normalizer (<c>normalizer.cc</c>): user-defined symbols pass through untouched, everything else is
/// rewritten by the model's precompiled character map (longest match), whitespace is escaped to U+2581 and the dummy
/// prefix / extra-whitespace options of the <c>normalizer_spec</c> are applied.
/// </summary>
/// <remarks>
/// Microsoft.ML.Tokenizers 2.0.1 applies the same character map but keeps characters whose replacement is empty
/// (nmt_nfkc deletes U+0007, U+000B, U+001B, U+007F, ...) and normalizes user-defined symbols (<c>\n</c>, <c>\t</c>)
/// before matching them; this class follows SentencePiece on both.
/// </remarks>
internal sealed class SentencePieceTextNormalizer
{
    private static ReadOnlySpan<byte> SpaceSymbol => [0xE2, 0x96, 0x81];

    private readonly NormalizerSpec spec;
    private readonly bool treatWhitespaceAsSuffix;
    private readonly ByteTrie? userDefinedSymbols;
    private readonly uint[] trieUnits;
    private readonly byte[] replacements;

    /// <exception cref="FormatException">The precompiled character map is malformed.</exception>
    public SentencePieceTextNormalizer(NormalizerSpec spec, bool treatWhitespaceAsSuffix, ByteTrie? userDefinedSymbols)
    {
        this.spec = spec;
        this.treatWhitespaceAsSuffix = treatWhitespaceAsSuffix;
        this.userDefinedSymbols = userDefinedSymbols;
        (trieUnits, replacements) = DecodeCharsMap(spec.PrecompiledCharsMap);
    }

    /// <summary>Normalizes UTF-8 <paramref name="input"/> and appends the result to <paramref name="output"/>.</summary>
    public void Normalize(ReadOnlySpan<byte> input, ArrayBufferWriter<byte> output)
    {
        if (input.IsEmpty) return;

        if (spec.RemoveExtraWhitespaces)
        {
            while (!input.IsEmpty)
            {
                var replacement = NormalizePrefix(input, out var consumed);
                if (!replacement.SequenceEqual(" "u8)) break;
                input = input[consumed..];
            }

            if (input.IsEmpty) return;
        }

        if (!treatWhitespaceAsSuffix && spec.AddDummyPrefix) AppendSpace(output);

        var previousWasSpace = spec.RemoveExtraWhitespaces;
        while (!input.IsEmpty)
        {
            var replacement = NormalizePrefix(input, out var consumed);
            while (previousWasSpace && replacement.Length > 0 && replacement[0] == (byte)' ') replacement = replacement[1..];
            if (!replacement.IsEmpty)
            {
                WriteEscaped(replacement, output);

                previousWasSpace = replacement[^1] == (byte)' ';
            }

            input = input[consumed..];
            if (!spec.RemoveExtraWhitespaces) previousWasSpace = false;
        }

        if (spec.RemoveExtraWhitespaces) TrimTrailingSpaces(output);

        if (treatWhitespaceAsSuffix && spec.AddDummyPrefix) AppendSpace(output);
    }

    private void WriteEscaped(ReadOnlySpan<byte> text, ArrayBufferWriter<byte> output)
    {
        if (!spec.EscapeWhitespaces)
        {
            output.Write(text);
            return;
        }

        int space;
        while ((space = text.IndexOf((byte)' ')) >= 0)
        {
            output.Write(text[..space]);
            output.Write(SpaceSymbol);
            text = text[(space + 1)..];
        }

        output.Write(text);
    }

    private void AppendSpace(ArrayBufferWriter<byte> output)
    {
        if (spec.EscapeWhitespaces) output.Write(SpaceSymbol);
        else output.Write(" "u8);
    }

    private void TrimTrailingSpaces(ArrayBufferWriter<byte> output)
    {
        var space = spec.EscapeWhitespaces ? SpaceSymbol : " "u8;
        var written = output.WrittenSpan;
        var end = written.Length;
        while (end >= space.Length && written[(end - space.Length)..end].SequenceEqual(space)) end -= space.Length;
        if (end == written.Length) return;
        var kept = written[..end].ToArray();
        output.Clear();
        output.Write(kept);
    }

    /// <summary>The normalized form of the longest rule matching the start of <paramref name="input"/>, and how many input bytes it consumes.</summary>
    private ReadOnlySpan<byte> NormalizePrefix(ReadOnlySpan<byte> input, out int consumed)
    {
        if (userDefinedSymbols is not null)
        {
            consumed = userDefinedSymbols.LongestPrefixLength(input);
            if (consumed > 0) return input[..consumed];
        }

        var (matchLength, replacementOffset) = LongestCharsMapMatch(input);
        if (matchLength > 0)
        {
            consumed = matchLength;
            var rest = replacements.AsSpan(replacementOffset);
            var terminator = rest.IndexOf((byte)0);
            return terminator < 0 ? rest : rest[..terminator];
        }

        if (Utf8Char.TryDecode(input, out consumed)) return input[..consumed];
        return Utf8Char.ReplacementCharacter;
    }

    /// <summary>Darts-clone double-array common-prefix search, keeping the longest hit.</summary>
    private (int Length, int Value) LongestCharsMapMatch(ReadOnlySpan<byte> input)
    {
        if (trieUnits.Length == 0) return (0, 0);
        int longestLength = 0, longestValue = 0;
        var units = trieUnits;
        var nodePos = Offset(units[0]);
        for (var i = 0; i < input.Length; i++)
        {
            nodePos ^= input[i];
            if (nodePos >= (uint)units.Length) break;
            var unit = units[nodePos];
            if (Label(unit) != input[i]) break;
            nodePos ^= Offset(unit);
            if (nodePos >= (uint)units.Length) break;
            if (HasLeaf(unit))
            {
                longestLength = i + 1;
                longestValue = (int)Value(units[nodePos]);
            }
        }

        if (longestLength > 0 && longestValue >= replacements.Length) return (0, 0);
        return (longestLength, longestValue);
    }

    private static bool HasLeaf(uint unit) => ((unit >> 8) & 1) == 1;

    private static uint Value(uint unit) => unit & ((1u << 31) - 1);

    private static uint Label(uint unit) => unit & ((1u << 31) | 0xFF);

    private static uint Offset(uint unit) => (unit >> 10) << (int)((unit & (1u << 9)) >> 6);

    /// <summary>Splits the blob <c>[trie size: uint32 LE][double-array units][NUL-separated replacements]</c>.</summary>
    private static (uint[] Units, byte[] Replacements) DecodeCharsMap(byte[] blob)
    {
        if (blob.Length == 0) return ([], []);
        if (blob.Length <= 4) throw new FormatException("normalizer_spec.precompiled_charsmap is truncated");
        var trieSize = BinaryPrimitives.ReadUInt32LittleEndian(blob);
        if (trieSize > (uint)(blob.Length - 4) || trieSize % 4 != 0 || trieSize == 0)
            throw new FormatException($"normalizer_spec.precompiled_charsmap declares a trie of {trieSize} bytes in a blob of {blob.Length}");
        var units = new uint[trieSize / 4];
        for (var i = 0; i < units.Length; i++) units[i] = BinaryPrimitives.ReadUInt32LittleEndian(blob.AsSpan(4 + i * 4));
        return (units, blob.AsSpan(4 + (int)trieSize).ToArray());
    }
}
