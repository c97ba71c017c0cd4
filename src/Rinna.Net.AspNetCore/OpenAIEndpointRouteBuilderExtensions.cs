using System.Buffers;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rinna.Net.Integration;

namespace Rinna.Net.AspNetCore;

/// <summary>Maps OpenAI's chat completions and completions APIs onto the <see cref="IChatClient"/> and model host in dependency injection.</summary>
public static class OpenAIEndpointRouteBuilderExtensions
{
    /// <summary>
    /// Maps <c>POST {prefix}/chat/completions</c> (OpenAI's chat completions, with <c>stream: true</c> as server-sent
    /// events) and <c>GET {prefix}/models</c>, answered by the <see cref="IChatClient"/> registered in the services
    /// (for Rinna.Net, <c>AddRinna</c>; a <c>ChatClientBuilder</c> pipeline works as well), so OpenAI's client
    /// libraries and tools talk to the model unchanged; and <c>POST {prefix}/completions</c> (OpenAI's text completions:
    /// raw prompts continued without a chat format, several prompts and <c>n</c> choices as one batch), answered by the
    /// <see cref="Rinna.Net.Integration.RinnaModelHost"/> registered under the same key (404 where there is none).
    /// </summary>
    /// <param name="endpoints">The application or a route group.</param>
    /// <param name="prefix">The path the API lives under; OpenAI's clients expect <c>/v1</c> after their base address.</param>
    /// <param name="configure">Limits and the served models (<see cref="OpenAIEndpointOptions"/>).</param>
    /// <returns>The route group, to add authorization, rate limiting or CORS to.</returns>
    /// <remarks>
    /// A request the model cannot serve as asked is refused with OpenAI's error object and status 400 (bad or
    /// unsupported fields, naming the field), 404 (a model not served), 413 (a body over
    /// <see cref="OpenAIEndpointOptions.MaxRequestBodySize"/>) or 503 (the model failed to load, with the reason). A
    /// client that disconnects cancels its generation.
    /// </remarks>
    public static RouteGroupBuilder MapOpenAIChatCompletions(this IEndpointRouteBuilder endpoints, string prefix = "/v1",
        Action<OpenAIEndpointOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentNullException.ThrowIfNull(prefix);
        var options = new OpenAIEndpointOptions();
        configure?.Invoke(options);
        options.Validate();
        var group = endpoints.MapGroup(prefix);
        group.MapPost("/chat/completions", (HttpContext context) => ChatCompletionsAsync(context, options));
        group.MapGet("/models", (HttpContext context) => ModelsAsync(context, options));
        group.MapPost("/completions", (HttpContext context) => CompletionsAsync(context, options));
        return group;
    }

    private static async Task ModelsAsync(HttpContext context, OpenAIEndpointOptions options)
    {
        var names = options.Models.Count > 0
            ? options.Models.Keys.ToList()
            : [ModelName(context.RequestServices.GetRequiredService<IChatClient>(), null)];
        await WriteJsonAsync(context, 200, writer =>
        {
            writer.WriteString("object", "list");
            writer.WriteStartArray("data");
            foreach (var name in names)
            {
                writer.WriteStartObject();
                writer.WriteString("id", name);
                writer.WriteString("object", "model");
                writer.WriteNumber("created", 0);
                writer.WriteString("owned_by", "rinna-net");
                writer.WriteEndObject();
            }
            writer.WriteEndArray();
        }).ConfigureAwait(false);
    }

