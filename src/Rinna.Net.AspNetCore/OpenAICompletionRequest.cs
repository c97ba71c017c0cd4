using System.Text.Json;
using Microsoft.Extensions.AI;

namespace Rinna.Net.AspNetCore;

/// <summary>
/// The body of <c>POST /v1/completions</c> (OpenAI's legacy text completions, which vLLM and TGI serve as well): one text
/// prompt or an array of them, continued without a chat format. Fields this server cannot honour (token-id prompts,
/// <c>suffix</c>, <c>logprobs</c>, a <c>best_of</c> other than <c>n</c>) are refused by name.
/// </summary>
internal sealed record OpenAICompletionRequest(string? Model, List<string> Prompts, int Choices, ChatOptions Options, bool Echo, bool Stream, bool IncludeUsage)
{
    /// <summary>OpenAI's default <c>max_tokens</c> for completions.</summary>
    private const int DefaultMaxTokens = 16;

    public static OpenAICompletionRequest Parse(ReadOnlyMemory<byte> body, int maxChoices)
    {
        using (var document = OpenAIChatRequest.ParseObject(body))
        {
            var root = document.RootElement;
            string? model = OpenAIChatRequest.OptionalString(root, "model");
            var prompts = ReadPrompts(root, maxChoices);

            var n = OpenAIChatRequest.OptionalInt(root, "n") ?? 1;
            if (n < 1 || n * prompts.Count > maxChoices)
                throw new OpenAIRequestException(400, $"'n' must be at least 1, and prompts × n at most {maxChoices}; got {n} for {prompts.Count} prompts.", "n");
            if (OpenAIChatRequest.OptionalInt(root, "best_of") is { } bestOf && bestOf != n)
                throw new OpenAIRequestException(400, "'best_of' other than 'n' is not supported (it needs log probabilities).", "best_of");
            if (root.TryGetProperty("logprobs", out var logprobs) && logprobs.ValueKind is not (JsonValueKind.Null or JsonValueKind.False))
                throw new OpenAIRequestException(400, "'logprobs' is not supported.", "logprobs");
            if (OpenAIChatRequest.OptionalString(root, "suffix") is { Length: > 0 })
                throw new OpenAIRequestException(400, "'suffix' (insertion) is not supported.", "suffix");

            var maxTokens = OpenAIChatRequest.OptionalInt(root, "max_tokens") ?? DefaultMaxTokens;
            if (maxTokens < 1) throw new OpenAIRequestException(400, "'max_tokens' must be at least 1.", "max_tokens");
            var options = new ChatOptions
            {
                ModelId = model,
                MaxOutputTokens = (int)maxTokens,
                Temperature = OpenAIChatRequest.Range(root, "temperature", 0, 2),
                TopP = OpenAIChatRequest.Range(root, "top_p", 0, 1),
                FrequencyPenalty = OpenAIChatRequest.Range(root, "frequency_penalty", -2, 2),
                PresencePenalty = OpenAIChatRequest.Range(root, "presence_penalty", -2, 2),
                StopSequences = OpenAIChatRequest.Stops(root),
            };
            if (root.TryGetProperty("seed", out var seed) && seed.ValueKind != JsonValueKind.Null)
                options.Seed = seed.ValueKind == JsonValueKind.Number && seed.TryGetInt64(out var seedValue) ? seedValue
                    : throw new OpenAIRequestException(400, "'seed' must be an integer.", "seed");
            if (OpenAIChatRequest.OptionalInt(root, "top_k") is { } topK)
                options.TopK = topK >= 0 ? (int)topK : throw new OpenAIRequestException(400, "'top_k' must be 0 or more.", "top_k");
            if (OpenAIChatRequest.Range(root, "repetition_penalty", 0, 100) is { } repetition)
                (options.AdditionalProperties ??= [])["repetition_penalty"] = repetition;

            bool echo = OpenAIChatRequest.OptionalBool(root, "echo") ?? false;
            bool stream = OpenAIChatRequest.OptionalBool(root, "stream") ?? false;
            bool includeUsage = root.TryGetProperty("stream_options", out var streamOptions) && streamOptions.ValueKind == JsonValueKind.Object
                && (OpenAIChatRequest.OptionalBool(streamOptions, "include_usage", "stream_options.include_usage") ?? false);
            return new OpenAICompletionRequest(model, prompts, (int)n, options, echo, stream, includeUsage);
        }
    }

    private static List<string> ReadPrompts(JsonElement root, int maxPrompts)
    {
        if (!root.TryGetProperty("prompt", out var prompt) || prompt.ValueKind == JsonValueKind.Null)
            throw new OpenAIRequestException(400, "'prompt' is required: a string or an array of strings.", "prompt");
        if (prompt.ValueKind == JsonValueKind.String) return [prompt.GetString()!];
        if (prompt.ValueKind != JsonValueKind.Array)
            throw new OpenAIRequestException(400, "'prompt' must be a string or an array of strings.", "prompt");
        int count = prompt.GetArrayLength();
        if (count == 0) throw new OpenAIRequestException(400, "'prompt' is an empty array.", "prompt");
        if (count > maxPrompts) throw new OpenAIRequestException(400, $"'prompt' holds {count} prompts; at most {maxPrompts} are accepted.", "prompt");
        var prompts = new List<string>(count);
        foreach (var item in prompt.EnumerateArray())
        {
            if (item.ValueKind == JsonValueKind.Number || item.ValueKind == JsonValueKind.Array)
                throw new OpenAIRequestException(400, "Token-id prompts are not supported; send the prompt as text.", "prompt");
            if (item.ValueKind != JsonValueKind.String) throw new OpenAIRequestException(400, "'prompt' must be a string or an array of strings.", "prompt");
            prompts.Add(item.GetString()!);
        }
        return prompts;
    }
}
