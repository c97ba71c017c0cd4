using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Integration;

/// <summary>
/// Owns one loaded model and its tokenizer for a host: loads them once (on first use, or at start), hands them out,
/// and disposes them with the container. Generation requests on the shared model are serialised (one at a time, in
/// arrival order), which keeps latency predictable and memory bounded on CPUs where one request already uses every core.
/// </summary>
public sealed class RinnaModelHost : IAsyncDisposable, IDisposable
{
    private readonly RinnaOptions options;
    private readonly ILoggerFactory? loggerFactory;
    private readonly Lazy<Task<(GptNeoXForCausalLM Model, PreTrainedTokenizer Tokenizer)>> loaded;
    private readonly SemaphoreSlim gate = new(1, 1);
    private bool disposed;

    /// <summary>Creates the host; nothing is loaded until <see cref="GetAsync"/>.</summary>
    public RinnaModelHost(IOptions<RinnaOptions> options, ILoggerFactory? loggerFactory = null)
    {
        this.options = options.Value;
        this.loggerFactory = loggerFactory;
        if (string.IsNullOrWhiteSpace(this.options.ModelId))
            throw new ArgumentException("RinnaOptions.ModelId is required (a model id such as rinna/bilingual-gpt-neox-4b-instruction-ppo, or a directory).", nameof(options));
        loaded = new(LoadAsync, LazyThreadSafetyMode.ExecutionAndPublication);
        PromptBuilder = RinnaChatPromptBuilder.ForModel(this.options.ModelId,
            this.options.ChatFormat ?? RinnaChatPromptBuilder.DetectFormat(this.options.ModelId) ?? RinnaChatFormat.Bilingual);
    }

    /// <summary>The configured options.</summary>
    public RinnaOptions Options => options;

    /// <summary>Where requests log what they changed about themselves (dropped turns, a clamped answer length).</summary>
    internal ILogger Logger => field ??= (ILogger?)loggerFactory?.CreateLogger<RinnaChatClient>() ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

    /// <summary>Builds prompts in the model's conversation format.</summary>
    public RinnaChatPromptBuilder PromptBuilder { get; }

    /// <summary>The model and tokenizer, loading them on the first call (later calls share that load).</summary>
    public async Task<(GptNeoXForCausalLM Model, PreTrainedTokenizer Tokenizer)> GetAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        return await loaded.Value.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Runs <paramref name="work"/> with exclusive use of the model (requests are served one at a time).</summary>
    public async Task<T> RunExclusiveAsync<T>(Func<GptNeoXForCausalLM, PreTrainedTokenizer, T> work, CancellationToken cancellationToken)
    {
        var (model, tokenizer) = await GetAsync(cancellationToken).ConfigureAwait(false);
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            return await Task.Run(() => work(model, tokenizer), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>Waits for exclusive use of the model; dispose the result to release it.</summary>
    public async Task<IDisposable> AcquireAsync(CancellationToken cancellationToken)
    {
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        return new Release(gate);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        if (loaded.IsValueCreated && loaded.Value.IsCompletedSuccessfully) loaded.Value.Result.Model.Dispose();
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
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(options.TokenizerId ?? options.ModelId, new TokenizerOptions
        {
            UseFast = false, Revision = options.Revision, CacheDir = options.CacheDir, LocalFilesOnly = options.LocalFilesOnly,
            Token = options.Token, Endpoint = options.Endpoint, LoggerFactory = loggerFactory,
        }).ConfigureAwait(false);
        var model = await AutoModelForCausalLM.FromPretrainedAsync(options.ModelId, new ModelLoadOptions
        {
            TorchDtype = options.TorchDtype, Revision = options.Revision, CacheDir = options.CacheDir,
            LocalFilesOnly = options.LocalFilesOnly, Token = options.Token, Endpoint = options.Endpoint, LoggerFactory = loggerFactory,
        }).ConfigureAwait(false);
        loggerFactory?.CreateLogger<RinnaModelHost>().LogInformation("Loaded {Model} for chat ({Format} format)", options.ModelId, PromptBuilder.Format);
        return (model, tokenizer);
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
