namespace Rinna.Net.Tokenization;

/// <summary>
/// Decodes ids one at a time, as a model generates them, returning only text that is final.
/// </summary>
/// <remarks>
/// The concatenation of everything <see cref="Append"/> and <see cref="Flush"/> return equals
/// <see cref="PreTrainedTokenizer.Decode"/> of all ids. Text is held back while it can still change: the bytes of a
/// character split over byte-fallback ids, trailing whitespace that the final strip may remove, a space that
/// clean-up may delete, and (when special tokens are kept) text after a special token, before which Hugging Face
/// inserts a space only if another special token follows.
/// </remarks>
public abstract class StreamingDecoder
{
    /// <summary>Adds one id; returns the text that became final (often empty).</summary>
    /// <exception cref="TokenizerException">The id is outside the vocabulary.</exception>
    public abstract string Append(int id);

    /// <summary>Ends the sequence and returns the text still held back; the decoder is then ready for a new sequence.</summary>
    public abstract string Flush();
}
