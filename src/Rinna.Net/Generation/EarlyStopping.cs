namespace Rinna.Net.Generation;

/// <summary>Hugging Face's <c>early_stopping</c> of beam search (<c>true</c>, <c>false</c> or <c>"never"</c>).</summary>
public enum EarlyStopping
{
    /// <summary>
    /// <c>false</c>: a prompt's search stops once it holds <see cref="GenerationConfig.NumBeams"/> finished hypotheses
    /// and the best running beam, scored at the current length, cannot beat the worst of them (Hugging Face's heuristic).
    /// </summary>
    False,

    /// <summary><c>true</c>: a prompt's search stops as soon as it holds <see cref="GenerationConfig.NumBeams"/> finished hypotheses.</summary>
    True,

    /// <summary>
    /// <c>"never"</c>: the canonical beam search: stops only when no running beam can still beat the worst finished
    /// hypothesis, scoring it at the maximum length when <see cref="GenerationConfig.LengthPenalty"/> is positive.
    /// </summary>
    Never,
}
