namespace Rinna.Net.Generation;

/// <summary>Hugging Face's <c>num_assistant_tokens_schedule</c>: how many tokens an assistant model proposes per round.</summary>
public enum AssistantTokensSchedule
{
    /// <summary><c>"heuristic"</c>: +2 after a round whose proposals were all accepted, −1 (to at least 1) otherwise; the count carries over to the assistant's next generation.</summary>
    Heuristic,

    /// <summary><c>"heuristic_transient"</c>: as <see cref="Heuristic"/>, starting again from <see cref="GenerationConfig.NumAssistantTokens"/> every generation.</summary>
    HeuristicTransient,

    /// <summary><c>"constant"</c>: always <see cref="GenerationConfig.NumAssistantTokens"/>.</summary>
    Constant,
}
