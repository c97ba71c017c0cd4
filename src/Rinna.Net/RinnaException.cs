namespace Rinna.Net;

/// <summary>Base type of every exception Rinna.Net throws for bad input files, configuration or remote errors.</summary>
/// <remarks>Argument validation of API calls uses the standard <see cref="ArgumentException"/> family instead.</remarks>
public class RinnaException : Exception
{
    /// <summary>
    /// The longest message kept: messages quote names from the files (tensors, pieces, fields), and a hostile file's
    /// names may be megabytes long; the rest is cut and counted.
    /// </summary>
    public const int MaxMessageLength = 4096;

    /// <summary>Creates the exception with a message.</summary>
    public RinnaException(string message) : base(Bound(message)) { }

    /// <summary>Creates the exception with a message and the exception that caused it.</summary>
    public RinnaException(string message, Exception? innerException) : base(Bound(message), innerException) { }

    private static string Bound(string message)
    {
        if (message is null || message.Length <= MaxMessageLength) return message!;
        int kept = MaxMessageLength - 64;
        if (char.IsHighSurrogate(message[kept - 1])) kept--;
        return $"{message[..kept]}… ({message.Length - kept} more characters cut)";
    }
}

/// <summary>A configuration file (<c>config.json</c>, <c>generation_config.json</c>, ...) is missing, unreadable or holds an invalid value.</summary>
public class ModelConfigException : RinnaException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="file">The file that was read, or <c>null</c> when the configuration came from code.</param>
    /// <param name="field">The JSON field at fault, or <c>null</c> when the file as a whole is bad.</param>
    /// <param name="message">What is wrong.</param>
    /// <param name="innerException">The underlying parse error, if any.</param>
    public ModelConfigException(string? file, string? field, string message, Exception? innerException = null)
        : base(Compose(file, field, message), innerException)
    {
        File = file;
        Field = field;
    }

    /// <summary>The file that was read, or <c>null</c> when the configuration came from code.</summary>
    public string? File { get; }

    /// <summary>The JSON field at fault, or <c>null</c> when the file as a whole is bad.</summary>
    public string? Field { get; }

    private static string Compose(string? file, string? field, string message)
    {
        var where = (file, field) switch
        {
            (null, null) => "",
            (null, _) => $"'{field}': ",
            (_, null) => $"{file}: ",
            _ => $"{file}: '{field}': ",
        };
        return where + message;
    }
}

/// <summary>A weights file (safetensors, shard index, <c>pytorch_model.bin</c>) is corrupt, truncated, unsafe or does not match the model.</summary>
public class CheckpointException : RinnaException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="file">The weights file at fault.</param>
    /// <param name="message">What is wrong, naming the tensor where one is concerned.</param>
    /// <param name="innerException">The underlying error, if any.</param>
    public CheckpointException(string file, string message, Exception? innerException = null)
        : base($"{file}: {message}", innerException)
    {
        File = file;
    }

    /// <summary>The weights file at fault.</summary>
    public string File { get; }
}
