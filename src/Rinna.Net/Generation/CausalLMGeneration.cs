using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary><c>model.generate(...)</c> and <c>model.generation_config</c> for causal language models.</summary>
public static class CausalLMGeneration
{
    /// <summary>New tokens the KV cache has room for before it first grows.</summary>
    private const int InitialAnswerReserve = 16;

    private static readonly ConditionalWeakTable<GptNeoXForCausalLM, GenerationConfig> Defaults = new();

    /// <summary>
    /// The model's default generation settings (HF's <c>model.generation_config</c>): its <c>generation_config.json</c>
    /// when it has one, otherwise the bos/eos ids of its <c>config.json</c> with HF's defaults for everything else.
    /// Override per call with <c>with</c>: <c>model.GenerationConfig() with { MaxNewTokens = 128, DoSample = true }</c>.
    /// </summary>
    /// <exception cref="ModelConfigException"><c>generation_config.json</c> exists but is invalid.</exception>
    public static GenerationConfig GenerationConfig(this GptNeoXForCausalLM model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return Defaults.GetValue(model, m =>
        {
            var file = m.SourceDirectory is null ? null : Path.Combine(m.SourceDirectory, "generation_config.json");
            if (file is not null && File.Exists(file)) return Generation.GenerationConfig.FromFile(file);
            return new GenerationConfig
            {
                BosTokenId = m.Config.BosTokenId,
                EosTokenId = m.Config.EosTokenId is int eos ? [eos] : null,
            };
        });
    }

