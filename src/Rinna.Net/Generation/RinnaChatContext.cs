namespace Rinna.Net.Generation;

/// <summary>What to do when a conversation and its answer do not fit the model's context window.</summary>
public enum ContextOverflowPolicy
{
    /// <summary>
    /// Drop the oldest exchanges (a user turn and the replies that follow it) until the prompt leaves room for the
    /// answer, keeping the instructions and the latest user message; then clamp the answer's length to what fits.
    /// </summary>
    DropOldestTurns,

    /// <summary>Refuse with an <see cref="ArgumentException"/> rather than drop anything.</summary>
    Throw,
}

/// <summary>A conversation's prompt fitted to a context window.</summary>
/// <param name="Text">The prompt text.</param>
/// <param name="PromptTokens">Its length in tokens.</param>
/// <param name="DroppedTurns">How many of the oldest turns were left out to make it fit.</param>
/// <param name="MaxNewTokens">The requested answer length, clamped to the room the prompt leaves.</param>
/// <param name="MaxNewTokensClamped">Whether <paramref name="MaxNewTokens"/> is less than what was requested.</param>
public sealed record RinnaChatPrompt(string Text, int PromptTokens, int DroppedTurns, int MaxNewTokens, bool MaxNewTokensClamped);
