using System.Text.Json;
using Microsoft.Extensions.AI;

namespace Rinna.Net.AspNetCore;

/// <summary>A request the endpoint refuses: the HTTP status and OpenAI's error object (<c>message</c>, <c>type</c>, <c>param</c>, <c>code</c>).</summary>
internal sealed class OpenAIRequestException(int status, string message, string? param = null, string? code = null, string type = "invalid_request_error")
    : Exception(message)
{
    public int Status { get; } = status;

    public string? Param { get; } = param;

    public string? Code { get; } = code;

    public string Type { get; } = type;
}

/// <summary>
/// The body of <c>POST /v1/chat/completions</c> read into Microsoft.Extensions.AI's types. Fields OpenAI defines and
/// this server cannot honour (several choices, tools, log probabilities, non-text content) are refused by name rather
/// than silently ignored; fields that do not change the answer (<c>user</c>, <c>store</c>, <c>metadata</c>) are ignored.
/// </summary>
internal sealed record OpenAIChatRequest(string? Model, List<ChatMessage> Messages, ChatOptions Options, bool Stream, bool IncludeUsage)
{
    private const int MaxStopSequences = 4;

    /// <summary>The body as a JSON object (the caller disposes it); a 400 for anything else.</summary>
    internal static JsonDocument ParseObject(ReadOnlyMemory<byte> body)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException ex)
        {
            throw new OpenAIRequestException(400, $"The request body is not valid JSON: {Bounded(ex.Message)}");
        }
        if (document.RootElement.ValueKind == JsonValueKind.Object) return document;
        document.Dispose();
        throw new OpenAIRequestException(400, "The request body must be a JSON object.");
    }

    public static OpenAIChatRequest Parse(ReadOnlyMemory<byte> body, int maxMessages)
    {
        using (var document = ParseObject(body))
        {
            var root = document.RootElement;
            var options = new ChatOptions();
            string? model = OptionalString(root, "model");
            options.ModelId = model;

            if (!root.TryGetProperty("messages", out var messagesJson) || messagesJson.ValueKind != JsonValueKind.Array)
                throw new OpenAIRequestException(400, "'messages' must be an array of messages.", "messages");
            int count = messagesJson.GetArrayLength();
            if (count == 0) throw new OpenAIRequestException(400, "'messages' is empty.", "messages");
            if (count > maxMessages) throw new OpenAIRequestException(400, $"'messages' holds {count} messages; at most {maxMessages} are accepted.", "messages");
            var messages = new List<ChatMessage>(count);
            int index = 0;
            foreach (var message in messagesJson.EnumerateArray()) messages.Add(ParseMessage(message, index++));

            if (OptionalInt(root, "n") is { } n && n != 1) throw new OpenAIRequestException(400, "Only one choice per request is supported ('n' must be 1).", "n");
            if (root.TryGetProperty("tools", out var tools) && tools.ValueKind == JsonValueKind.Array && tools.GetArrayLength() > 0)
                throw new OpenAIRequestException(400, "This model does not call tools; 'tools' is not supported.", "tools");
            if (root.TryGetProperty("logprobs", out var logprobs) && logprobs.ValueKind == JsonValueKind.True)
                throw new OpenAIRequestException(400, "'logprobs' is not supported.", "logprobs");
            if (root.TryGetProperty("response_format", out var format) && format.ValueKind == JsonValueKind.Object
                && OptionalString(format, "type", "response_format.type") is { } formatType && formatType != "text")
                throw new OpenAIRequestException(400, $"response_format '{Bounded(formatType)}' is not supported; only 'text' is.", "response_format");

            // OpenAI's newer name wins over the deprecated one when both are given.
            var maxTokens = OptionalInt(root, "max_completion_tokens") ?? OptionalInt(root, "max_tokens");
            if (maxTokens is < 1) throw new OpenAIRequestException(400, "The token limit must be at least 1.", root.TryGetProperty("max_completion_tokens", out _) ? "max_completion_tokens" : "max_tokens");
            options.MaxOutputTokens = (int?)maxTokens;
            options.Temperature = Range(root, "temperature", 0, 2);
            options.TopP = Range(root, "top_p", 0, 1);
            options.FrequencyPenalty = Range(root, "frequency_penalty", -2, 2);
            options.PresencePenalty = Range(root, "presence_penalty", -2, 2);
            options.Seed = root.TryGetProperty("seed", out var seed) && seed.ValueKind != JsonValueKind.Null
                ? seed.ValueKind == JsonValueKind.Number && seed.TryGetInt64(out var seedValue) ? seedValue : throw new OpenAIRequestException(400, "'seed' must be an integer.", "seed")
                : null;
            options.StopSequences = Stops(root);
            // Sampling settings OpenAI lacks, under the names vLLM and llama.cpp's server accept.
            if (OptionalInt(root, "top_k") is { } topK)
                options.TopK = topK is >= 0 and <= int.MaxValue ? (int)topK : throw new OpenAIRequestException(400, "'top_k' must be 0 or more.", "top_k");
            if (Range(root, "repetition_penalty", 0, 100) is { } repetition)
                (options.AdditionalProperties ??= [])["repetition_penalty"] = repetition;

            bool stream = OptionalBool(root, "stream") ?? false;
            bool includeUsage = root.TryGetProperty("stream_options", out var streamOptions) && streamOptions.ValueKind == JsonValueKind.Object
                && (OptionalBool(streamOptions, "include_usage", "stream_options.include_usage") ?? false);
            return new OpenAIChatRequest(model, messages, options, stream, includeUsage);
        }
    }

    private static ChatMessage ParseMessage(JsonElement message, int index)
    {
        string where = $"messages[{index}]";
        if (message.ValueKind != JsonValueKind.Object) throw new OpenAIRequestException(400, $"{where} must be an object.", where);
        var roleName = OptionalString(message, "role", $"{where}.role") ?? throw new OpenAIRequestException(400, $"{where} has no 'role'.", $"{where}.role");
        var role = roleName switch
        {
            "system" or "developer" => ChatRole.System,
            "user" => ChatRole.User,
            "assistant" => ChatRole.Assistant,
            "tool" or "function" => throw new OpenAIRequestException(400, $"{where}: '{roleName}' messages are not supported (this model does not call tools).", $"{where}.role"),
            _ => throw new OpenAIRequestException(400, $"{where}: unknown role '{Bounded(roleName)}'.", $"{where}.role"),
        };
        if (!message.TryGetProperty("content", out var content) || content.ValueKind == JsonValueKind.Null)
            return role == ChatRole.Assistant ? new ChatMessage(role, "") : throw new OpenAIRequestException(400, $"{where} has no 'content'.", $"{where}.content");
        if (content.ValueKind == JsonValueKind.String) return new ChatMessage(role, content.GetString());
        if (content.ValueKind != JsonValueKind.Array)
            throw new OpenAIRequestException(400, $"{where}.content must be a string or an array of text parts.", $"{where}.content");
        var text = new System.Text.StringBuilder();
        int part = 0;
        foreach (var item in content.EnumerateArray())
        {
            string partWhere = $"{where}.content[{part++}]";
            if (item.ValueKind != JsonValueKind.Object || OptionalString(item, "type", $"{partWhere}.type") != "text")
                throw new OpenAIRequestException(400, $"{partWhere}: only text parts are supported.", partWhere);
            text.Append(OptionalString(item, "text", $"{partWhere}.text")
                ?? throw new OpenAIRequestException(400, $"{partWhere} has no 'text'.", $"{partWhere}.text"));
        }
        return new ChatMessage(role, text.ToString());
    }

    internal static List<string>? Stops(JsonElement root)
    {
        if (!root.TryGetProperty("stop", out var stop) || stop.ValueKind == JsonValueKind.Null) return null;
        if (stop.ValueKind == JsonValueKind.String) return [stop.GetString()!];
        if (stop.ValueKind != JsonValueKind.Array || stop.GetArrayLength() > MaxStopSequences
            || stop.EnumerateArray().Any(s => s.ValueKind != JsonValueKind.String || s.GetString()!.Length == 0))
            throw new OpenAIRequestException(400, $"'stop' must be a string or an array of at most {MaxStopSequences} non-empty strings.", "stop");
        return stop.EnumerateArray().Select(s => s.GetString()!).ToList();
    }

    internal static string? OptionalString(JsonElement parent, string name, string? param = null)
    {
        if (!parent.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind == JsonValueKind.String ? value.GetString()
            : throw new OpenAIRequestException(400, $"'{param ?? name}' must be a string.", param ?? name);
    }

    internal static bool? OptionalBool(JsonElement parent, string name, string? param = null)
    {
        if (!parent.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new OpenAIRequestException(400, $"'{param ?? name}' must be true or false.", param ?? name),
        };
    }

    internal static long? OptionalInt(JsonElement parent, string name)
    {
        if (!parent.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out var number) && number is >= int.MinValue and <= int.MaxValue ? number
            : throw new OpenAIRequestException(400, $"'{name}' must be an integer.", name);
    }

    internal static float? Range(JsonElement parent, string name, double min, double max)
    {
        if (!parent.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind == JsonValueKind.Number && value.TryGetDouble(out var number) && number >= min && number <= max ? (float)number
            : throw new OpenAIRequestException(400, $"'{name}' must be a number from {min} to {max}.", name);
    }

    // Messages quote what the client sent; a hostile value must not make them large.
    internal static string Bounded(string text) => text.Length <= 100 ? text : text[..100] + "…";
}
