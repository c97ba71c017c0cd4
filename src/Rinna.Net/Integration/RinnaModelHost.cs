using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Model.DeviceMap;
using Rinna.Net.Model.Quantization;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Integration;

/// <summary>
/// Owns one loaded model and its tokenizer for a host: loads them once (on first use, or at start), hands them out,
/// and disposes them with the container. Chat requests on the shared model, and the model's own greedy and sampling
/// <c>Generate</c> calls, go through one <see cref="ContinuousBatchingScheduler"/> (<see cref="GetSchedulerAsync"/>):
/// concurrent requests are decoded together, at most <see cref="RinnaOptions.MaxBatchSize"/> rows at a time, the rest
/// waiting in arrival order.
/// </summary>
public sealed class RinnaModelHost : IAsyncDisposable, IDisposable
{
    private readonly RinnaOptions options;
    private readonly ILoggerFactory? loggerFactory;
    private readonly Lock loading = new();
    private Task<(GptNeoXForCausalLM Model, PreTrainedTokenizer Tokenizer)>? loaded;
    private DateTimeOffset retryAfter;
    private int failures;
    private readonly SemaphoreSlim gate = new(1, 1);
    private ContinuousBatchingScheduler? scheduler;
    private bool disposed;

    /// <summary>Creates the host; nothing is loaded until <see cref="GetAsync"/>.</summary>
    public RinnaModelHost(IOptions<RinnaOptions> options, ILoggerFactory? loggerFactory = null)
    {
        this.options = options.Value;
        this.loggerFactory = loggerFactory;
        if (this.options.PrefixCacheBytes < 0)
            throw new ArgumentException($"RinnaOptions.PrefixCacheBytes must be 0 or more; got {this.options.PrefixCacheBytes}.", nameof(options));
        if (this.options.MaxBatchSize < 1)
            throw new ArgumentException($"RinnaOptions.MaxBatchSize must be at least 1; got {this.options.MaxBatchSize}.", nameof(options));
        if (this.options.PrefillChunkTokens < 1)
            throw new ArgumentException($"RinnaOptions.PrefillChunkTokens must be at least 1; got {this.options.PrefillChunkTokens}.", nameof(options));
        if (string.IsNullOrWhiteSpace(this.options.ModelId))
            throw new ArgumentException("RinnaOptions.ModelId is required (a model id such as rinna/bilingual-gpt-neox-4b-instruction-ppo, or a directory).", nameof(options));
        PromptBuilder = RinnaChatPromptBuilder.ForModel(this.options.ModelId,
            this.options.ChatFormat ?? RinnaChatPromptBuilder.DetectFormat(this.options.ModelId) ?? RinnaChatFormat.Bilingual);
    }

    /// <summary>The configured options.</summary>
    public RinnaOptions Options => options;

    /// <summary>Where requests log what they changed about themselves (dropped turns, a clamped answer length).</summary>
    internal ILogger Logger => field ??= (ILogger?)loggerFactory?.CreateLogger<RinnaChatClient>() ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

    /// <summary>Builds prompts in the model's conversation format.</summary>
    public RinnaChatPromptBuilder PromptBuilder { get; }

