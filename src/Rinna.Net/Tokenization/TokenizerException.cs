namespace Rinna.Net.Tokenization;

/// <summary>
/// A tokenizer file (<c>spiece.model</c>, <c>tokenizer_config.json</c>, <c>special_tokens_map.json</c>,
/// <c>tokenizer.json</c>) is missing, corrupt or inconsistent, or a token id lies outside the vocabulary.
/// </summary>
public class TokenizerException : RinnaException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="file">The file at fault, or <c>null</c> when the problem is not tied to a file (e.g. an id passed to <c>Decode</c>).</param>
    /// <param name="field">The field or entry at fault, or <c>null</c> when the file as a whole is bad.</param>
    /// <param name="message">What is wrong, naming the offending value.</param>
    /// <param name="innerException">The underlying parse or I/O error, if any.</param>
    public TokenizerException(string? file, string? field, string message, Exception? innerException = null)
        : base(Compose(file, field, message), innerException)
    {
        File = file;
        Field = field;
    }

    /// <summary>The file at fault, or <c>null</c> when the problem is not tied to a file.</summary>
    public string? File { get; }

    /// <summary>The field or entry at fault, or <c>null</c> when the file as a whole is bad.</summary>
    public string? Field { get; }

    /// <summary>The file is well formed but names a component this library does not implement.</summary>
    internal bool IsUnsupported { get; init; }

    private static string Compose(string? file, string? field, string message) => (file, field) switch
    {
        (null, null) => message,
        (null, _) => $"'{field}': {message}",
        (_, null) => $"{file}: {message}",
        _ => $"{file}: '{field}': {message}",
    };
}
