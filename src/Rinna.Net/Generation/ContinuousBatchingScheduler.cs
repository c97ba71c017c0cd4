using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// Serves concurrent generation requests on one model from one running decode loop (continuous batching, as vLLM and
/// TGI do): a request joins the batch between two steps, each step feeds every active row's last token through the
/// model in one pass (one product per linear layer over all rows, which on a memory-bound CPU costs about what one row
/// costs), and a row that finishes or is cancelled leaves at once.
/// </summary>
/// <remarks>
/// <para>
/// Each request keeps its own KV cache, generation settings, logits processors, random generator, token budget,
/// end-of-sequence ids and stop strings, so its tokens do not depend on what else is in the batch: attention runs row by
/// row against the row's own cache with the mask and positions <see cref="CausalLMGeneration.Generate(GptNeoXForCausalLM, Tensor, GenerationConfig?, Tensor?, PreTrainedTokenizer?, Action{GenerationTracker}?, CancellationToken, GptNeoXForCausalLM?)"/>
/// would use. Between two decode steps at most <see cref="PrefillChunkTokens"/> prompt tokens are prefilled (several short
/// prompts, or one chunk of a long one), in one pass whose linear layers run over all of them and whose attention runs
/// prompt by prompt, so running rows wait for at most that much prefill per token. What can differ from a request run alone is the rounding of the
/// linear layers' products over several rows (libtorch's multi-row product does not sum in the order of its one-row
/// product: a few ulps in float32), so a greedy token can change only where two candidates tie that closely; with int8
/// weights the outlier columns also depend on the other rows (see docs/usage.md).
/// </para>
/// <para>
/// A batch of prompts (<see cref="GenerateBatchAsync"/>) is one request whose rows share its logits pipeline and random
/// generator, as in <c>Generate</c>, each row with its own cache. Requests wait in arrival order (FIFO) while
/// <see cref="MaxBatchSize"/> rows are active. The loop runs on its own
/// thread, started by the first request. Beam search, prompt lookup and assisted decoding are not batched: run them
/// with <c>Generate</c>.
/// </para>
/// </remarks>
public sealed class ContinuousBatchingScheduler : IDisposable, IAsyncDisposable
{
    /// <summary>The default bound on rows decoded together.</summary>
    public const int DefaultMaxBatchSize = 8;

    /// <summary>A kept cache lent to a longer request grows to that request's length plus a quarter: a few more turns fit before it is copied again.</summary>
    private const int KeptCacheHeadroomDivisor = 4;

    /// <summary>The default bound on prompt tokens prefilled between two decode steps.</summary>
    public const int DefaultPrefillChunkTokens = 256;

    private readonly Lock gate = new();
    private readonly LinkedList<Request> waiting = new();
    private readonly SemaphoreSlim arrived = new(0);
    private readonly CancellationTokenSource stopping = new();
    private readonly ILogger logger;
    private Thread? loop;
    private bool disposed;
    private bool disposedFromLoop;
    private volatile int activeRows;

