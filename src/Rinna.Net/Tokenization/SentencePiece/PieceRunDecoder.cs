using System.Text;

namespace Rinna.Net.Tokenization.SentencePiece;

/// <summary>
/// SentencePiece's <c>DecodePieces</c> fed one piece at a time: byte pieces are joined into UTF-8 characters
/// (one U+FFFD per invalid byte, as SentencePiece does), control pieces vanish, the unknown piece becomes the model's
/// unknown surface, U+2581 becomes a space, and models with a dummy prefix lose the first piece's leading U+2581.
/// </summary>
/// <remarks>
/// Text is appended to <see cref="Output"/> as soon as it is final: a character split over byte pieces appears only
/// once its last byte arrived (or once the run ends and the bytes prove invalid). SentencePiece decides each
/// character from at most four bytes, so deciding as soon as those bytes are present gives the same text as
/// decoding the whole run at once.
/// </remarks>
internal sealed class PieceRunDecoder
{
    private const char SpaceSymbol = '\u2581';
    private readonly SentencePieceModel model;
    private readonly bool consumesLeadingSpace;
    private readonly List<byte> pendingBytes = new(4);
    private readonly int runStart;
    private bool atStart = true;
    private bool leadingSpaceConsumed;

    public PieceRunDecoder(SentencePieceModel model, StringBuilder output)
    {
        this.model = model;
        Output = output;
        consumesLeadingSpace = model.Proto.Normalizer.AddDummyPrefix || model.Proto.Normalizer.RemoveExtraWhitespaces;
        runStart = output.Length;
    }

    public StringBuilder Output { get; }

    /// <summary>Appends a piece whose id is known; <paramref name="piece"/> must be what <c>PieceToId</c> maps to <paramref name="id"/>.</summary>
    public void Append(int id, string piece)
    {
        if (model.TypeOf(id) == SentencePieceType.Byte)
        {
            pendingBytes.Add(ByteValue(id));
            DecodePendingBytes(runEnded: false);
            return;
        }

        DecodePendingBytes(runEnded: true);
        if (leadingSpaceConsumed || Output.Length > runStart) atStart = false;
        leadingSpaceConsumed = false;

        switch (model.TypeOf(id))
        {
            case SentencePieceType.Control:
                return;
            case SentencePieceType.Unknown:
                Output.Append(model.IdToPiece(id) == piece ? model.Proto.UnknownSurface : piece);
                return;
        }

        var text = piece.AsSpan();
        if (atStart && consumesLeadingSpace && text.Length > 0 && text[0] == SpaceSymbol)
        {
            text = text[1..];
            leadingSpaceConsumed = !model.Proto.Normalizer.RemoveExtraWhitespaces;
        }

        int space;
        while ((space = text.IndexOf(SpaceSymbol)) >= 0)
        {
            Output.Append(text[..space]).Append(' ');
            text = text[(space + 1)..];
        }

        Output.Append(text);
    }

    /// <summary>Ends the run: bytes still waiting for the rest of their character are decoded as they are.</summary>
    public void Finish() => DecodePendingBytes(runEnded: true);

    private byte ByteValue(int id)
    {
        var piece = model.IdToPiece(id);
        return (byte)((HexDigit(piece[3]) << 4) | HexDigit(piece[4]));
    }

    private static int HexDigit(char c) => c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;

    private void DecodePendingBytes(bool runEnded)
    {
        var consumedTotal = 0;
        Span<byte> window = stackalloc byte[4];
        while (consumedTotal < pendingBytes.Count)
        {
            var available = Math.Min(4, pendingBytes.Count - consumedTotal);
            if (!runEnded && available < Utf8Char.BytesNeededToDecide(pendingBytes[consumedTotal])) break;
            for (var i = 0; i < available; i++) window[i] = pendingBytes[consumedTotal + i];
            if (Utf8Char.TryDecode(window[..available], out var length))
            {
                Output.Append(Encoding.UTF8.GetString(window[..length]));
            }
            else
            {
                Output.Append('\uFFFD');
            }

            consumedTotal += length;
        }

        pendingBytes.RemoveRange(0, consumedTotal);
    }
}
