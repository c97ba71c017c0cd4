using Rinna.Net.Hub;

namespace Rinna.Net.Tokenization;

/// <summary>Which end of a sequence receives padding (and, for generation, where the prompt is aligned).</summary>
public enum PaddingSide
{
    /// <summary>Pad after the tokens (Hugging Face's default).</summary>
    Right,

    /// <summary>Pad before the tokens, so every prompt ends at the last position; what batched generation needs.</summary>
    Left,
}

/// <summary>Options of <see cref="AutoTokenizer.FromPretrainedAsync"/>: Hugging Face's <c>AutoTokenizer.from_pretrained</c> keyword arguments.</summary>
public class TokenizerOptions : HubOptions
{
    /// <summary>
    /// Hugging Face's <c>use_fast</c> (default <c>true</c>): <c>true</c> prefers <c>tokenizer.json</c>
    /// (<see cref="PreTrainedTokenizerFast"/>), <c>false</c> the slow SentencePiece tokenizer, which is what rinna's model
    /// cards ask for. A model with only one kind gets that kind, with a logged warning; so does a model whose
    /// <c>tokenizer.json</c> uses a component this library does not implement when a SentencePiece model is beside it.
    /// </summary>
    public bool UseFast { get; set; } = true;

    /// <summary>Overrides <c>padding_side</c> of <c>tokenizer_config.json</c> (default <see cref="Tokenization.PaddingSide.Right"/>).</summary>
    public PaddingSide? PaddingSide { get; set; }

    /// <summary>Overrides <c>model_max_length</c> of <c>tokenizer_config.json</c>.</summary>
    public int? ModelMaxLength { get; set; }
}