    private static Task ChatCompletionsAsync(HttpContext context, OpenAIEndpointOptions options) =>
        ServeAsync(context, "chat completion", "The server failed to generate the answer.", async stream =>
        {
            var aborted = context.RequestAborted;
            var body = await ReadBodyAsync(context, options.MaxRequestBodySize).ConfigureAwait(false);
            var request = OpenAIChatRequest.Parse(body, options.MaxMessages);
            var (client, model) = Resolve(context, options, request.Model);
            string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
            long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            if (!request.Stream)
            {
                var response = await client.GetResponseAsync(request.Messages, request.Options, aborted).ConfigureAwait(false);
                await WriteJsonAsync(context, 200, writer => WriteCompletion(writer, id, created, model, response)).ConfigureAwait(false);
                return;
            }

            // The first update decides between an error status and a 200 event stream, so a model that fails to load
            // is a 503 rather than an event stream that breaks off.
            await using var updates = client.GetStreamingResponseAsync(request.Messages, request.Options, aborted).GetAsyncEnumerator(aborted);
            bool more = await updates.MoveNextAsync().ConfigureAwait(false);
            stream.Start();
            await WriteEventAsync(context, writer => WriteChunk(writer, id, created, model, "", ChatRole.Assistant, null)).ConfigureAwait(false);
            ChatFinishReason? finish = null;
            UsageDetails? usage = null;
            for (; more; more = await updates.MoveNextAsync().ConfigureAwait(false))
            {
                var update = updates.Current;
                finish = update.FinishReason ?? finish;
                usage = update.Contents.OfType<UsageContent>().LastOrDefault()?.Details ?? usage;
                if (update.Text is { Length: > 0 } text)
                    await WriteEventAsync(context, writer => WriteChunk(writer, id, created, model, text, null, null)).ConfigureAwait(false);
            }
            await WriteEventAsync(context, writer => WriteChunk(writer, id, created, model, null, null, finish ?? ChatFinishReason.Stop)).ConfigureAwait(false);
            if (request.IncludeUsage)
                await WriteEventAsync(context, writer => WriteUsageChunk(writer, id, created, model, usage)).ConfigureAwait(false);
            await context.Response.WriteAsync("data: [DONE]\n\n", aborted).ConfigureAwait(false);
        });