    /// <summary>Creates a scheduler; its loop starts with the first request.</summary>
    /// <param name="model">The model every request runs on. The scheduler does not own it.</param>
    /// <param name="maxBatchSize">The most rows decoded together; further requests wait in arrival order.</param>
    /// <param name="logger">Where failures of a batched step are logged; <c>null</c> logs nothing.</param>
    /// <param name="prefixCacheBytes">
    /// Bytes of finished requests' KV caches kept for reuse (0 keeps none): a request whose prompt starts with the
    /// tokens of a kept cache, at least 16 of them, as a chat's next turn starts with the conversation so far, prefills
    /// only the rest. The least recently used caches leave first.
    /// </param>
    /// <param name="prefillChunkTokens">
    /// The most prompt tokens prefilled between two decode steps: short prompts arriving together are all prefilled in
    /// one step, and a long prompt in chunks of this size, one per step, so that the rows already decoding keep
    /// producing tokens meanwhile (vLLM's chunked prefill).
    /// </param>
    /// <param name="servesGenerate">
    /// Whether <c>Generate</c> calls on <paramref name="model"/> (greedy decoding or sampling) join this scheduler's batch
    /// as one group each (<see cref="GenerateBatchAsync"/>) instead of running beside it, until the scheduler is disposed.
    /// A host that serves the model sets it, so that every caller shares one decode loop.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="maxBatchSize"/> or <paramref name="prefillChunkTokens"/> is below 1, or <paramref name="prefixCacheBytes"/> is negative.
    /// </exception>
    public ContinuousBatchingScheduler(GptNeoXForCausalLM model, int maxBatchSize = DefaultMaxBatchSize, ILogger? logger = null, long prefixCacheBytes = 0,
        int prefillChunkTokens = DefaultPrefillChunkTokens, bool servesGenerate = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBatchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(prefillChunkTokens, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(prefixCacheBytes);
        Model = model;
        MaxBatchSize = maxBatchSize;
        PrefillChunkTokens = prefillChunkTokens;
        this.logger = logger ?? NullLogger.Instance;
        prefixes = prefixCacheBytes > 0 ? new PrefixCache(prefixCacheBytes) : null;
        if (servesGenerate) Serving.AddOrUpdate(model, this);
    }

    /// <summary>Per model, the scheduler its <c>Generate</c> calls join (<c>servesGenerate</c>).</summary>
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<GptNeoXForCausalLM, ContinuousBatchingScheduler> Serving = new();

    /// <summary>
    /// The scheduler serving <paramref name="model"/>'s <c>Generate</c> calls, if there is one and the call can join it:
    /// not from the scheduler's own thread (a callback would wait for itself).
    /// </summary>
    internal static ContinuousBatchingScheduler? ServingGenerate(GptNeoXForCausalLM model) =>
        Serving.TryGetValue(model, out var scheduler) && !scheduler.disposed && scheduler.loop != Thread.CurrentThread ? scheduler : null;

    private readonly PrefixCache? prefixes;

    /// <summary>Prompt tokens whose keys and values came from a kept cache instead of a prefill (diagnostics and tests).</summary>
    internal long ReusedPromptTokens { get; private set; }

    /// <summary>Prompt tokens prefilled (diagnostics and tests).</summary>
    internal long PrefilledPromptTokens { get; private set; }

    /// <summary>Bytes of KV cache kept for reuse now.</summary>
    public long PrefixCacheSize => prefixes?.SizeInBytes ?? 0;

    /// <summary>The model the requests run on.</summary>
    public GptNeoXForCausalLM Model { get; }

    /// <summary>The most rows decoded together.</summary>
    public int MaxBatchSize { get; }

    /// <summary>The most prompt tokens prefilled between two decode steps.</summary>
    public int PrefillChunkTokens { get; }

    /// <summary>The most prompt tokens one prefill pass has fed so far (tests read it to see that prompts were chunked).</summary>
    internal int LargestPrefillChunk { get; private set; }

    /// <summary>Rows in the running batch after the last step (for diagnostics).</summary>
    public int ActiveRows => activeRows;

    /// <summary>Requests waiting for a row (for diagnostics).</summary>
    public int QueuedRequests
    {
        get
        {
            lock (gate) return waiting.Count;
        }
    }

    private int batchRequests;

    /// <summary>Batches submitted as groups (<see cref="GenerateBatchAsync"/>), for tests.</summary>
    internal int BatchRequests => batchRequests;

    /// <summary>The most rows one decode step has run together so far (tests read it to see that rows were batched).</summary>
    internal int LargestBatch { get; private set; }

    /// <summary>
    /// Generates a continuation of <paramref name="inputIds"/> in the shared batch: what
    /// <c>model.Generate(inputIds, config, tokenizer: tokenizer, onStep: onStep)</c> returns for its one row.
    /// </summary>
    /// <param name="inputIds">The prompt's token ids (no padding).</param>
    /// <param name="config">Decoding settings (greedy or sampling); <c>null</c> means the model's <c>generation_config</c>.</param>
    /// <param name="tokenizer">The model's tokenizer: needed for stop strings, gives the text, and keeps ids it cannot decode from being generated.</param>
    /// <param name="onStep">
    /// Called after each of this request's tokens with its tracker (one row: stream with <c>TakeText(0)</c>). It runs on
    /// the scheduler's thread between steps, so it must be quick; an exception from it fails this request only.
    /// </param>
    /// <param name="logitsProcessors">Extra processors for this request, run after the built-in ones.</param>
    /// <param name="cancellationToken">
    /// Checked before every step: the request leaves the batch (or the queue) and its task completes with the tokens so
    /// far and <see cref="FinishReason.Cancelled"/>, as <c>Generate</c> does; other requests are not disturbed.
    /// </param>
    /// <returns>The generated ids, why they stopped and, with a tokenizer, the text.</returns>
    /// <exception cref="ArgumentException">
    /// The prompt is empty, the settings are invalid or ask for beam search, prompt lookup or several sequences, or stop
    /// strings come without a tokenizer. A prompt the model rejects (ids outside the vocabulary) fails the task instead.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The scheduler was disposed (also the task's exception for requests still running then).</exception>
    public Task<GeneratedSequence> GenerateAsync(IReadOnlyList<int> inputIds, GenerationConfig? config = null, PreTrainedTokenizer? tokenizer = null,
        Action<GenerationTracker>? onStep = null, IEnumerable<ILogitsProcessor>? logitsProcessors = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        if (inputIds.Count == 0) throw new ArgumentException("The prompt is empty: generation needs at least one token.", nameof(inputIds));
        config ??= Model.GenerationConfig();
        config.Validate();
        if (config.NumBeams > 1 || config.PromptLookupNumTokens is not null || config.NumReturnSequences > 1)
            throw new ArgumentException("Continuous batching serves greedy decoding and sampling of one sequence per request; run beam search, " +
                "prompt lookup or several returned sequences with Generate.", nameof(config));
        (config, int reserve) = CausalLMGeneration.FitToContext(Model, config, inputIds.Count);
        var processors = tokenizer is not null && tokenizer.Count < Model.Config.VocabSize
            ? [new VocabularyLimitLogitsProcessor(tokenizer.Count), .. logitsProcessors ?? []]
            : logitsProcessors?.ToArray();
        // Built here so that bad settings throw to the caller, not inside the loop.
        var request = new Request(inputIds.Select(i => (long)i).ToArray(), reserve,
            new GenerationTracker(config, 1, inputIds.Count, tokenizer is null ? null : () => tokenizer.CreateStreamingDecoder(skipSpecialTokens: true)),
            LogitsProcessorList.Create(config, inputIds.Count, processors), TokenSampler.Create(config), onStep, cancellationToken);
        Submit(request);
        return request.SingleTask;
    }

    /// <summary>
    /// Generates continuations of a batch of prompts in the shared batch, as one group: what
    /// <c>model.Generate(inputIds, config, attentionMask, tokenizer, onStep)</c> returns. The group's rows are admitted
    /// together, each with its own unpadded cache, and pick their tokens together from the logits pipeline and sampler of
    /// the whole batch, so a seed draws the tokens that <c>Generate</c> (and transformers' batched <c>generate()</c>)
    /// draws; a row that finishes leaves the decode steps at once. A group larger than <see cref="MaxBatchSize"/> is
    /// admitted when no other rows are running.
    /// </summary>
    /// <param name="inputIds">The prompts, <c>[batch, width]</c>, integer ids, left-padded.</param>
    /// <param name="config">Decoding settings (greedy or sampling, several returned sequences allowed); <c>null</c> means the model's <c>generation_config</c>.</param>
    /// <param name="attentionMask">1 for tokens, 0 for left padding, <c>[batch, width]</c>; <c>null</c> means no padding.</param>
    /// <param name="tokenizer">The model's tokenizer: needed for stop strings, gives each row's text, and keeps ids it cannot decode from being generated.</param>
    /// <param name="onStep">Called after each step with the group's tracker, on the scheduler's thread; an exception from it fails this request only.</param>
    /// <param name="logitsProcessors">Extra processors for this request, run after the built-in ones.</param>
    /// <param name="cancellationToken">Checked before every step: unfinished rows then report <see cref="FinishReason.Cancelled"/>, as <c>Generate</c> does.</param>
    /// <returns>The sequences (the caller disposes them) and each row's new ids, text and finish reason, as <c>Generate</c> returns them.</returns>
    /// <exception cref="ArgumentException">
    /// The prompt batch or mask is malformed, a row is all padding, the mask pads other than on the left, or the settings
    /// ask for beam search or prompt lookup. A prompt the model rejects fails the task instead.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The scheduler was disposed (also the task's exception for a group still running then).</exception>
    public Task<GenerationOutput> GenerateBatchAsync(Tensor inputIds, GenerationConfig? config = null, Tensor? attentionMask = null,
        PreTrainedTokenizer? tokenizer = null, Action<GenerationTracker>? onStep = null, IEnumerable<ILogitsProcessor>? logitsProcessors = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        config ??= Model.GenerationConfig();
        config.Validate();
        if (config.NumBeams > 1 || config.PromptLookupNumTokens is not null)
            throw new ArgumentException("Continuous batching serves greedy decoding and sampling; run beam search or prompt lookup with Generate.", nameof(config));
        var prompts = UnpadPrompts(inputIds, attentionMask);
        int width = (int)inputIds.shape[1];
        int copies = config.NumReturnSequences;
        // HF's _expand_inputs_for_generation: each prompt repeated once per returned sequence, in consecutive rows.
        prompts = [.. prompts.SelectMany(p => Enumerable.Repeat(p, copies))];
        (config, int reserve) = CausalLMGeneration.FitToContext(Model, config, width, prompts.Length);
        var processors = tokenizer is not null && tokenizer.Count < Model.Config.VocabSize
            ? [new VocabularyLimitLogitsProcessor(tokenizer.Count), .. logitsProcessors ?? []]
            : logitsProcessors?.ToArray();
        var tracker = new GenerationTracker(config, prompts.Length, width, tokenizer is null ? null : () => tokenizer.CreateStreamingDecoder(skipSpecialTokens: true));
        var pipeline = LogitsProcessorList.Create(config, width, processors);
        Tensor padded;
        using (var scope = NewDisposeScope())
        {
            var ids = inputIds.to(ScalarType.Int64, Model.Device);
            if (copies > 1) ids = ids.repeat_interleave(copies, 0);
            padded = ids.clone().DetachFromDisposeScope();
        }
        var request = new Request(prompts, padded, reserve, tracker, pipeline, TokenSampler.Create(config), onStep, cancellationToken);
        Submit(request);
        Interlocked.Increment(ref batchRequests);
        return request.BatchTask;
    }

    /// <summary>
    /// Each row's tokens without its left padding.
    /// </summary>
    /// <exception cref="ArgumentException">Not a <c>[batch, width]</c> batch, a mask of another shape, a row that is all padding, or padding that is not on the left.</exception>
    private static long[][] UnpadPrompts(Tensor inputIds, Tensor? attentionMask)
    {
        if (inputIds.dim() != 2 || inputIds.shape[0] == 0 || inputIds.shape[1] == 0)
            throw new ArgumentException($"input ids must be [batch, seq] with batch, seq > 0; got [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        if (attentionMask is not null && !attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"attention mask must match the prompt's shape [{string.Join(", ", inputIds.shape)}].", nameof(attentionMask));
        int rows = (int)inputIds.shape[0], width = (int)inputIds.shape[1];
        using var scope = NewDisposeScope();
        var ids = inputIds.to(ScalarType.Int64, CPU).contiguous().data<long>().ToArray();
        var mask = attentionMask?.to(ScalarType.Int64, CPU).contiguous().data<long>().ToArray();
        var prompts = new long[rows][];
        for (int row = 0; row < rows; row++)
        {
            int first = 0;
            if (mask is not null)
            {
                while (first < width && mask[row * width + first] == 0) first++;
                for (int j = first; j < width; j++)
                    if (mask[row * width + j] != 1)
                        throw new ArgumentException($"Row {row} of the attention mask is not left padding (zeros, then ones): it has {mask[row * width + j]} at {j}.", nameof(attentionMask));
                if (first == width) throw new ArgumentException($"Row {row} of the prompt batch is all padding.", nameof(attentionMask));
            }
            prompts[row] = ids.AsSpan(row * width + first, width - first).ToArray();
        }
        return prompts;
    }

    /// <summary>Queues <paramref name="request"/> and starts the loop with the first one.</summary>
    private void Submit(Request request)
    {
        lock (gate)
        {
            if (disposed)
            {
                request.Dispose();
                throw new ObjectDisposedException(nameof(ContinuousBatchingScheduler));
            }
            waiting.AddLast(request);
            if (loop is null)
            {
                loop = new Thread(Run) { IsBackground = true, Name = "Rinna continuous batching" };
                loop.UnsafeStart();
            }
        }
        arrived.Release();
    }

    /// <summary>Stops the loop after its current step; requests not finished by then fail with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        Thread? running;
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            running = loop;
        }
        if (Serving.TryGetValue(Model, out var serving) && serving == this) Serving.Remove(Model);
        stopping.Cancel();
        // Called from a request's callback, the loop is this thread: it ends when the callback returns.
        if (running is not null && running != Thread.CurrentThread) running.Join();
        if (running is null) FailWaiting();
        if (running != Thread.CurrentThread) prefixes?.Dispose();
        if (running == Thread.CurrentThread) disposedFromLoop = true;
        else ReleaseSignals();
    }

