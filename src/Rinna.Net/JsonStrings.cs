using System.Text.Json;
using System.Text.Json.Nodes;

namespace Rinna.Net;

/// <summary>
/// JSON grammar allows an escaped lone surrogate (<c>"\ud800"</c>), which System.Text.Json parses but later refuses to
/// read as .NET text with an <see cref="InvalidOperationException"/>. Configuration readers check every name and string
/// up front so such a file fails as a bad file, naming where, instead of as an unexplained crash deep in a field reader.
/// </summary>
internal static class JsonStrings
{
    /// <summary>The path of the first property name or string that is not valid Unicode, or null when all are.</summary>
    public static string? FindUnreadable(JsonNode? node, string path = "$")
    {
        try
        {
            switch (node)
            {
                case JsonObject obj:
                    foreach (var (name, child) in obj)
                        if (FindUnreadable(child, $"{path}.{name}") is { } bad) return bad;
                    return null;
                case JsonArray array:
                    for (int i = 0; i < array.Count; i++)
                        if (FindUnreadable(array[i], $"{path}[{i}]") is { } bad) return bad;
                    return null;
                case JsonValue value when value.GetValueKind() == JsonValueKind.String:
                    value.GetValue<string>();
                    return null;
                default:
                    return null;
            }
        }
        catch (InvalidOperationException)
        {
            return path;
        }
    }

    /// <inheritdoc cref="FindUnreadable(JsonNode?, string)"/>
    public static string? FindUnreadable(JsonElement element, string path = "$")
    {
        try
        {
            switch (element.ValueKind)
            {
                case JsonValueKind.Object:
                    foreach (var property in element.EnumerateObject())
                        if (FindUnreadable(property.Value, $"{path}.{property.Name}") is { } bad) return bad;
                    return null;
                case JsonValueKind.Array:
                    int i = 0;
                    foreach (var item in element.EnumerateArray())
                        if (FindUnreadable(item, $"{path}[{i++}]") is { } bad) return bad;
                    return null;
                case JsonValueKind.String:
                    element.GetString();
                    return null;
                default:
                    return null;
            }
        }
        catch (InvalidOperationException)
        {
            return path;
        }
    }
}
