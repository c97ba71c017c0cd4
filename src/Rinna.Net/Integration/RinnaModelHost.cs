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