    /// <summary>
    /// Continues each row of <paramref name="inputIds"/>: HF's <c>model.generate(input_ids, attention_mask=..., ...)</c>
    /// with greedy or multinomial decoding and HF's logits processors. Left-padded batches need
    /// <paramref name="attentionMask"/> (0 on pads); each row then matches its unpadded run.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="inputIds">Prompt ids <c>[batch, seq]</c> (int64, left-padded).</param>
    /// <param name="config">Decoding settings; <c>null</c> means <see cref="GenerationConfig(GptNeoXForCausalLM)"/>.</param>
    /// <param name="attentionMask">1 for tokens, 0 for left padding; <c>null</c> means no padding.</param>
    /// <param name="tokenizer">
    /// The model's tokenizer (HF's <c>tokenizer=</c> argument): needed for stop strings, and gives each row's text. Ids the
    /// tokenizer cannot decode (output rows beyond its vocabulary) are then never generated.
    /// </param>
    /// <param name="onStep">Called after every step on the generating thread (streaming).</param>
    /// <param name="cancellationToken">Checked before every step; unfinished rows then report <see cref="FinishReason.Cancelled"/>.</param>
    /// <returns>HF's <c>[batch, prompt + new]</c> sequences (dispose the tensor) and, per row, the new ids, text and finish reason.</returns>
    /// <exception cref="ArgumentException">Invalid prompt, mask or settings, or a prompt that does not fit the model.</exception>
    public static GenerationOutput Generate(this GptNeoXForCausalLM model, Tensor inputIds, GenerationConfig? config = null,
        Tensor? attentionMask = null, PreTrainedTokenizer? tokenizer = null, Action<GenerationTracker>? onStep = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(inputIds);
        config ??= model.GenerationConfig();
        config.Validate();
        if (inputIds.dim() != 2 || inputIds.shape[1] == 0)
            throw new ArgumentException($"input ids must be [batch, seq] with seq > 0; got [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        int promptLength = (int)inputIds.shape[1];
        int newTokens = config.ResolveMaxNewTokens(promptLength);
        int context = model.Config.MaxPositionEmbeddings;
        // Positions past max_position_embeddings were never trained (RoPE scaling extends them), so a longer request is
        // clamped with a warning, as transformers warns.
        if (model.Config.RopeScaling is null && (long)promptLength + newTokens > context)
        {
            int clamped = Math.Max(1, context - promptLength);
            model.Logger.LogWarning("{Requested} new tokens after a {Prompt}-token prompt exceed the model's {Context} positions; generating at most {Clamped}",
                newTokens, promptLength, context, clamped);
            newTokens = clamped;
            config = config with { MaxNewTokens = newTokens };
        }

        // As if the caller had written input_ids.to(model.device): the loop and its processors run beside the embedding.
        using var ids = inputIds.to(ScalarType.Int64, model.Device);
        // Room for the prompt and a short answer; the cache doubles as tokens come, so memory follows what is generated,
        // not what was asked for.
        using var cache = new KeyValueCache(model.Config.NumHiddenLayers, promptLength + Math.Min(newTokens, InitialAnswerReserve));
        var mask = (attentionMask ?? ones_like(ids)).to(ScalarType.Int64, ids.device).clone().DetachFromDisposeScope();
        if (!mask.shape.SequenceEqual(ids.shape))
            throw new ArgumentException($"attention mask must match the prompt's shape [{string.Join(", ", ids.shape)}].", nameof(attentionMask));
        try
        {
            return GenerationLoop.Run(ids, fed =>
            {
                if (cache.Length > 0)
                {
                    var grown = cat([mask, ones(mask.shape[0], 1, ScalarType.Int64, mask.device)], 1).DetachFromDisposeScope();
                    mask.Dispose();
                    mask = grown;
                }
                // HF's prepare_inputs_for_generation: positions count real tokens only; pads get position 1.
                var positions = mask.cumsum(-1).sub_(1).masked_fill_(mask.eq(0), 1);
                positions = positions.narrow(1, positions.shape[1] - fed.shape[1], fed.shape[1]);
                using var output = model.Forward(fed, mask, positions, cache, useCache: true, lastPositionOnly: true);
                return output.Logits.select(1, 0).clone();
            }, config, tokenizer is null ? null : () => tokenizer.CreateStreamingDecoder(skipSpecialTokens: true), onStep,
                tokenizer is not null && tokenizer.Count < model.Config.VocabSize ? [new VocabularyLimitLogitsProcessor(tokenizer.Count)] : null,
                cancellationToken);
        }
        finally
        {
            mask.Dispose();
        }
    }

    /// <summary>
    /// Continues one prompt given as token ids: the model card's
    /// <c>output_ids = model.generate(token_ids, ...)</c> followed by <c>output_ids.tolist()[0]</c>.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="inputIds">The prompt's token ids, e.g. from <see cref="PreTrainedTokenizer.Encode"/> with <c>addSpecialTokens: false</c>.</param>
    /// <param name="config">Decoding settings; <c>null</c> means <see cref="GenerationConfig(GptNeoXForCausalLM)"/>.</param>
    /// <param name="tokenizer">The model's tokenizer: needed for stop strings, and keeps ids it cannot decode from being generated.</param>
    /// <param name="cancellationToken">Checked before every step; the ids generated so far are returned.</param>
    /// <returns>The prompt's ids followed by the generated ids.</returns>
    /// <exception cref="ArgumentException">An empty prompt, invalid settings, or a prompt that does not fit the model.</exception>
    public static int[] Generate(this GptNeoXForCausalLM model, IReadOnlyList<int> inputIds, GenerationConfig? config = null,
        PreTrainedTokenizer? tokenizer = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        using var scope = NewDisposeScope();
        using var ids = tensor(inputIds.Select(i => (long)i).ToArray(), ScalarType.Int64).unsqueeze(0);
        var output = model.Generate(ids, config, tokenizer: tokenizer, cancellationToken: cancellationToken);
        using var sequences = output.Sequences;
        return sequences[0].cpu().data<long>().Select(i => (int)i).ToArray();
    }

    /// <inheritdoc cref="Generate(GptNeoXForCausalLM, IReadOnlyList{int}, GenerationConfig?, PreTrainedTokenizer?, CancellationToken)"/>
    /// <remarks>
    /// Takes the <c>int[]</c> that <see cref="PreTrainedTokenizer.Encode"/> returns, which TorchSharp would otherwise
    /// also convert to a tensor, making the call ambiguous.
    /// </remarks>
    public static int[] Generate(this GptNeoXForCausalLM model, int[] inputIds, GenerationConfig? config = null,
        PreTrainedTokenizer? tokenizer = null, CancellationToken cancellationToken = default) =>
        Generate(model, (IReadOnlyList<int>)inputIds, config, tokenizer, cancellationToken);
}
