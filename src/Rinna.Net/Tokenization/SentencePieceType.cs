namespace Rinna.Net.Tokenization;

/// <summary>The kind of a vocabulary entry, with SentencePiece's <c>ModelProto.SentencePiece.Type</c> numbers (read and written).</summary>
public enum SentencePieceType
{
    /// <summary>An ordinary piece chosen by training.</summary>
    Normal = 1,
    /// <summary>The unknown-token piece.</summary>
    Unknown = 2,
    /// <summary>A control symbol (<c>&lt;s&gt;</c>, <c>[PAD]</c>, ...): never produced from text, decoded to nothing.</summary>
    Control = 3,
    /// <summary>A piece always matched as a whole in the input, before any other piece.</summary>
    UserDefined = 4,
    /// <summary>A piece kept in the table but never used.</summary>
    Unused = 5,
    /// <summary>One of the 256 byte pieces <c>&lt;0x00&gt;</c>..<c>&lt;0xFF&gt;</c> used for byte fallback.</summary>
    Byte = 6,
}

/// <summary>One vocabulary entry: its text, its Unigram log-probability (0 for non-normal pieces) and its kind.</summary>
/// <param name="Piece">The piece's text; spaces appear as <c>▁</c> (U+2581).</param>
/// <param name="Score">The Unigram log-probability.</param>
/// <param name="Type">The kind of entry.</param>
public sealed record SentencePieceEntry(string Piece, float Score, SentencePieceType Type);
