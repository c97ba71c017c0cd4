using System.Text.Json;

namespace Rinna.Net.Generation;

/// <summary>The conversation formats of rinna's instruction-tuned models (from their model cards).</summary>
public enum RinnaChatFormat
{
    /// <summary>
    /// <c>rinna/bilingual-gpt-neox-4b-instruction-sft</c> / <c>-ppo</c>: utterances <c>"ユーザー: …"</c> and
    /// <c>"システム: …"</c> joined by <c>"\n"</c>, the prompt ending with <c>"\nシステム: "</c>.
    /// </summary>
    Bilingual,

    /// <summary>
    /// <c>rinna/japanese-gpt-neox-3.6b-instruction-sft</c> / <c>-sft-v2</c> / <c>-ppo</c>: the same utterances joined by
    /// <c>"&lt;NL&gt;"</c>, newlines inside utterances written as <c>"&lt;NL&gt;"</c> (the tokenizer cannot encode
    /// <c>"\n"</c>), and <c>"&lt;NL&gt;"</c> in the output turned back into <c>"\n"</c>.
    /// </summary>
    JapaneseNewlineTag,
}

/// <summary>Who speaks an utterance in a rinna conversation.</summary>
public enum RinnaSpeaker
{
    /// <summary>The person: <c>ユーザー</c>.</summary>
    User,

    /// <summary>The model: <c>システム</c> (the assistant, not a system prompt).</summary>
    System,
}

/// <summary>One utterance of a rinna conversation.</summary>
/// <param name="Speaker">Who says it.</param>
/// <param name="Text">What is said.</param>
public readonly record struct RinnaChatTurn(RinnaSpeaker Speaker, string Text);

/// <summary>
/// Builds the prompt text of rinna's instruction models from a conversation, exactly as the model cards do, and turns
/// the model's output back into plain text.
/// </summary>
public sealed class RinnaChatPromptBuilder
{
    private const string UserLabel = "ユーザー";
    private const string SystemLabel = "システム";
    private const string NewlineTag = "<NL>";

    /// <summary>Creates a builder for <paramref name="format"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="format"/> is not a defined format.</exception>
    public RinnaChatPromptBuilder(RinnaChatFormat format)
    {
        if (!Enum.IsDefined(format)) throw new ArgumentOutOfRangeException(nameof(format), format, "Unknown rinna chat format.");
        Format = format;
    }

    /// <summary>The format this builder writes.</summary>
    public RinnaChatFormat Format { get; }

    /// <summary>The text between utterances: <c>"\n"</c> or <c>"&lt;NL&gt;"</c>.</summary>
    public string Separator => Format == RinnaChatFormat.Bilingual ? "\n" : NewlineTag;

    /// <summary>
    /// The chat format of a rinna model id (<c>rinna/japanese-gpt-neox-3.6b-instruction-ppo</c>) or a local folder: the
    /// folder's name, else the model id its <c>config.json</c> (<c>_name_or_path</c>) or <c>tokenizer_config.json</c>
    /// (<c>name_or_path</c>) records; <c>null</c> for base models and anything that is not a rinna instruction model.
    /// </summary>
    public static RinnaChatFormat? DetectFormat(string? modelId)
    {
        if (string.IsNullOrWhiteSpace(modelId)) return null;
        return FormatOfName(modelId) ?? (Directory.Exists(modelId)
            ? FormatOfName(RecordedName(modelId, "config.json", "_name_or_path")) ?? FormatOfName(RecordedName(modelId, "tokenizer_config.json", "name_or_path"))
            : null);
    }

    /// <summary>
    /// A builder for <paramref name="formatOverride"/> when given, else for the format <see cref="DetectFormat"/> finds;
    /// a local directory whose files name no rinna instruction model (a fine-tune saved locally, the samples' demo model)
    /// gets <see cref="RinnaChatFormat.Bilingual"/>, the format of rinna's newest instruction models.
    /// </summary>
    /// <exception cref="ArgumentException">No override is given and <paramref name="modelId"/> is neither a local directory nor a known rinna instruction model.</exception>
    public static RinnaChatPromptBuilder ForModel(string? modelId, RinnaChatFormat? formatOverride = null)
    {
        var format = formatOverride ?? DetectFormat(modelId)
            ?? (Directory.Exists(modelId) ? RinnaChatFormat.Bilingual : (RinnaChatFormat?)null)
            ?? throw new ArgumentException(
                $"'{modelId}' is not a known rinna instruction model, so its chat format is unknown; pass the format explicitly.",
                nameof(modelId));
        return new RinnaChatPromptBuilder(format);
    }