    /// <inheritdoc cref="Dispose"/>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    private void Run()
    {
        var active = new List<Request>();
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                if (active.Count == 0 && admitting is null) arrived.Wait(stopping.Token);
                Leave(active, r => r.CancellationToken.IsCancellationRequested, cancel: true);
                Admit(active);
                if (active.Count > 0) Step(active);
                Leave(active, r => r.Tracker.IsDone, cancel: false);
                activeRows = active.Sum(r => r.LiveRowCount);
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            // Only a bug gets here (each request's own failures are caught where they happen); fail everything rather than hang callers.
            logger.LogError(e, "The continuous batching loop failed");
            foreach (var request in active) request.Fail(e);
            active.Clear();
            admitting?.Fail(e);
            admitting = null;
        }
        finally
        {
            var stopped = new ObjectDisposedException(nameof(ContinuousBatchingScheduler), "The scheduler was disposed before the request finished.");
            foreach (var request in active) request.Fail(stopped);
            admitting?.Fail(stopped);
            admitting = null;
            activeRows = 0;
            lock (gate) disposed = true;
            FailWaiting();
            if (disposedFromLoop)
            {
                prefixes?.Dispose();
                ReleaseSignals();
            }
        }
    }

    private void ReleaseSignals()
    {
        stopping.Dispose();
        arrived.Dispose();
    }

    private void FailWaiting()
    {
        Request[] left;
        lock (gate)
        {
            left = [.. waiting];
            waiting.Clear();
        }
        var stopped = new ObjectDisposedException(nameof(ContinuousBatchingScheduler), "The scheduler was disposed before the request started.");
        foreach (var request in left) request.Fail(stopped);
    }

    /// <summary>Ends the rows <paramref name="leaves"/> picks: cancelled ones get <see cref="FinishReason.Cancelled"/>.</summary>
    private void Leave(List<Request> active, Func<Request, bool> leaves, bool cancel)
    {
        for (int i = active.Count - 1; i >= 0; i--)
        {
            if (!leaves(active[i])) continue;
            if (cancel) active[i].Tracker.Cancel();
            active[i].Complete(prefixes);
            active.RemoveAt(i);
        }
    }

    /// <summary>The request being prefilled, chunk by chunk, before it joins the batch.</summary>
    private Request? admitting;

    /// <summary>
    /// Drops cancelled requests from the queue and prefills waiting requests while rows are free, at most
    /// <see cref="PrefillChunkTokens"/> prompt tokens in all: several short prompts join in the same step (so requests
    /// that arrive together decode together from the start), and a long one is prefilled a chunk per step. A request
    /// joins the batch with its first token once its whole prompt is in.
    /// </summary>
    private void Admit(List<Request> active)
    {
        var cancelled = new List<Request>();
        lock (gate)
        {
            for (var node = waiting.First; node is not null;)
            {
                var following = node.Next;
                if (node.Value.CancellationToken.IsCancellationRequested)
                {
                    cancelled.Add(node.Value);
                    waiting.Remove(node);
                }
                node = following;
            }
        }
        if (admitting?.CancellationToken.IsCancellationRequested == true)
        {
            cancelled.Add(admitting);
            admitting = null;
        }
        foreach (var request in cancelled)
        {
            request.Tracker.Cancel();
            request.Complete(null);
        }
        // The prompts (or chunks) prefilled in this step, fed through the model together.
        var feeding = new List<(Request Request, int Row, int Tokens)>();
        int rowsRunning = active.Sum(r => r.LiveRowCount) + (admitting?.Rows ?? 0);
        for (int budget = PrefillChunkTokens; budget > 0;)
        {
            lock (gate)
            {
                // A group larger than the bound runs when nothing else does.
                if (admitting is null && waiting.First is { } first
                    && (rowsRunning + first.Value.Rows <= MaxBatchSize || rowsRunning == 0))
                {
                    admitting = first.Value;
                    waiting.RemoveFirst();
                    rowsRunning += admitting.Rows;
                }
            }
            if (admitting is not { } next) break;
            try
            {
                ReusedPromptTokens += next.Start(Model, prefixes);
            }
            catch (Exception e)
            {
                admitting = null;
                next.Fail(e);
                continue;
            }
            // A group's prompts follow one another, row by row.
            for (int row = next.NextRowToPrefill; row < next.Rows && budget > 0; row++)
            {
                int tokens = Math.Min(budget, next.PromptTokensLeft(row));
                feeding.Add((next, row, tokens));
                budget -= tokens;
            }
            // A prompt longer than what is left of the budget goes on in the next step.
            if (feeding[^1].Tokens < next.PromptTokensLeft(feeding[^1].Row) || feeding[^1].Row < next.Rows - 1) break;
            admitting = null;
        }
        if (feeding.Count > 0) Prefill(active, feeding);
    }

    /// <summary>
    /// Feeds this step's prompt chunks through the model in one pass (one product per linear layer over all their tokens)
    /// and lets each request whose prompts are now in pick its first tokens and join <paramref name="active"/>.
    /// </summary>
    private void Prefill(List<Request> active, List<(Request Request, int Row, int Tokens)> feeding)
    {
        Tensor logits;
        using (var scope = NewDisposeScope())
        {
            try
            {
                logits = feeding.Count == 1
                    ? feeding[0].Request.Forward(feeding[0].Row, feeding[0].Tokens)
                    : ModelStepper.ForwardPacked(feeding.Select(f => f.Request.Stepper(f.Row)).ToArray(), feeding.Select(f => f.Request.Chunk(f.Row, f.Tokens)).ToArray());
                logits = logits.MoveToOuterDisposeScope();
            }
            catch (Exception e) when (feeding.Count > 1)
            {
                // As in Step: the caches advance only at the end of a pass, so each prompt can be prefilled alone.
                logger.LogWarning(e, "A prefill of {Rows} prompts together failed; prefilling each alone", feeding.Count);
                foreach (var (request, row, tokens) in feeding)
                    Guard(request, () =>
                    {
                        using var alone = request.Forward(row, tokens);
                        Fed(request, row, tokens, alone);
                    });
                return;
            }
            catch (Exception e)
            {
                Fail(feeding[0].Request, e);
                return;
            }
        }
        using (logits)
            for (int i = 0; i < feeding.Count; i++)
            {
                var (request, row, tokens) = feeding[i];
                Guard(request, () => Fed(request, row, tokens, logits.narrow(0, i, 1)));
            }
        LargestPrefillChunk = Math.Max(LargestPrefillChunk, feeding.Sum(f => f.Tokens));

        void Fed(Request request, int row, int tokens, Tensor rowLogits)
        {
            PrefilledPromptTokens += tokens;
            if (!request.Fed(row, tokens, rowLogits)) return;
            if (request.Tracker.IsDone) request.Complete(prefixes);
            else active.Add(request);
        }

        void Guard(Request request, Action work)
        {
            // A group whose earlier row failed has ended: its other rows are not fed.
            if (request.Ended) return;
            try
            {
                work();
            }
            catch (Exception e)
            {
                Fail(request, e);
            }
        }

        void Fail(Request request, Exception e)
        {
            if (admitting == request) admitting = null;
            request.Fail(e);
        }
    }

    /// <summary>One decode step over every active row; a request whose work throws fails alone.</summary>
    private void Step(List<Request> active)
    {
        var plan = active.Select(r => (Request: r, Rows: r.LiveRows())).Where(p => p.Rows.Length > 0).ToArray();
        var owners = plan.SelectMany(p => p.Rows.Select(_ => p.Request)).ToArray();
        if (owners.Length == 0) return;
        LargestBatch = Math.Max(LargestBatch, owners.Length);
        Tensor logits;
        using (var scope = NewDisposeScope())
        {
            try
            {
                var tokens = tensor(plan.SelectMany(p => p.Rows.Select(p.Request.LastToken)).ToArray(), ScalarType.Int64, Model.Device).unsqueeze(1);
                logits = ModelStepper.ForwardRows(plan.SelectMany(p => p.Rows.Select(p.Request.Stepper)).ToArray(), tokens).MoveToOuterDisposeScope();
            }
            catch (Exception e) when (plan.Length > 1)
            {
                // The batched pass cannot say whose row broke it: step each request alone (the caches only advance at the
                // end of a pass, so the failed pass left them as they were), failing only the requests that fail alone.
                logger.LogWarning(e, "A batched step over {Rows} rows failed; stepping each request alone", owners.Length);
                foreach (var (request, _) in plan) Guard(request, () => request.StepAlone());
                return;
            }
            catch (Exception e)
            {
                plan[0].Request.Fail(e);
                active.Remove(plan[0].Request);
                return;
            }
        }
        using (logits)
        using (var scope = NewDisposeScope())
        {
            var picked = PickTogether(owners, logits);
            int offset = 0;
            foreach (var (request, rows) in plan)
            {
                int at = offset;
                offset += rows.Length;
                if (picked[at] is { } token)
                    Guard(request, () => request.AdvanceWith(token));
                else
                    Guard(request, () => request.AdvanceRows(logits.narrow(0, at, rows.Length), rows));
            }
        }

        void Guard(Request request, Action work)
        {
            try
            {
                work();
            }
            catch (Exception e)
            {
                request.Fail(e);
                active.Remove(request);
            }
        }
    }

    /// <summary>Rows whose token was picked together with other rows' (<see cref="PickTogether"/>), for tests.</summary>
    internal long RowsPickedTogether { get; private set; }

    /// <summary>
    /// The next tokens of the greedy rows whose only logits processor is a repetition penalty (or who have none), picked
    /// in one pass per penalty over all of them; null for the other rows, which pick their own.
    /// </summary>
    /// <remarks>
    /// Each row's pipeline would cost about ten libtorch calls per row and step, a seventh of an eight-chat batch's time on
    /// the demo model (benchmarks/RESULTS.md). The pass does the same operations on the same values: transformers'
    /// batched repetition penalty over ids padded with each row's own first token (a repeated id changes nothing),
    /// then the first largest score of each row.
    /// </remarks>
    private long?[] PickTogether(Request[] rows, Tensor logits)
    {
        var picked = new long?[rows.Length];
        var groups = Enumerable.Range(0, rows.Length).Where(i => rows[i].GreedyPenalty is not null).GroupBy(i => rows[i].GreedyPenalty!.Value);
        foreach (var group in groups)
        {
            var members = group.ToArray();
            if (members.Length < 2) continue;
            try
            {
                using var scope = NewDisposeScope();
                var scores = logits.index_select(0, tensor(members.Select(i => (long)i).ToArray(), ScalarType.Int64, logits.device));
                var tokens = PickGreedy(scores, members.Select(i => rows[i].Tokens).ToArray(), group.Key);
                for (int m = 0; m < members.Length; m++) picked[members[m]] = tokens[m];
                RowsPickedTogether += members.Length;
            }
            catch (Exception e)
            {
                logger.LogWarning(e, "Picking the tokens of {Rows} greedy rows together failed; each row picks its own", members.Length);
            }
        }
        return picked;
    }

    /// <summary>
    /// The greedy token of each row of <paramref name="logits"/> <c>[rows, vocab]</c> after transformers' repetition
    /// <paramref name="penalty"/> (none at 1) on that row's <paramref name="history"/>, in one pass over all rows: the
    /// ids are padded with each row's own first id, which the penalty has already seen.
    /// </summary>
    internal static long[] PickGreedy(Tensor logits, IReadOnlyList<long>[] history, double penalty)
    {
        using var scope = NewDisposeScope();
        var scores = logits.to(ScalarType.Float32);
        if (penalty != 1.0)
        {
            int longest = history.Max(h => h.Count);
            var ids = new long[history.Length * longest];
            for (int row = 0; row < history.Length; row++)
            {
                var own = history[row];
                for (int j = 0; j < longest; j++) ids[row * longest + j] = own[j < own.Count ? j : 0];
            }
            scores = new RepetitionPenaltyLogitsProcessor(penalty).Process(tensor(ids, [history.Length, longest], ScalarType.Int64, logits.device), scores);
        }
        return scores.argmax(-1).cpu().data<long>().ToArray();
    }

    /// <summary>
    /// One request: a single row (<see cref="GenerateAsync"/>), or the rows of a batch that step and sample together
    /// (<see cref="GenerateBatchAsync"/>). Each row has its own unpadded cache; the sequences, logits pipeline, sampler
    /// and tracker are the request's, as in <see cref="GenerationLoop"/>.
    /// </summary>
    private sealed class Request : IDisposable
    {
        private readonly long[][] prompts;
        private readonly int reserve;
        private readonly LogitsProcessorList pipeline;
        private readonly TokenSampler sampler;
        private readonly Action<GenerationTracker>? onStep;
        private readonly TaskCompletionSource<GeneratedSequence>? single;
        private readonly TaskCompletionSource<GenerationOutput>? batch;
        private readonly ModelStepper?[] steppers;
        private readonly long[] lastTokens;

        /// <summary>Per row, the prompt tokens in its cache so far.</summary>
        private readonly int[] prefilled;

        /// <summary>A batch's rows' last prompt logits, kept until every row's prompt is in and the rows pick their first tokens together.</summary>
        private readonly Tensor?[] promptLogits;

        /// <summary>
        /// <c>[rows, length]</c>: the prompts (left-padded for a batch, as the caller gave them) and the tokens picked, which
        /// the logits processors read. A single row's is built when it starts, a batch's when it is submitted.
        /// </summary>
        private Tensor? sequences;

        /// <summary>A single row's tokens (what <c>sequences</c> holds), in managed memory.</summary>
        private readonly List<long> tokens;

        /// <summary>A single row.</summary>
        public Request(long[] prompt, int reserve, GenerationTracker tracker, LogitsProcessorList pipeline, TokenSampler sampler,
            Action<GenerationTracker>? onStep, CancellationToken cancellationToken)
            : this([prompt], reserve, tracker, pipeline, sampler, onStep, cancellationToken, null)
        {
            single = new(TaskCreationOptions.RunContinuationsAsynchronously);
            GreedyPenalty = sampler.DoSample ? null
                : pipeline.Count == 0 ? 1.0
                : pipeline is [RepetitionPenaltyLogitsProcessor penalty] ? penalty.Penalty : null;
        }

        /// <summary>The rows of a batch; <paramref name="padded"/> <c>[rows, width]</c> is the prompt batch the processors see (the request owns it).</summary>
        public Request(long[][] prompts, Tensor padded, int reserve, GenerationTracker tracker, LogitsProcessorList pipeline, TokenSampler sampler,
            Action<GenerationTracker>? onStep, CancellationToken cancellationToken)
            : this(prompts, reserve, tracker, pipeline, sampler, onStep, cancellationToken, padded)
        {
            batch = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        private Request(long[][] prompts, int reserve, GenerationTracker tracker, LogitsProcessorList pipeline, TokenSampler sampler,
            Action<GenerationTracker>? onStep, CancellationToken cancellationToken, Tensor? padded)
        {
            this.prompts = prompts;
            this.reserve = reserve;
            this.pipeline = pipeline;
            this.sampler = sampler;
            this.onStep = onStep;
            Tracker = tracker;
            CancellationToken = cancellationToken;
            sequences = padded;
            steppers = new ModelStepper?[prompts.Length];
            lastTokens = new long[prompts.Length];
            prefilled = new int[prompts.Length];
            promptLogits = new Tensor?[prompts.Length];
            tokens = prompts.Length == 1 ? [.. prompts[0]] : [];
        }

        /// <summary>The task of a single row's request.</summary>
        public Task<GeneratedSequence> SingleTask => single!.Task;

        /// <summary>The task of a batch's request.</summary>
        public Task<GenerationOutput> BatchTask => batch!.Task;

        /// <summary>Whether this request is a batch (<see cref="GenerateBatchAsync"/>).</summary>
        public bool IsBatch => batch is not null;

        /// <summary>The rows a batch asks for at once (1 for a single row).</summary>
        public int Rows => prompts.Length;

        /// <summary>A single row's tokens so far: the prompt, then every token picked.</summary>
        public IReadOnlyList<long> Tokens => tokens;

        /// <summary>
        /// For a single greedy row whose only logits processor is a repetition penalty, that penalty; 1 for a greedy row
        /// with none; null for every other row (its token is picked by its own pipeline).
        /// </summary>
        public double? GreedyPenalty { get; }

        public GenerationTracker Tracker { get; }

        public CancellationToken CancellationToken { get; }

        /// <summary>Whether the request has completed or failed (a batch's remaining rows are then skipped).</summary>
        public bool Ended { get; private set; }

        private static readonly int[] OnlyRow = [0];

        /// <summary>The rows still generating, each with its cache: the rows a decode step feeds.</summary>
        public int[] LiveRows()
        {
            if (!IsBatch) return steppers[0] is null ? [] : OnlyRow;
            var live = new List<int>(Rows);
            for (int i = 0; i < Rows; i++)
                if (steppers[i] is not null && Tracker.GetFinishReason(i) is null) live.Add(i);
            return [.. live];
        }

        /// <summary>How many rows <see cref="LiveRows"/> holds, without listing them.</summary>
        public int LiveRowCount
        {
            get
            {
                int live = 0;
                for (int i = 0; i < Rows; i++)
                    if (steppers[i] is not null && Tracker.GetFinishReason(i) is null) live++;
                return live;
            }
        }

        public ModelStepper Stepper(int row) => steppers[row] ?? throw new InvalidOperationException("The row has no cache.");

        public long LastToken(int row) => lastTokens[row];

        /// <summary>The first row whose prompt is not all in its cache (every row's is after <see cref="Rows"/>).</summary>
        public int NextRowToPrefill
        {
            get
            {
                int row = 0;
                while (row < Rows && prefilled[row] == prompts[row].Length) row++;
                return row;
            }
        }

        /// <summary>Prompt tokens of <paramref name="row"/> not yet in its cache.</summary>
        public int PromptTokensLeft(int row) => prompts[row].Length - prefilled[row];

        /// <summary>
        /// Gives the rows their caches on first call: a single row takes a kept cache that already holds a prefix of its
        /// prompt when <paramref name="prefixes"/> has one (only the rest is prefilled), every other row a new one.
        /// Returns the prompt tokens taken from a kept cache (0 after the first call).
        /// </summary>
        public int Start(GptNeoXForCausalLM model, PrefixCache? prefixes)
        {
            if (steppers[0] is not null) return 0;
            using var scope = NewDisposeScope();
            if (IsBatch)
            {
                for (int i = 0; i < Rows; i++)
                    steppers[i] = new ModelStepper(model, ones(1, prompts[i].Length, ScalarType.Int64, model.Device),
                        reserve - Tracker.PromptLength + prompts[i].Length, prompts[i].Length + Tracker.MaxNewTokens);
                return 0;
            }
            var prompt = prompts[0];
            var ids = tensor(prompt, ScalarType.Int64, model.Device).unsqueeze(0);
            sequences = ids.DetachFromDisposeScope();
            int maxLength = prompt.Length + Tracker.MaxNewTokens;
            int reused = 0;
            if (prefixes?.Take(prompt) is { } hit)
            {
                (steppers[0], reused) = hit;
                // A kept cache that must grow grows past this request, so a conversation's next turns fit in it: growing
                // to each turn's exact length copied the whole history every turn.
                steppers[0]!.EnsureMaxLength(Math.Max(maxLength, Math.Min(model.Config.MaxPositionEmbeddings, maxLength + maxLength / KeptCacheHeadroomDivisor)));
            }
            else steppers[0] = new ModelStepper(model, ones_like(ids), reserve, maxLength);
            prefilled[0] = reused;
            return reused;
        }

        /// <summary>The next <paramref name="count"/> prompt tokens of <paramref name="row"/>, <c>[1, count]</c>: a view of <c>sequences</c>, past the row's padding.</summary>
        public Tensor Chunk(int row, int count) =>
            sequences!.narrow(0, row, 1).narrow(1, Tracker.PromptLength - prompts[row].Length + prefilled[row], count);

        /// <summary>Feeds the next <paramref name="count"/> prompt tokens of <paramref name="row"/> through the model alone; returns the last one's logits <c>[1, vocab]</c>.</summary>
        public Tensor Forward(int row, int count)
        {
            using var scope = NewDisposeScope();
            return Stepper(row).Forward(Chunk(row, count)).MoveToOuterDisposeScope();
        }

        /// <summary>
        /// Records that the next <paramref name="count"/> prompt tokens of <paramref name="row"/> were fed, with the last
        /// one's <paramref name="logits"/>. Once every row's prompt is in, the rows pick their first tokens, as
        /// <c>Generate</c>'s first step does; returns whether that happened.
        /// </summary>
        public bool Fed(int row, int count, Tensor logits)
        {
            prefilled[row] += count;
            if (prefilled[row] < prompts[row].Length) return false;
            if (!IsBatch)
            {
                Advance(logits);
                return true;
            }
            promptLogits[row] = logits.to(ScalarType.Float32).clone().DetachFromDisposeScope();
            if (NextRowToPrefill < Rows) return false;
            using var scope = NewDisposeScope();
            var all = cat(promptLogits!, 0);
            ReleasePromptLogits();
            Advance(all);
            return true;
        }

        /// <summary>This request's step without the other requests (after a batched step failed).</summary>
        public void StepAlone()
        {
            using var scope = NewDisposeScope();
            var live = LiveRows();
            var fed = tensor(live.Select(i => lastTokens[i]).ToArray(), ScalarType.Int64, sequences!.device).unsqueeze(1);
            AdvanceRows(ModelStepper.ForwardRows(live.Select(Stepper).ToArray(), fed), live);
        }

        /// <summary>
        /// Picks the next tokens from the logits of <paramref name="live"/> rows, <c>[live, vocab]</c>: rows that finished
        /// earlier get neutral logits, since the batch's draw is over all its rows (as transformers samples a finished row
        /// and then discards its token).
        /// </summary>
        public void AdvanceRows(Tensor logits, int[] live)
        {
            if (live.Length == Rows)
            {
                Advance(logits);
                return;
            }
            using var scope = NewDisposeScope();
            var all = zeros(Rows, logits.size(1), ScalarType.Float32, logits.device);
            all.index_copy_(0, tensor(live.Select(i => (long)i).ToArray(), ScalarType.Int64, logits.device), logits.to(ScalarType.Float32));
            Advance(all);
        }

        /// <summary>Picks the next token of every row from logits <c>[rows, vocab]</c>, as <see cref="GenerationLoop"/>'s step does.</summary>
        public void Advance(Tensor logits)
        {
            using var scope = NewDisposeScope();
            var scores = pipeline.Process(sequences!, logits.to(ScalarType.Float32, sequences!.device));
            AdvanceWith(sampler.Next(scores).cpu().data<long>().ToArray());
        }

        /// <summary>Appends <paramref name="picked"/> (one token per row, picked from this request's logits) and reports the step.</summary>
        public void AdvanceWith(params long[] picked)
        {
            using var scope = NewDisposeScope();
            var current = sequences!;
            long[] appended = Tracker.Advance(picked);
            sequences = cat([current, tensor(appended, [Rows, 1], ScalarType.Int64, current.device)], 1).DetachFromDisposeScope();
            current.Dispose();
            if (!IsBatch) tokens.Add(appended[0]);
            for (int i = 0; i < Rows; i++)
            {
                lastTokens[i] = appended[i];
                // A batch's finished row leaves the decode steps at once; its cache is not needed again.
                if (IsBatch && Tracker.GetFinishReason(i) is not null && steppers[i] is { } done)
                {
                    done.Dispose();
                    steppers[i] = null;
                }
            }
            onStep?.Invoke(Tracker);
        }

        /// <summary>
        /// Ends the request with its result; a single row's cache goes to <paramref name="prefixes"/> for a later request,
        /// if there is a pool.
        /// </summary>
        public void Complete(PrefixCache? prefixes)
        {
            if (Ended) return;
            var rows = Tracker.GetSequences();
            if (IsBatch)
            {
                var output = new GenerationOutput(sequences!, rows);
                sequences = null;
                Dispose();
                batch!.TrySetResult(output);
                return;
            }
            if (prefixes is not null && steppers[0] is { CachedLength: > 0 } stepper && sequences is not null)
            {
                // The cache holds every token fed so far: all of the sequence but the last token picked.
                using (var held = sequences.narrow(1, 0, stepper.CachedLength).cpu())
                    prefixes.Add(held.data<long>().ToArray(), stepper);
                steppers[0] = null;
            }
            Dispose();
            single!.TrySetResult(rows[0]);
        }

        public void Fail(Exception error)
        {
            if (Ended) return;
            Dispose();
            if (IsBatch) batch!.TrySetException(error);
            else single!.TrySetException(error);
        }

        private void ReleasePromptLogits()
        {
            for (int i = 0; i < promptLogits.Length; i++)
            {
                promptLogits[i]?.Dispose();
                promptLogits[i] = null;
            }
        }

        public void Dispose()
        {
            Ended = true;
            for (int i = 0; i < steppers.Length; i++)
            {
                steppers[i]?.Dispose();
                steppers[i] = null;
            }
            ReleasePromptLogits();
            sequences?.Dispose();
            sequences = null;
            sampler.Dispose();
        }
    }
}
