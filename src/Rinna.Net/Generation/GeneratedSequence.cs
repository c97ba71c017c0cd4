namespace Rinna.Net.Generation;

/// <summary>One row of a generation: what was generated after the prompt, and why it stopped.</summary>
/// <param name="TokenIds">
/// The generated ids, without the prompt and without the padding of a finished row. Like Hugging Face's output they
/// include the end-of-sequence id and the tokens that spell a stop string.
/// </param>
/// <param name="FinishReason">Why the row stopped.</param>
/// <param name="Text">
/// The decoded text when a decode function was given, else <c>null</c>: the end-of-sequence token is not decoded, and
/// the text ends before the stop string.
/// </param>
/// <param name="StopString">The stop string that finished the row, if <paramref name="FinishReason"/> is <see cref="Rinna.Net.Generation.FinishReason.StopString"/>.</param>
public sealed record GeneratedSequence(IReadOnlyList<int> TokenIds, FinishReason FinishReason, string? Text, string? StopString);