    /// <summary>
    /// The prompt for the model's next reply: every turn as <c>"ユーザー: text"</c> or <c>"システム: text"</c>, joined by
    /// <see cref="Separator"/>, then <see cref="Separator"/> and <c>"システム: "</c>. Encode it without special tokens.
    /// </summary>
    /// <param name="turns">The conversation so far; must end with the user's turn.</param>
    /// <exception cref="ArgumentException">The conversation is empty, does not end with the user, or a text is null.</exception>
    public string BuildPrompt(IEnumerable<RinnaChatTurn> turns)
    {
        ArgumentNullException.ThrowIfNull(turns);
        var all = turns.ToArray();
        if (all.Length == 0) throw new ArgumentException("The conversation is empty.", nameof(turns));
        if (all[^1].Speaker != RinnaSpeaker.User)
            throw new ArgumentException("The conversation must end with the user's turn: the prompt asks for the model's reply.", nameof(turns));
        var utterances = all.Select(turn =>
        {
            if (turn.Text is null) throw new ArgumentException("A turn has no text.", nameof(turns));
            if (!Enum.IsDefined(turn.Speaker)) throw new ArgumentException($"Unknown speaker {turn.Speaker}.", nameof(turns));
            return $"{Label(turn.Speaker)}: {EncodeNewlines(turn.Text)}";
        });
        return string.Join(Separator, utterances) + Separator + SystemLabel + ": ";
    }

    /// <summary>
    /// The prompt for the model's next reply, fitted to a context window of <paramref name="contextLength"/> tokens so
    /// that it leaves room for an answer: with <see cref="ContextOverflowPolicy.DropOldestTurns"/> the oldest exchanges
    /// are left out (never <paramref name="instructions"/>, which go before the first user utterance kept, nor the latest
    /// user message) until the prompt leaves at least <c>min(maxNewTokens, contextLength / 4)</c> tokens, and the answer's
    /// length is clamped to the room that remains.
    /// </summary>
    /// <param name="turns">The conversation so far; must end with the user's turn.</param>
    /// <param name="instructions">Text put before the first user utterance (rinna's models have no system role), or <c>null</c>.</param>
    /// <param name="countTokens">The prompt's length in tokens (the tokenizer's <c>Encode(text, addSpecialTokens: false).Length</c>).</param>
    /// <param name="contextLength">The model's context window (<c>max_position_embeddings</c>).</param>
    /// <param name="maxNewTokens">The answer length asked for.</param>
    /// <param name="policy">What to do when the conversation does not fit.</param>
    /// <exception cref="ArgumentException">The conversation is invalid, or it does not fit: under <see cref="ContextOverflowPolicy.Throw"/>
    /// whenever a turn would be dropped, and under either policy when the instructions and the latest user message alone leave no room.</exception>
    public RinnaChatPrompt BuildPrompt(IReadOnlyList<RinnaChatTurn> turns, string? instructions, Func<string, int> countTokens,
        int contextLength, int maxNewTokens, ContextOverflowPolicy policy = ContextOverflowPolicy.DropOldestTurns)
    {
        ArgumentNullException.ThrowIfNull(turns);
        ArgumentNullException.ThrowIfNull(countTokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(contextLength);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxNewTokens);
        if (!Enum.IsDefined(policy)) throw new ArgumentOutOfRangeException(nameof(policy), policy, "Unknown context overflow policy.");
        BuildPrompt(turns); // validates the conversation as a whole
        int reserve = Math.Max(1, Math.Min(maxNewTokens, contextLength / 4));
        // Candidate starts: every user turn, oldest first; the last one (the latest message) is always kept.
        var starts = Enumerable.Range(0, turns.Count).Where(i => i == 0 || turns[i].Speaker == RinnaSpeaker.User).ToList();
        (string Text, int Tokens) Prompt(int start)
        {
            var kept = turns.Skip(start).ToList();
            if (!string.IsNullOrWhiteSpace(instructions))
            {
                int firstUser = kept.FindIndex(t => t.Speaker == RinnaSpeaker.User);
                kept[firstUser] = kept[firstUser] with { Text = instructions + "\n" + kept[firstUser].Text };
            }
            var text = BuildPrompt(kept);
            return (text, countTokens(text));
        }
        bool Fits(int tokens) => tokens + reserve <= contextLength;

        var whole = Prompt(0);
        if (Fits(whole.Tokens)) return Clamp(whole, 0);
        if (policy == ContextOverflowPolicy.Throw)
            throw new ArgumentException(
                $"The conversation has {whole.Tokens} tokens and the answer needs {reserve} more, beyond the model's context of {contextLength} tokens.", nameof(turns));
        // The fewest dropped turns that fit, by binary search over the user turns to start from (the prompt shrinks as the start moves on).
        int low = 1, high = starts.Count - 1;
        while (low < high)
        {
            int middle = (low + high) / 2;
            if (Fits(Prompt(starts[middle]).Tokens)) high = middle; else low = middle + 1;
        }
        var fitted = Prompt(starts[high]);
        if (fitted.Tokens >= contextLength)
            throw new ArgumentException(
                $"The latest message{(string.IsNullOrWhiteSpace(instructions) ? "" : " with the instructions")} alone has {fitted.Tokens} tokens; " +
                $"the model's context is {contextLength} tokens. Shorten it.", nameof(turns));
        return Clamp(fitted, starts[high]);

        RinnaChatPrompt Clamp((string Text, int Tokens) prompt, int dropped)
        {
            int room = contextLength - prompt.Tokens;
            return new RinnaChatPrompt(prompt.Text, prompt.Tokens, dropped, Math.Min(maxNewTokens, room), maxNewTokens > room);
        }
    }