    private static Task CompletionsAsync(HttpContext context, OpenAIEndpointOptions options) =>
        ServeAsync(context, "completion", "The server failed to generate the completion.", async stream =>
        {
            var aborted = context.RequestAborted;
            var body = await ReadBodyAsync(context, options.MaxRequestBodySize).ConfigureAwait(false);
            var request = OpenAICompletionRequest.Parse(body, options.MaxCompletionChoices);
            var (_, model, key) = ResolveWithKey(context, options, request.Model);
            var host = (key is null ? context.RequestServices.GetService<RinnaModelHost>() : context.RequestServices.GetKeyedService<RinnaModelHost>(key))
                ?? throw new OpenAIRequestException(404, $"The model '{model}' serves chat completions only.", "model", "model_not_found");
            string id = "cmpl-" + Guid.NewGuid().ToString("N");
            long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            int choices = request.Prompts.Count * request.Choices;
            if (!request.Stream)
            {
                var results = await host.CompleteAsync(request.Prompts, request.Options, request.Choices, cancellationToken: aborted).ConfigureAwait(false);
                aborted.ThrowIfCancellationRequested();
                await WriteJsonAsync(context, 200, writer =>
                {
                    WriteTextHeader(writer, id, created, model);
                    writer.WriteStartArray("choices");
                    for (int i = 0; i < results.Count; i++)
                        WriteTextChoice(writer, i, (request.Echo ? request.Prompts[i / request.Choices] : "") + results[i].Text, TextFinishReason(results[i].FinishReason));
                    writer.WriteEndArray();
                    WriteUsage(writer, TextUsage(request, results));
                }).ConfigureAwait(false);
                return;
            }

            // Pieces come from the scheduler's thread; the first one (or the end) decides between an error status and a
            // 200 event stream, as for chat.
            var pieces = System.Threading.Channels.Channel.CreateUnbounded<(int Choice, string Text)>(
                new System.Threading.Channels.UnboundedChannelOptions { SingleReader = true });
            var completion = host.CompleteAsync(request.Prompts, request.Options, request.Choices, (choice, text) => pieces.Writer.TryWrite((choice, text)), aborted);
            _ = completion.ContinueWith(_ => pieces.Writer.TryComplete(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            bool more = await pieces.Reader.WaitToReadAsync(aborted).ConfigureAwait(false);
            if (!more) await completion.ConfigureAwait(false);
            stream.Start();
            if (request.Echo)
                for (int i = 0; i < choices; i++)
                {
                    int choice = i;
                    await WriteEventAsync(context, writer => WriteTextChunk(writer, id, created, model, choice, request.Prompts[choice / request.Choices], null)).ConfigureAwait(false);
                }
            await foreach (var (choice, text) in pieces.Reader.ReadAllAsync(aborted).ConfigureAwait(false))
                await WriteEventAsync(context, writer => WriteTextChunk(writer, id, created, model, choice, text, null)).ConfigureAwait(false);
            var finished = await completion.ConfigureAwait(false);
            aborted.ThrowIfCancellationRequested();
            for (int i = 0; i < finished.Count; i++)
            {
                int choice = i;
                await WriteEventAsync(context, writer => WriteTextChunk(writer, id, created, model, choice, "", TextFinishReason(finished[choice].FinishReason))).ConfigureAwait(false);
            }
            if (request.IncludeUsage)
                await WriteEventAsync(context, writer =>
                {
                    WriteTextHeader(writer, id, created, model);
                    writer.WriteStartArray("choices");
                    writer.WriteEndArray();
                    WriteUsage(writer, TextUsage(request, finished));
                }).ConfigureAwait(false);
            await context.Response.WriteAsync("data: [DONE]\n\n", aborted).ConfigureAwait(false);
        });

    /// <summary>Whether a request's event stream has started (its status line is sent; errors then go into the stream).</summary>
    private sealed class EventStream(HttpContext context)
    {
        public bool Started { get; private set; }

        public void Start()
        {
            Started = true;
            context.Response.StatusCode = 200;
            context.Response.ContentType = "text/event-stream";
            context.Response.Headers.CacheControl = "no-cache";
            context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        }
    }

    /// <summary>
    /// Runs one request's <paramref name="work"/> and turns what it throws into OpenAI's error object: a refusal with its
    /// status, a server fault as a logged 500 with <paramref name="failure"/> (the exception may hold paths or internals),
    /// nothing for a client that disconnected. Once the event stream has started the error is its last event.
    /// </summary>
    private static async Task ServeAsync(HttpContext context, string what, string failure, Func<EventStream, Task> work)
    {
        var logger = context.RequestServices.GetService<ILoggerFactory>()?.CreateLogger("Rinna.Net.AspNetCore.OpenAI");
        var aborted = context.RequestAborted;
        var stream = new EventStream(context);
        try
        {
            await work(stream).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            logger?.LogInformation("The client disconnected; its {What} was cancelled", what);
        }
        catch (Exception ex) when (Refusal(ex) is { } refusal)
        {
            if (refusal.Status >= 500) logger?.LogError(ex, "A {What} could not be served: {Message}", what, ex.Message);
            else logger?.LogInformation("Refused a {What} with {Status}: {Message}", what, refusal.Status, refusal.Message);
            await WriteErrorAsync(context, stream.Started, refusal).ConfigureAwait(false);
        }
        catch (Exception ex) when (!aborted.IsCancellationRequested)
        {
            logger?.LogError(ex, "A {What} failed", what);
            await WriteErrorAsync(context, stream.Started, new OpenAIRequestException(500, failure, type: "server_error")).ConfigureAwait(false);
        }
    }

    /// <summary>Prompt tokens counted once per prompt, completion tokens over every choice, as OpenAI counts them.</summary>
    private static UsageDetails TextUsage(OpenAICompletionRequest request, IReadOnlyList<Rinna.Net.Generation.GeneratedText> results)
    {
        long prompt = results.Where((_, i) => i % request.Choices == 0).Sum(r => (long)r.PromptTokens);
        long completion = results.Sum(r => (long)r.TokenIds.Count);
        return new UsageDetails { InputTokenCount = prompt, OutputTokenCount = completion, TotalTokenCount = prompt + completion };
    }

    private static string TextFinishReason(Rinna.Net.Generation.FinishReason reason) =>
        reason == Rinna.Net.Generation.FinishReason.Length ? "length" : "stop";

    private static void WriteTextHeader(Utf8JsonWriter writer, string id, long created, string model)
    {
        writer.WriteString("id", id);
        writer.WriteString("object", "text_completion");
        writer.WriteNumber("created", created);
        writer.WriteString("model", model);
    }

    private static void WriteTextChoice(Utf8JsonWriter writer, int index, string text, string? finish)
    {
        writer.WriteStartObject();
        writer.WriteNumber("index", index);
        writer.WriteString("text", text);
        writer.WriteNull("logprobs");
        if (finish is null) writer.WriteNull("finish_reason");
        else writer.WriteString("finish_reason", finish);
        writer.WriteEndObject();
    }

    private static void WriteTextChunk(Utf8JsonWriter writer, string id, long created, string model, int index, string text, string? finish)
    {
        WriteTextHeader(writer, id, created, model);
        writer.WriteStartArray("choices");
        WriteTextChoice(writer, index, text, finish);
        writer.WriteEndArray();
    }

    /// <summary>What a client is told about an exception it caused, or the model's state caused; <c>null</c> for a server fault.</summary>
    private static OpenAIRequestException? Refusal(Exception ex) => ex switch
    {
        OpenAIRequestException refusal => refusal,
        BadHttpRequestException bad => new OpenAIRequestException(bad.StatusCode, bad.Message),
        // The model's own checks: settings out of range, unsupported options, a conversation that does not fit.
        ArgumentException or NotSupportedException => new OpenAIRequestException(400, ex.Message),
        // Loading failed (missing or bad files, the hub unreachable). The reason names server paths, so it goes to the
        // log and the health check, not to the client.
        RinnaException => new OpenAIRequestException(503, "The model is not available; it failed to load (the server's log and health check say why).",
            type: "server_error", code: "model_unavailable"),
        _ => null,
    };

    private static (IChatClient Client, string Model) Resolve(HttpContext context, OpenAIEndpointOptions options, string? requested)
    {
        var (client, model, _) = ResolveWithKey(context, options, requested);
        return (client, model);
    }

    /// <summary>The client answering <paramref name="requested"/>, the name responses give it, and its service key.</summary>
    private static (IChatClient Client, string Model, object? Key) ResolveWithKey(HttpContext context, OpenAIEndpointOptions options, string? requested)
    {
        var services = context.RequestServices;
        if (options.Models.Count == 0)
        {
            var client = services.GetRequiredService<IChatClient>();
            return (client, ModelName(client, requested), null);
        }
        if (requested is null || !options.Models.TryGetValue(requested, out var key))
            throw new OpenAIRequestException(404,
                $"The model '{(requested ?? "").Length switch { > 100 => requested![..100] + "…", _ => requested }}' does not exist; served: {string.Join(", ", options.Models.Keys)}.",
                "model", "model_not_found");
        return (key is null ? services.GetRequiredService<IChatClient>() : services.GetRequiredKeyedService<IChatClient>(key), requested, key);
    }

    /// <summary>The client's model id; a local directory is named by its folder, so the server's paths stay private.</summary>
    private static string ModelName(IChatClient client, string? requested) =>
        client.GetService<ChatClientMetadata>()?.DefaultModelId is { Length: > 0 } id
            ? Path.IsPathRooted(id) || Directory.Exists(id) ? Path.GetFileName(Path.TrimEndingDirectorySeparator(id)) : id
            : requested ?? "default";

    /// <summary>Reads the body up to <paramref name="limit"/> bytes; a longer one is a 413 without reading the rest.</summary>
    private static async Task<ReadOnlyMemory<byte>> ReadBodyAsync(HttpContext context, long limit)
    {
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } sizeFeature) sizeFeature.MaxRequestBodySize = limit;
        if (context.Request.ContentLength is > 0 and var length && length > limit) throw TooLarge(limit);
        var buffer = new ArrayBufferWriter<byte>(4096);
        while (true)
        {
            var memory = buffer.GetMemory(8192);
            int read = await context.Request.Body.ReadAsync(memory, context.RequestAborted).ConfigureAwait(false);
            if (read == 0) break;
            buffer.Advance(read);
            if (buffer.WrittenCount > limit) throw TooLarge(limit);
        }
        return buffer.WrittenMemory;
    }

