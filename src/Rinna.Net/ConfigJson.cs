using System.Text.Json;
using System.Text.Json.Nodes;

namespace Rinna.Net;

/// <summary>Reads a Hugging Face configuration file (<c>config.json</c>, <c>generation_config.json</c>) into a JSON object, or fails with a <see cref="ModelConfigException"/> naming the file.</summary>
internal static class ConfigJson
{
    public static string ReadText(string path)
    {
        try
        {
            return BoundedFile.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ModelConfigException(path, null, $"cannot read the file ({ex.Message}).", ex);
        }
    }

    public static JsonObject ParseObject(string json, string? sourceName)
    {
        JsonObject root;
        try
        {
            // Duplicate keys are refused: Python keeps the last one silently, and two readers disagreeing on a value is how
            // a reviewed file ends up meaning something else.
            root = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { MaxDepth = 64, AllowDuplicateProperties = false }) as JsonObject
                ?? throw new ModelConfigException(sourceName, null, "the top level must be a JSON object.");
        }
        catch (JsonException ex)
        {
            throw new ModelConfigException(sourceName, null, $"not valid JSON ({ex.Message}).", ex);
        }
        if (JsonStrings.FindUnreadable(root) is { } unreadable)
            throw new ModelConfigException(sourceName, null, $"{unreadable} is not valid Unicode text (an escaped lone surrogate).");
        return root;
    }
}