    /// <summary>
    /// The texts that start another utterance (<c>"ユーザー:"</c>, <c>"システム:"</c>): stop strings for a reply, so that
    /// the model does not go on to write the next turn. Small models also start one without the separator first, so the
    /// labels alone are the markers; the separator left before one is trimmed by <see cref="PostProcess"/>'s callers.
    /// </summary>
    public IReadOnlyList<string> TurnMarkers => [UserLabel + ":", SystemLabel + ":"];

    /// <summary>The model's output as plain text: <c>"&lt;NL&gt;"</c> becomes <c>"\n"</c> in <see cref="RinnaChatFormat.JapaneseNewlineTag"/>; unchanged otherwise.</summary>
    public string PostProcess(string output)
    {
        ArgumentNullException.ThrowIfNull(output);
        return Format == RinnaChatFormat.JapaneseNewlineTag ? output.Replace(NewlineTag, "\n", StringComparison.Ordinal) : output;
    }

    /// <summary>
    /// A streaming version of <see cref="PostProcess"/>: feed it the output pieces in order and it returns the same text
    /// <see cref="PostProcess"/> gives for the whole output, holding back a trailing <c>"&lt;"</c> or <c>"&lt;N"</c>
    /// until the next piece shows whether it starts a <c>"&lt;NL&gt;"</c>.
    /// </summary>
    public RinnaChatOutputStream CreateOutputStream() => new(this);

    private static RinnaChatFormat? FormatOfName(string? modelId)
    {
        if (string.IsNullOrWhiteSpace(modelId)) return null;
        var name = modelId.Replace('\\', '/').TrimEnd('/').Split('/')[^1].ToLowerInvariant();
        if (!name.Contains("-instruction")) return null;
        if (name.StartsWith("bilingual-gpt-neox", StringComparison.Ordinal)) return RinnaChatFormat.Bilingual;
        if (name.StartsWith("japanese-gpt-neox-3.6b", StringComparison.Ordinal)) return RinnaChatFormat.JapaneseNewlineTag;
        return null;
    }

    // Detection is a hint: an unreadable or malformed file tells nothing here, and loading the model reports it properly.
    private static string? RecordedName(string directory, string file, string property)
    {
        try
        {
            var path = Path.Combine(directory, file);
            if (!File.Exists(path)) return null;
            using var json = JsonDocument.Parse(BoundedFile.ReadAllBytes(path));
            return json.RootElement.ValueKind == JsonValueKind.Object && json.RootElement.TryGetProperty(property, out var value)
                && value.ValueKind == JsonValueKind.String ? value.GetString() : null;
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string Label(RinnaSpeaker speaker) => speaker == RinnaSpeaker.User ? UserLabel : SystemLabel;

    // The 3.6b tokenizer normalizes "\n" to a space, so the card writes newlines as "<NL>"; "\r\n" and "\r" count as one newline.
    private string EncodeNewlines(string text) => Format == RinnaChatFormat.JapaneseNewlineTag
        ? text.Replace("\r\n", NewlineTag, StringComparison.Ordinal).Replace('\r', '\n').Replace("\n", NewlineTag, StringComparison.Ordinal)
        : text;
}

/// <summary>Post-processes a streamed reply piece by piece; see <see cref="RinnaChatPromptBuilder.CreateOutputStream"/>. Not thread-safe.</summary>
public sealed class RinnaChatOutputStream
{
    private readonly RinnaChatPromptBuilder builder;
    private string held = "";

    internal RinnaChatOutputStream(RinnaChatPromptBuilder builder) => this.builder = builder;

    /// <summary>Adds the next piece of output and returns the text that is final.</summary>
    public string Push(string piece)
    {
        ArgumentNullException.ThrowIfNull(piece);
        if (builder.Format != RinnaChatFormat.JapaneseNewlineTag) return piece;
        var text = builder.PostProcess(held + piece);
        var hold = "<NL".Length;
        while (hold > 0 && !text.EndsWith("<NL"[..hold], StringComparison.Ordinal)) hold--;
        held = text[^hold..];
        return text[..^hold];
    }

    /// <summary>Ends the output: returns the text still held back.</summary>
    public string Flush()
    {
        var held = this.held;
        this.held = "";
        return held;
    }
}