    private static OpenAIRequestException TooLarge(long limit) =>
        new(413, $"The request body is larger than {limit} bytes.", code: "request_too_large");

    private static void WriteCompletion(Utf8JsonWriter writer, string id, long created, string model, ChatResponse response)
    {
        writer.WriteString("id", id);
        writer.WriteString("object", "chat.completion");
        writer.WriteNumber("created", created);
        writer.WriteString("model", model);
        writer.WriteStartArray("choices");
        writer.WriteStartObject();
        writer.WriteNumber("index", 0);
        writer.WriteStartObject("message");
        writer.WriteString("role", "assistant");
        writer.WriteString("content", response.Text);
        writer.WriteEndObject();
        writer.WriteString("finish_reason", FinishReason(response.FinishReason ?? ChatFinishReason.Stop));
        writer.WriteEndObject();
        writer.WriteEndArray();
        WriteUsage(writer, response.Usage);
    }

    private static void WriteChunk(Utf8JsonWriter writer, string id, long created, string model, string? content, ChatRole? role, ChatFinishReason? finish)
    {
        WriteChunkHeader(writer, id, created, model);
        writer.WriteStartArray("choices");
        writer.WriteStartObject();
        writer.WriteNumber("index", 0);
        writer.WriteStartObject("delta");
        if (role is not null) writer.WriteString("role", "assistant");
        if (content is not null) writer.WriteString("content", content);
        writer.WriteEndObject();
        if (finish is { } reason) writer.WriteString("finish_reason", FinishReason(reason));
        else writer.WriteNull("finish_reason");
        writer.WriteEndObject();
        writer.WriteEndArray();
    }

