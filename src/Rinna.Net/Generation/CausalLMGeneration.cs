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

    /// <summary>Per model, whether prompt lookup has been paying (see <see cref="FallbackCandidateGenerator"/>).</summary>
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<GptNeoXForCausalLM, SpeculationMemory> SpeculationMemories = new();

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
    /// with greedy or multinomial decoding, beam search (<see cref="GenerationConfig.NumBeams"/>) or prompt lookup
    /// decoding (<see cref="GenerationConfig.PromptLookupNumTokens"/>), and HF's logits processors. Left-padded batches
    /// need <paramref name="attentionMask"/> (0 on pads); each row then matches its unpadded run. With several
    /// <see cref="GenerationConfig.NumReturnSequences"/> the output has that many consecutive rows per prompt.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="inputIds">Prompt ids <c>[batch, seq]</c> (int64, left-padded).</param>
    /// <param name="config">Decoding settings; <c>null</c> means <see cref="GenerationConfig(GptNeoXForCausalLM)"/>.</param>
    /// <param name="attentionMask">1 for tokens, 0 for left padding; <c>null</c> means no padding.</param>
    /// <param name="tokenizer">
    /// The model's tokenizer (HF's <c>tokenizer=</c> argument): needed for stop strings, and gives each row's text. Ids the
    /// tokenizer cannot decode (output rows beyond its vocabulary) are then never generated.
    /// </param>
    /// <param name="onStep">Called after every token on the generating thread (streaming); not available with beam search.</param>
    /// <param name="cancellationToken">Checked before every step; unfinished rows then report <see cref="FinishReason.Cancelled"/>.</param>
    /// <param name="assistantModel">
    /// HF's <c>assistant_model</c>: a smaller model with the same tokenizer that proposes tokens the model verifies in one
    /// pass (assisted decoding, for a batch of one prompt). Greedy output equals plain greedy output token for token;
    /// with sampling every token is drawn from the model and proposals are kept while they equal the draws.
    /// </param>
    /// <returns>HF's <c>[batch, prompt + new]</c> sequences (dispose the tensor) and, per row, the new ids, text and finish reason.</returns>
    /// <remarks>
    /// When a <see cref="ContinuousBatchingScheduler"/> serves the model's <c>Generate</c> calls (a host's does), greedy
    /// decoding and sampling of a left-padded batch run in its decode loop as one group
    /// (<see cref="ContinuousBatchingScheduler.GenerateBatchAsync"/>), beside the host's other requests: the same tokens
    /// for the same seed, and <paramref name="onStep"/> then runs on the scheduler's thread. This call waits for them.
    /// </remarks>
    /// <exception cref="ArgumentException">Invalid prompt, mask or settings, or a prompt that does not fit the model.</exception>
    /// <exception cref="ObjectDisposedException">The scheduler serving the model was disposed before the batch finished.</exception>
    public static GenerationOutput Generate(this GptNeoXForCausalLM model, Tensor inputIds, GenerationConfig? config = null,
        Tensor? attentionMask = null, PreTrainedTokenizer? tokenizer = null, Action<GenerationTracker>? onStep = null,
        CancellationToken cancellationToken = default, GptNeoXForCausalLM? assistantModel = null)
    {
        if (model is not null && inputIds is not null && assistantModel is null && ContinuousBatchingScheduler.ServingGenerate(model) is { } scheduler
            && JoinScheduler(scheduler, inputIds, config, attentionMask, tokenizer, onStep, cancellationToken) is { } served)
            return served;
        try
        {
            return GenerateOnThisThread(model!, inputIds!, config, attentionMask, tokenizer, onStep, cancellationToken, assistantModel);
        }
        finally
        {
            // A pool thread would keep the libgomp team this generation started for as long as the pool keeps the
            // thread, and every other team would stop spinning meanwhile (LibTorchOpenMp.RunOnOwnThread).
            Native.LibTorchOpenMp.ReleaseTeamOfPoolThread();
        }
    }

    /// <summary>
    /// Runs the batch as one group in the scheduler that serves the model, so that it shares the decode steps with the
    /// host's other requests; <c>null</c> when the settings or the mask are ones the scheduler does not take (beam search,
    /// prompt lookup, padding other than on the left), or the scheduler was disposed meanwhile: those run here.
    /// </summary>
    private static GenerationOutput? JoinScheduler(ContinuousBatchingScheduler scheduler, Tensor inputIds, GenerationConfig? config, Tensor? attentionMask,
        PreTrainedTokenizer? tokenizer, Action<GenerationTracker>? onStep, CancellationToken cancellationToken)
    {
        var settings = config ?? scheduler.Model.GenerationConfig();
        if (settings.NumBeams > 1 || settings.PromptLookupNumTokens is not null) return null;
        Task<GenerationOutput> generation;
        try
        {
            generation = scheduler.GenerateBatchAsync(inputIds, settings, attentionMask, tokenizer, onStep, cancellationToken: cancellationToken);
        }
        catch (Exception e) when (e is ArgumentException or ObjectDisposedException)
        {
            // Nothing was queued: the local path says what is wrong with the batch, or runs what the scheduler does not
            // take (padding not on the left) or no longer can (disposed meanwhile).
            return null;
        }
        var output = generation.GetAwaiter().GetResult();
        // As the local path does: the sequences belong to the caller's dispose scope, if it has one.
        var sequences = output.Sequences.alias();
        output.Sequences.Dispose();
        return output with { Sequences = sequences };
    }

    private static GenerationOutput GenerateOnThisThread(GptNeoXForCausalLM model, Tensor inputIds, GenerationConfig? config, Tensor? attentionMask,
        PreTrainedTokenizer? tokenizer, Action<GenerationTracker>? onStep, CancellationToken cancellationToken, GptNeoXForCausalLM? assistantModel)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(inputIds);
        config ??= model.GenerationConfig();
        config.Validate();
        if (inputIds.dim() != 2 || inputIds.shape[1] == 0)
            throw new ArgumentException($"input ids must be [batch, seq] with seq > 0; got [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        int promptLength = (int)inputIds.shape[1];
        int rows = (int)inputIds.shape[0] * (config.NumBeams > 1 ? config.NumBeams : config.NumReturnSequences);
        (config, int reserve) = FitToContext(model, config, promptLength, rows);
        int newTokens = config.MaxNewTokens!.Value;
        if (assistantModel is not null && (config.NumBeams > 1 || config.PromptLookupNumTokens is not null))
            throw new ArgumentException("An assistant model works with greedy decoding or sampling, not with beam search or prompt lookup.", nameof(assistantModel));
        if (config.NumBeams > 1 && onStep is not null)
            throw new ArgumentException("Beam search decides the output only at the end, so it cannot stream (onStep); as in Hugging Face.", nameof(onStep));

        // As if the caller had written input_ids.to(model.device): the loop and its processors run beside the embedding.
        using var scope = NewDisposeScope();
        var ids = inputIds.to(ScalarType.Int64, model.Device);
        var mask = (attentionMask ?? ones_like(ids)).to(ScalarType.Int64, ids.device);
        if (!mask.shape.SequenceEqual(ids.shape))
            throw new ArgumentException($"attention mask must match the prompt's shape [{string.Join(", ", ids.shape)}].", nameof(attentionMask));
        // HF's _expand_inputs_for_generation: each prompt is repeated once per beam, or per returned sample, in consecutive rows.
        int copies = config.NumBeams > 1 ? config.NumBeams : config.NumReturnSequences;
        if (copies > 1)
        {
            ids = ids.repeat_interleave(copies, 0);
            mask = mask.repeat_interleave(copies, 0);
        }
        using var stepper = new ModelStepper(model, mask, reserve, promptLength + newTokens);
        Func<StreamingDecoder>? createDecoder = tokenizer is null ? null : () => tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        ILogitsProcessor[]? extra = tokenizer is not null && tokenizer.Count < model.Config.VocabSize
            ? [new VocabularyLimitLogitsProcessor(tokenizer.Count)]
            : null;
        var output = config switch
        {
            { NumBeams: > 1 } => BeamSearch.Run(ids, fed => stepper.Forward(fed), stepper.Reorder, config, createDecoder, extra, cancellationToken),
            { PromptLookupNumTokens: int k } => SpeculativeDecoding.Run(ids, stepper, new FallbackCandidateGenerator(new PromptLookupCandidateGenerator(k), SpeculationMemories.GetOrCreateValue(model)), config,
                createDecoder, onStep, extra, cancellationToken),
            _ when assistantModel is not null => Assisted(model, assistantModel, ids, mask, reserve, stepper, config, createDecoder, onStep, extra, cancellationToken),
            _ => GenerationLoop.Run(ids, fed => stepper.Forward(fed), config, createDecoder, onStep, extra, cancellationToken),
        };
        output.Sequences.MoveToOuterDisposeScope();
        return output;
    }

    /// <summary>
    /// The settings with the answer clamped to the model's positions (with a warning, as transformers warns) and to
    /// <see cref="GenerationConfig.MaxCacheBytes"/>, and the cache room to reserve: the prompt and a short answer, since
    /// caches double as tokens come, so memory follows what is generated, not what was asked for.
    /// </summary>
    /// <exception cref="ArgumentException">The prompt alone needs more KV cache than <see cref="GenerationConfig.MaxCacheBytes"/> allows.</exception>
    internal static (GenerationConfig Config, int Reserve) FitToContext(GptNeoXForCausalLM model, GenerationConfig config, int promptLength, int rows = 1)
    {
        int newTokens = config.ResolveMaxNewTokens(promptLength);
        int context = model.Config.MaxPositionEmbeddings;
        // Positions past max_position_embeddings were never trained (RoPE scaling extends them).
        if (model.Config.RopeScaling is null && (long)promptLength + newTokens > context)
        {
            int clamped = Math.Max(1, context - promptLength);
            model.Logger.LogWarning("{Requested} new tokens after a {Prompt}-token prompt exceed the model's {Context} positions; generating at most {Clamped}",
                newTokens, promptLength, context, clamped);
            newTokens = clamped;
        }
        if (config.MaxCacheBytes is long budget)
        {
            long perToken = CacheBytesPerToken(model, rows);
            long fits = budget / perToken;
            if (fits < promptLength + 1L)
                throw new ArgumentException($"The prompt of {promptLength} tokens needs {(promptLength + 1L) * perToken} bytes of KV cache to answer; "
                    + $"GenerationConfig.MaxCacheBytes allows {budget}.", nameof(config));
            if (promptLength + (long)newTokens > fits)
            {
                int clamped = (int)(fits - promptLength);
                model.Logger.LogWarning("{Requested} new tokens after a {Prompt}-token prompt need more KV cache than MaxCacheBytes ({Budget} bytes) allows; generating at most {Clamped}",
                    newTokens, promptLength, budget, clamped);
                newTokens = clamped;
            }
        }
        return (config with { MaxNewTokens = newTokens }, promptLength + Math.Min(newTokens, InitialAnswerReserve));
    }

    /// <summary>KV cache bytes per token over all layers and rows: float32 keys (as HF keeps them) and values in the compute dtype.</summary>
    private static long CacheBytesPerToken(GptNeoXForCausalLM model, int rows)
    {
        var c = model.Config;
        long valueBytes = model.ComputeDType switch { ScalarType.Float32 => 4, _ => 2 };
        return (long)rows * c.NumHiddenLayers * c.HiddenSize * (sizeof(float) + valueBytes);
    }

    private static GenerationOutput Assisted(GptNeoXForCausalLM model, GptNeoXForCausalLM assistant, Tensor ids, Tensor mask, int reserve,
        ModelStepper stepper, GenerationConfig config, Func<StreamingDecoder>? createDecoder, Action<GenerationTracker>? onStep,
        IEnumerable<ILogitsProcessor>? extra, CancellationToken cancellationToken)
    {
        using var generator = new AssistedCandidateGenerator(assistant, mask, reserve, model.Config.VocabSize, config, extra);
        return SpeculativeDecoding.Run(ids, stepper, generator, config, createDecoder, onStep, extra, cancellationToken);
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
    /// <param name="assistantModel">A smaller model with the same tokenizer for assisted decoding (HF's <c>assistant_model</c>).</param>
    /// <returns>The prompt's ids followed by the generated ids.</returns>
    /// <exception cref="ArgumentException">An empty prompt, invalid settings, or a prompt that does not fit the model.</exception>
    public static int[] Generate(this GptNeoXForCausalLM model, IReadOnlyList<int> inputIds, GenerationConfig? config = null,
        PreTrainedTokenizer? tokenizer = null, CancellationToken cancellationToken = default, GptNeoXForCausalLM? assistantModel = null)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        using var scope = NewDisposeScope();
        using var ids = tensor(inputIds.Select(i => (long)i).ToArray(), ScalarType.Int64).unsqueeze(0);
        var output = model.Generate(ids, config, tokenizer: tokenizer, cancellationToken: cancellationToken, assistantModel: assistantModel);
        using var sequences = output.Sequences;
        return sequences[0].cpu().data<long>().Select(i => (int)i).ToArray();
    }

    /// <inheritdoc cref="Generate(GptNeoXForCausalLM, IReadOnlyList{int}, GenerationConfig?, PreTrainedTokenizer?, CancellationToken, GptNeoXForCausalLM?)"/>
    /// <remarks>
    /// Takes the <c>int[]</c> that <see cref="PreTrainedTokenizer.Encode"/> returns, which TorchSharp would otherwise
    /// also convert to a tensor, making the call ambiguous.
    /// </remarks>
    public static int[] Generate(this GptNeoXForCausalLM model, int[] inputIds, GenerationConfig? config = null,
        PreTrainedTokenizer? tokenizer = null, CancellationToken cancellationToken = default, GptNeoXForCausalLM? assistantModel = null) =>
        Generate(model, (IReadOnlyList<int>)inputIds, config, tokenizer, cancellationToken, assistantModel);
}
