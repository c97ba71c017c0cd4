using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging;
using Rinna.Net.Generation;
using GenFinishReason = Rinna.Net.Generation.FinishReason;

namespace Rinna.Net.Integration;

/// <summary>
/// <see cref="IChatClient"/> over a rinna model: the conversation becomes rinna's <c>ユーザー: … / システム: …</c> prompt,
/// <see cref="ChatOptions"/> become Hugging Face generation settings, and the reply is decoded (streamed piece by piece
/// on request). Concurrent requests on one model are decoded together by the host's
/// <see cref="ContinuousBatchingScheduler"/>, each with its own settings, seed, stop strings and stream.
/// </summary>
/// <remarks>
/// Mapped: <see cref="ChatOptions.Temperature"/> (0 means greedy), <see cref="ChatOptions.TopP"/>, <see cref="ChatOptions.TopK"/>,
/// <see cref="ChatOptions.MaxOutputTokens"/>, <see cref="ChatOptions.StopSequences"/>, <see cref="ChatOptions.Seed"/>,
/// <see cref="ChatOptions.Instructions"/> and system messages (rinna's models have no system role: the text is put before the
/// first user utterance), and <see cref="ChatOptions.AdditionalProperties"/> <c>repetition_penalty</c> / <c>do_sample</c>.
/// A conversation longer than the model's context is fitted by <see cref="RinnaOptions.ContextOverflow"/> (by default the
/// oldest exchanges are dropped and the answer's length is clamped, logged once per request), and a reply stops where the
/// model starts writing the next utterance (<see cref="RinnaChatPromptBuilder.TurnMarkers"/>).
/// Rejected with <see cref="NotSupportedException"/>: a non-zero <see cref="ChatOptions.FrequencyPenalty"/> or
/// <see cref="ChatOptions.PresencePenalty"/> (HF's repetition penalty is multiplicative, not OpenAI's additive one: pass
/// <c>repetition_penalty</c> instead), tools, a JSON response format, and non-text message contents.
/// </remarks>
public sealed class RinnaChatClient : IChatClient
{
    private readonly RinnaModelHost host;

    /// <summary>Creates a client over a model host (what <c>AddRinna</c> registers).</summary>
    public RinnaChatClient(RinnaModelHost host)
    {
        this.host = host ?? throw new ArgumentNullException(nameof(host));
        Metadata = new ChatClientMetadata("rinna", null, host.Options.ModelId);
    }