    /// <summary>OpenAI's last chunk under <c>stream_options.include_usage</c>: no choices, the usage of the whole answer.</summary>
    private static void WriteUsageChunk(Utf8JsonWriter writer, string id, long created, string model, UsageDetails? usage)
    {
        WriteChunkHeader(writer, id, created, model);
        writer.WriteStartArray("choices");
        writer.WriteEndArray();
        WriteUsage(writer, usage);
    }

    private static void WriteChunkHeader(Utf8JsonWriter writer, string id, long created, string model)
    {
        writer.WriteString("id", id);
        writer.WriteString("object", "chat.completion.chunk");
        writer.WriteNumber("created", created);
        writer.WriteString("model", model);
    }

    private static void WriteUsage(Utf8JsonWriter writer, UsageDetails? usage)
    {
        if (usage is null)
        {
            writer.WriteNull("usage");
            return;
        }
        writer.WriteStartObject("usage");
        writer.WriteNumber("prompt_tokens", usage.InputTokenCount ?? 0);
        writer.WriteNumber("completion_tokens", usage.OutputTokenCount ?? 0);
        writer.WriteNumber("total_tokens", usage.TotalTokenCount ?? (usage.InputTokenCount ?? 0) + (usage.OutputTokenCount ?? 0));
        writer.WriteEndObject();
    }

    private static string FinishReason(ChatFinishReason reason) =>
        reason == ChatFinishReason.Length ? "length"
        : reason == ChatFinishReason.ContentFilter ? "content_filter"
        : reason == ChatFinishReason.ToolCalls ? "tool_calls"
        : "stop";

    private static async Task WriteErrorAsync(HttpContext context, bool streaming, OpenAIRequestException error)
    {
        void Body(Utf8JsonWriter writer)
        {
            writer.WriteStartObject("error");
            writer.WriteString("message", error.Message);
            writer.WriteString("type", error.Type);
            if (error.Param is null) writer.WriteNull("param");
            else writer.WriteString("param", error.Param);
            if (error.Code is null) writer.WriteNull("code");
            else writer.WriteString("code", error.Code);
            writer.WriteEndObject();
        }

        if (streaming)
        {
            // The status line is gone: the error becomes the stream's last event, as OpenAI's own server does.
            await WriteEventAsync(context, Body).ConfigureAwait(false);
            return;
        }
        if (context.Response.HasStarted) return;
        await WriteJsonAsync(context, error.Status, Body).ConfigureAwait(false);
    }

    private static async Task WriteJsonAsync(HttpContext context, int status, Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            write(writer);
            writer.WriteEndObject();
        }
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        context.Response.ContentLength = buffer.WrittenCount;
        await context.Response.Body.WriteAsync(buffer.WrittenMemory, context.RequestAborted).ConfigureAwait(false);
    }

    private static async Task WriteEventAsync(HttpContext context, Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        buffer.Write("data: "u8);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            write(writer);
            writer.WriteEndObject();
        }
        buffer.Write("\n\n"u8);
        await context.Response.Body.WriteAsync(buffer.WrittenMemory, context.RequestAborted).ConfigureAwait(false);
        await context.Response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
    }
}