    /// <summary>
    /// The model and tokenizer, loading them on the first call (later calls share that load). A failed load is tried
    /// again by the first call after <see cref="RinnaOptions.LoadRetryDelay"/> (doubling per failure); calls before then
    /// get its exception.
    /// </summary>
    public async Task<(GptNeoXForCausalLM Model, PreTrainedTokenizer Tokenizer)> GetAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        Task<(GptNeoXForCausalLM, PreTrainedTokenizer)> load;
        lock (loading)
        {
            if (loaded is { IsFaulted: true } && DateTimeOffset.UtcNow >= retryAfter) loaded = null;
            load = loaded ??= LoadAsync();
        }
        var result = await load.WaitAsync(cancellationToken).ConfigureAwait(false);
        // From here on the model's Generate calls join the scheduler's batch too.
        lock (loading)
            if (!disposed) EnsureScheduler(result.Item1);
        return result;
    }

    /// <summary>Whether the model is loaded, and the last load failure if there was one: for health checks.</summary>
    public (bool Loaded, Exception? Failure) LoadState
    {
        get
        {
            lock (loading)
                return loaded switch
                {
                    { IsCompletedSuccessfully: true } => (true, null),
                    { IsFaulted: true } failed => (false, failed.Exception?.InnerException),
                    _ => (false, null),
                };
        }
    }

    /// <summary>
    /// The scheduler every chat request on the model goes through, created with the model (loading it on the first call,
    /// as <see cref="GetAsync"/> does).
    /// </summary>
    /// <exception cref="ObjectDisposedException">The host was disposed.</exception>
    public async Task<ContinuousBatchingScheduler> GetSchedulerAsync(CancellationToken cancellationToken = default)
    {
        var (model, _) = await GetAsync(cancellationToken).ConfigureAwait(false);
        lock (loading)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            return EnsureScheduler(model);
        }
    }

    private ContinuousBatchingScheduler EnsureScheduler(GptNeoXForCausalLM model) =>
        scheduler ??= new ContinuousBatchingScheduler(model, options.MaxBatchSize,
            loggerFactory?.CreateLogger<ContinuousBatchingScheduler>(), options.PrefixCacheBytes, options.PrefillChunkTokens, servesGenerate: true);

    /// <summary>
    /// Continues raw text prompts, without a chat format (OpenAI's <c>/v1/completions</c>; transformers' <c>generate</c>
    /// on a left-padded batch of encoded texts): the prompts, each repeated <paramref name="choicesPerPrompt"/> times, run
    /// as one batch in the model's scheduler (<see cref="ContinuousBatchingScheduler.GenerateBatchAsync"/>) beside the
    /// chat requests. <paramref name="options"/> mean what they mean for chat (temperature 0 is greedy; a seed draws the
    /// same batch again); the answer's length defaults to <see cref="RinnaOptions.MaxNewTokens"/>.
    /// </summary>
    /// <param name="prompts">The texts to continue, encoded as the model cards do (no special tokens).</param>
    /// <param name="options">Sampling settings, token limit, stop sequences and seed; <c>null</c> uses the host's defaults.</param>
    /// <param name="choicesPerPrompt">Continuations per prompt (OpenAI's <c>n</c>), in consecutive results.</param>
    /// <param name="onText">Called with a result's index and each new piece of its text, on the scheduler's thread (streaming).</param>
    /// <param name="cancellationToken">Ends every unfinished continuation with <see cref="FinishReason.Cancelled"/>.</param>
    /// <returns>Per prompt and choice, in that order: the text (ending before a stop sequence), ids, prompt length and finish reason.</returns>
    /// <exception cref="ArgumentException">No prompts, an empty prompt or one longer than the model's context, or invalid settings.</exception>
    /// <exception cref="NotSupportedException">Options the model cannot honour (frequency or presence penalties, tools), or prompts of different lengths with a tokenizer that has no pad token.</exception>
    /// <exception cref="ObjectDisposedException">The host was disposed.</exception>
    public async Task<IReadOnlyList<GeneratedText>> CompleteAsync(IReadOnlyList<string> prompts, ChatOptions? options = null, int choicesPerPrompt = 1,
        Action<int, string>? onText = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        if (prompts.Count == 0) throw new ArgumentException("There are no prompts to complete.", nameof(prompts));
        ArgumentOutOfRangeException.ThrowIfLessThan(choicesPerPrompt, 1);
        var (model, tokenizer) = await GetAsync(cancellationToken).ConfigureAwait(false);
        var scheduler = await GetSchedulerAsync(cancellationToken).ConfigureAwait(false);
        var config = RinnaChatClient.ToGenerationConfig(Options, options, tokenizer.EosTokenId, tokenizer.PadTokenId) with { NumReturnSequences = choicesPerPrompt };
        BatchEncoding batch;
        try
        {
            // Left-padded as for generation; encoded as the model cards do (no special tokens).
            batch = tokenizer.BatchEncode(prompts, addSpecialTokens: false, PaddingSide.Left);
        }
        catch (InvalidOperationException e)
        {
            throw new NotSupportedException("Prompts of different lengths are padded to run together, and this tokenizer has no pad token; send them one at a time.", e);
        }
        var promptTokens = new int[batch.BatchSize];
        for (int row = 0; row < batch.BatchSize; row++)
        {
            for (int j = 0; j < batch.SequenceLength; j++) promptTokens[row] += (int)batch.AttentionMask[row, j];
            TextGeneration.CheckPromptLength(model, promptTokens[row]);
        }
        Task<GenerationOutput> generation;
        using (var ids = batch.InputIdsTensor())
        using (var mask = batch.AttentionMaskTensor())
            generation = scheduler.GenerateBatchAsync(ids, config, mask, tokenizer, onText is null ? null : tracker =>
            {
                for (int row = 0; row < tracker.BatchSize; row++)
                    if (tracker.TakeText(row) is { Length: > 0 } piece) onText(row, piece);
            }, cancellationToken: cancellationToken);
        var output = await generation.ConfigureAwait(false);
        output.Sequences.Dispose();
        return output.Rows.Select((row, i) => new GeneratedText(row.Text ?? "", row.TokenIds, promptTokens[i / choicesPerPrompt], row.FinishReason, row.StopString))
            .ToArray();
    }

    /// <summary>
    /// Runs <paramref name="work"/> with exclusive use of the model among callers of this method and
    /// <see cref="AcquireAsync"/> (they are served one at a time); the scheduler's batch may run beside it.
    /// </summary>
    public async Task<T> RunExclusiveAsync<T>(Func<GptNeoXForCausalLM, PreTrainedTokenizer, T> work, CancellationToken cancellationToken)
    {
        var (model, tokenizer) = await GetAsync(cancellationToken).ConfigureAwait(false);
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // A thread of its own, so that no pool thread keeps a libgomp team (LibTorchOpenMp.RunOnOwnThread).
            return await Native.LibTorchOpenMp.RunOnOwnThread(() => work(model, tokenizer), "Rinna.Net exclusive work", cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>Waits for exclusive use of the model among callers of this method and <see cref="RunExclusiveAsync"/>; dispose the result to release it.</summary>
    public async Task<IDisposable> AcquireAsync(CancellationToken cancellationToken)
    {
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        return new Release(gate);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        ContinuousBatchingScheduler? running;
        lock (loading)
        {
            if (disposed) return;
            disposed = true;
            running = scheduler;
        }
        // The loop stops after its current step (its requests fail with ObjectDisposedException) before the model goes.
        running?.Dispose();
        lock (loading)
            if (loaded is { IsCompletedSuccessfully: true }) loaded.Result.Model.Dispose();
        gate.Dispose();
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    private async Task<(GptNeoXForCausalLM, PreTrainedTokenizer)> LoadAsync()
    {
        try
        {
            var result = await LoadOnceAsync().ConfigureAwait(false);
            lock (loading) failures = 0;
            return result;
        }
        catch (Exception e)
        {
            TimeSpan delay;
            lock (loading)
            {
                failures++;
                delay = TimeSpan.FromTicks(Math.Min(options.MaxLoadRetryDelay.Ticks,
                    options.LoadRetryDelay.Ticks * (1L << Math.Min(failures - 1, 30))));
                retryAfter = DateTimeOffset.UtcNow + delay;
            }
            loggerFactory?.CreateLogger<RinnaModelHost>().LogError(e, "Loading {Model} failed; the next request after {Delay} tries again", options.ModelId, delay);
            throw;
        }
    }

    private async Task<(GptNeoXForCausalLM, PreTrainedTokenizer)> LoadOnceAsync()
    {
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(options.TokenizerId ?? options.ModelId, new TokenizerOptions
        {
            UseFast = false, Revision = options.Revision, CacheDir = options.CacheDir, LocalFilesOnly = options.LocalFilesOnly,
            Token = options.Token, Endpoint = options.Endpoint, LoggerFactory = loggerFactory,
        }).ConfigureAwait(false);
        var model = await AutoModelForCausalLM.FromPretrainedAsync(options.ModelId, new ModelLoadOptions
        {
            TorchDtype = options.TorchDtype, Revision = options.Revision, CacheDir = options.CacheDir,
            LocalFilesOnly = options.LocalFilesOnly, Token = options.Token, Endpoint = options.Endpoint, LoggerFactory = loggerFactory,
            LoadIn8Bit = options.LoadIn8Bit,
            QuantizationConfig = new QuantizationConfig
            {
                LoadIn8Bit = options.LoadIn8Bit, Int8Threshold = options.Int8Threshold, SkipModules = options.Int8SkipModules ?? ["embed_out"],
                LoadIn4Bit = options.LoadIn4Bit, Bnb4BitQuantType = options.Bnb4BitQuantType,
                Bnb4BitUseDoubleQuant = options.Bnb4BitUseDoubleQuant, Bnb4BitComputeDtype = options.Bnb4BitComputeDtype,
            },
            DeviceMap = options.DeviceMap is { } map ? (DeviceMapSpec)map : null,
            MaxMemory = options.MaxMemory is { } budgets ? ToMaxMemory(budgets) : null,
        }).ConfigureAwait(false);
        loggerFactory?.CreateLogger<RinnaModelHost>().LogInformation("Loaded {Model} for chat ({Format} format)", options.ModelId, PromptBuilder.Format);
        return (model, tokenizer);
    }

    private static MaxMemory ToMaxMemory(Dictionary<string, string> budgets)
    {
        var maxMemory = new MaxMemory();
        foreach (var (device, size) in budgets) maxMemory.Add(device, size);
        return maxMemory;
    }

    private sealed class Release(SemaphoreSlim gate) : IDisposable
    {
        private int released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref released, 1) == 0) gate.Release();
        }
    }
}