    /// <summary>Provider name and model id.</summary>
    public ChatClientMetadata Metadata { get; }

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var (prompt, config) = await PrepareAsync(messages, options, cancellationToken).ConfigureAwait(false);
        var (model, tokenizer) = await host.GetAsync(cancellationToken).ConfigureAwait(false);
        var scheduler = await host.GetSchedulerAsync(cancellationToken).ConfigureAwait(false);
        var ids = TextGeneration.EncodePromptIds(model, tokenizer, prompt);
        var row = await scheduler.GenerateAsync(ids, config, tokenizer, cancellationToken: cancellationToken).ConfigureAwait(false);
        var result = new GeneratedText(row.Text ?? "", row.TokenIds, ids.Length, row.FinishReason, row.StopString);
        if (result.FinishReason == GenFinishReason.Cancelled) throw new OperationCanceledException(cancellationToken);
        var text = host.PromptBuilder.PostProcess(result.Text);
        // An answer cut at the next speaker's label ends with the separator that came before it.
        if (result.FinishReason == GenFinishReason.StopString && result.StopString is { } stop && host.PromptBuilder.TurnMarkers.Contains(stop))
            text = text.TrimEnd();
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, text))
        {
            ModelId = host.Options.ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = MapFinishReason(result.FinishReason),
            Usage = new UsageDetails
            {
                InputTokenCount = result.PromptTokens,
                OutputTokenCount = result.TokenIds.Count,
                TotalTokenCount = result.PromptTokens + result.TokenIds.Count,
            },
        };
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages,
        ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (prompt, config) = await PrepareAsync(messages, options, cancellationToken).ConfigureAwait(false);
        var (model, tokenizer) = await host.GetAsync(cancellationToken).ConfigureAwait(false);
        var scheduler = await host.GetSchedulerAsync(cancellationToken).ConfigureAwait(false);
        var ids = TextGeneration.EncodePromptIds(model, tokenizer, prompt);
        var responseId = Guid.NewGuid().ToString("N");
        var pieces = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        // Abandoning the enumeration cancels the request too: its row leaves the batch at the next step.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var generation = scheduler.GenerateAsync(ids, config, tokenizer, onStep: tracker =>
        {
            var piece = tracker.TakeText(0);
            if (piece.Length > 0) pieces.Writer.TryWrite(piece);
        }, cancellationToken: stop.Token);
        _ = generation.ContinueWith(t => pieces.Writer.TryComplete(t.Exception?.InnerException), CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            var output = host.PromptBuilder.CreateOutputStream();
            await foreach (var piece in pieces.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                var text = output.Push(piece);
                if (text.Length > 0) yield return Update(text, responseId, null);
            }
            var row = await generation.ConfigureAwait(false);
            if (row.FinishReason == GenFinishReason.Cancelled) throw new OperationCanceledException(cancellationToken);
            yield return Update(output.Flush(), responseId, MapFinishReason(row.FinishReason));
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return Metadata;
        if (serviceType.IsInstanceOfType(this)) return this;
        if (serviceType == typeof(RinnaModelHost)) return host;
        return null;
    }

    /// <summary>Nothing to release: the model belongs to the <see cref="RinnaModelHost"/>.</summary>
    public void Dispose()
    {
    }

    private ChatResponseUpdate Update(string text, string responseId, ChatFinishReason? finish) => new(ChatRole.Assistant, text)
    {
        ResponseId = responseId,
        MessageId = responseId,
        ModelId = host.Options.ModelId,
        FinishReason = finish,
        CreatedAt = DateTimeOffset.UtcNow,
    };

    internal async Task<(string Prompt, GenerationConfig Config)> PrepareAsync(IEnumerable<ChatMessage> messages, ChatOptions? options,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var turns = new List<RinnaChatTurn>();
        var instructions = new List<string>();
        if (!string.IsNullOrWhiteSpace(options?.Instructions)) instructions.Add(options.Instructions);
        foreach (var message in messages)
        {
            if (message.Contents.Any(c => c is not TextContent))
                throw new NotSupportedException($"Only text messages are supported; a {message.Role} message contains {message.Contents.First(c => c is not TextContent).GetType().Name}.");
            if (message.Role == ChatRole.System) instructions.Add(message.Text);
            else if (message.Role == ChatRole.User) turns.Add(new RinnaChatTurn(RinnaSpeaker.User, message.Text));
            else if (message.Role == ChatRole.Assistant) turns.Add(new RinnaChatTurn(RinnaSpeaker.System, message.Text));
            else throw new NotSupportedException($"rinna's conversation format has no '{message.Role}' role.");
        }
        if (turns.Count == 0 || turns[^1].Speaker != RinnaSpeaker.User)
            throw new ArgumentException("The conversation must end with a user message: the prompt asks for the model's reply.", nameof(messages));
        var (model, tokenizer) = await host.GetAsync(cancellationToken).ConfigureAwait(false);
        var config = ToGenerationConfig(options, tokenizer.EosTokenId, tokenizer.PadTokenId);
        var builder = host.PromptBuilder;
        var fitted = builder.BuildPrompt(turns, instructions.Count > 0 ? string.Join("\n", instructions) : null,
            text => tokenizer.Encode(text, addSpecialTokens: false).Length, model.Config.MaxPositionEmbeddings,
            config.ResolveMaxNewTokens(0), host.Options.ContextOverflow);
        if (fitted.DroppedTurns > 0 || fitted.MaxNewTokensClamped)
            host.Logger.LogWarning("The conversation did not fit the model's context of {Context} tokens: dropped the {Dropped} oldest turns, " +
                "prompt {Prompt} tokens, answer limited to {MaxNewTokens} tokens", model.Config.MaxPositionEmbeddings, fitted.DroppedTurns,
                fitted.PromptTokens, fitted.MaxNewTokens);
        config = config with
        {
            MaxNewTokens = fitted.MaxNewTokens,
            StopStrings = [.. config.StopStrings ?? [], .. builder.TurnMarkers],
        };
        return (fitted.Text, config);
    }

    internal GenerationConfig ToGenerationConfig(ChatOptions? options, int? eosTokenId, int? padTokenId) =>
        ToGenerationConfig(host.Options, options, eosTokenId, padTokenId);

    /// <summary><paramref name="options"/> over the host's <paramref name="defaults"/> as Hugging Face settings (also raw completions').</summary>
    internal static GenerationConfig ToGenerationConfig(RinnaOptions defaults, ChatOptions? options, int? eosTokenId, int? padTokenId)
    {
        if (options?.FrequencyPenalty is { } frequency && frequency != 0)
            throw new NotSupportedException("FrequencyPenalty is not supported (rinna uses HF's multiplicative repetition penalty): set AdditionalProperties[\"repetition_penalty\"] instead.");
        if (options?.PresencePenalty is { } presence && presence != 0)
            throw new NotSupportedException("PresencePenalty is not supported: set AdditionalProperties[\"repetition_penalty\"] instead.");
        if (options?.Tools is { Count: > 0 }) throw new NotSupportedException("rinna's models do not call tools.");
        if (options?.ResponseFormat is ChatResponseFormatJson) throw new NotSupportedException("JSON response formats are not supported.");

        double repetitionPenalty = defaults.RepetitionPenalty;
        bool doSample = defaults.DoSample;
        if (options?.AdditionalProperties is { } extra)
        {
            if (extra.TryGetValue("repetition_penalty", out var penalty)) repetitionPenalty = AdditionalNumber("repetition_penalty", penalty);
            if (extra.TryGetValue("do_sample", out var sample)) doSample = AdditionalBoolean("do_sample", sample);
        }
        double temperature = options?.Temperature ?? defaults.Temperature;
        // OpenAI's semantics: a positive temperature asks for sampling, 0 for a deterministic (greedy) answer.
        if (options?.Temperature is { } requested) doSample = requested > 0;
        var config = new GenerationConfig
        {
            DoSample = doSample,
            Temperature = doSample ? temperature : 1.0,
            TopP = options?.TopP ?? defaults.TopP,
            TopK = options?.TopK ?? defaults.TopK,
            MaxNewTokens = options?.MaxOutputTokens ?? defaults.MaxNewTokens,
            RepetitionPenalty = repetitionPenalty,
            StopStrings = options?.StopSequences is { Count: > 0 } stops ? stops.ToArray() : null,
            Seed = options?.Seed,
            MaxCacheBytes = defaults.MaxCacheBytes,
            EosTokenId = eosTokenId is int eos ? [eos] : null,
            PadTokenId = padTokenId,
        };
        config.Validate();
        return config;
    }

    /// <summary>A number given in <see cref="ChatOptions.AdditionalProperties"/>: a .NET number, a numeric string or a JSON number.</summary>
    private static double AdditionalNumber(string name, object? value)
    {
        var invariant = System.Globalization.CultureInfo.InvariantCulture;
        double? number = value switch
        {
            System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.Number } json => json.GetDouble(),
            System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.String } json
                when double.TryParse(json.GetString(), System.Globalization.NumberStyles.Float, invariant, out var parsed) => parsed,
            string text when double.TryParse(text, System.Globalization.NumberStyles.Float, invariant, out var parsed) => parsed,
            sbyte or byte or short or ushort or int or uint or long or ulong or float or double or decimal => Convert.ToDouble(value, invariant),
            _ => null,
        };
        return number is { } n && double.IsFinite(n) ? n
            : throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{name}\"] must be a finite number; got {Describe(value)}.", "options");
    }

    /// <summary>A switch given in <see cref="ChatOptions.AdditionalProperties"/>: a bool, <c>"true"</c>/<c>"false"</c>, or a JSON boolean.</summary>
    private static bool AdditionalBoolean(string name, object? value) => value switch
    {
        bool b => b,
        System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.True } => true,
        System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.False } => false,
        string text when bool.TryParse(text, out var parsed) => parsed,
        _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{name}\"] must be true or false; got {Describe(value)}.", "options"),
    };

    // Bounded, so a hostile value cannot make the message large.
    private static string Describe(object? value)
    {
        var text = value is null ? "null" : $"{value.GetType().Name} '{value}'";
        return text.Length <= 80 ? text : text[..80] + "…";
    }

    private static ChatFinishReason MapFinishReason(GenFinishReason reason) =>
        reason == GenFinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;
}
