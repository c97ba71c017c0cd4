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
/// Requests wait in arrival order (FIFO) while <see cref="MaxBatchSize"/> rows are active. The loop runs on its own
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
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="maxBatchSize"/> or <paramref name="prefillChunkTokens"/> is below 1, or <paramref name="prefixCacheBytes"/> is negative.
    /// </exception>
    public ContinuousBatchingScheduler(GptNeoXForCausalLM model, int maxBatchSize = DefaultMaxBatchSize, ILogger? logger = null, long prefixCacheBytes = 0,
        int prefillChunkTokens = DefaultPrefillChunkTokens)
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
    }

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
        return request.Completion.Task;
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
                activeRows = active.Count;
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
        var feeding = new List<(Request Request, int Tokens)>();
        for (int budget = PrefillChunkTokens; budget > 0;)
        {
            lock (gate)
            {
                if (admitting is null && active.Count + feeding.Count < MaxBatchSize && waiting.First is { } first)
                {
                    admitting = first.Value;
                    waiting.RemoveFirst();
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
            int tokens = Math.Min(budget, next.PromptTokensLeft);
            feeding.Add((next, tokens));
            budget -= tokens;
            // A prompt longer than what is left of the budget goes on in the next step.
            if (tokens < next.PromptTokensLeft) break;
            admitting = null;
        }
        if (feeding.Count > 0) Prefill(active, feeding);
    }

    /// <summary>
    /// Feeds this step's prompt chunks through the model in one pass (one product per linear layer over all their tokens)
    /// and lets each request whose prompt is now in pick its first token and join <paramref name="active"/>.
    /// </summary>
    private void Prefill(List<Request> active, List<(Request Request, int Tokens)> feeding)
    {
        Tensor logits;
        using (var scope = NewDisposeScope())
        {
            try
            {
                logits = feeding.Count == 1
                    ? feeding[0].Request.Forward(feeding[0].Tokens)
                    : ModelStepper.ForwardPacked(feeding.Select(f => f.Request.Stepper!).ToArray(), feeding.Select(f => f.Request.Chunk(f.Tokens)).ToArray());
                logits = logits.MoveToOuterDisposeScope();
            }
            catch (Exception e) when (feeding.Count > 1)
            {
                // As in Step: the caches advance only at the end of a pass, so each request can be prefilled alone.
                logger.LogWarning(e, "A prefill of {Rows} prompts together failed; prefilling each alone", feeding.Count);
                foreach (var (request, tokens) in feeding)
                    Guard(request, () =>
                    {
                        using var alone = request.Forward(tokens);
                        Fed(request, tokens, alone);
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
                var (request, tokens) = feeding[i];
                Guard(request, () => Fed(request, tokens, logits.narrow(0, i, 1)));
            }
        LargestPrefillChunk = Math.Max(LargestPrefillChunk, feeding.Sum(f => f.Tokens));

        void Fed(Request request, int tokens, Tensor rowLogits)
        {
            PrefilledPromptTokens += tokens;
            if (!request.Fed(tokens, rowLogits)) return;
            if (request.Tracker.IsDone) request.Complete(prefixes);
            else active.Add(request);
        }

        void Guard(Request request, Action work)
        {
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

    /// <summary>One decode step over every active row; a row whose work throws fails alone.</summary>
    private void Step(List<Request> active)
    {
        LargestBatch = Math.Max(LargestBatch, active.Count);
        Tensor logits;
        using (var scope = NewDisposeScope())
        {
            try
            {
                var tokens = tensor(active.Select(r => r.LastToken).ToArray(), ScalarType.Int64, Model.Device).unsqueeze(1);
                logits = ModelStepper.ForwardRows(active.Select(r => r.Stepper!).ToArray(), tokens).MoveToOuterDisposeScope();
            }
            catch (Exception e) when (active.Count > 1)
            {
                // The batched pass cannot say whose row broke it: step each row alone (the caches only advance at the end
                // of a pass, so the failed pass left them as they were), failing only the rows that fail alone.
                logger.LogWarning(e, "A batched step over {Rows} rows failed; stepping each row alone", active.Count);
                foreach (var request in active.ToArray()) Guard(request, () => request.StepAlone());
                return;
            }
            catch (Exception e)
            {
                active[0].Fail(e);
                active.Clear();
                return;
            }
        }
        using (logits)
        using (var scope = NewDisposeScope())
        {
            var rows = active.ToArray();
            var picked = PickTogether(rows, logits);
            for (int i = 0; i < rows.Length; i++)
            {
                if (picked[i] is { } token)
                {
                    Guard(rows[i], () => rows[i].AdvanceWith(token));
                    continue;
                }
                var row = logits.narrow(0, i, 1);
                Guard(rows[i], () => rows[i].Advance(row));
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

    /// <summary>One request's row: its cache, sequence so far, logits pipeline, sampler and tracker.</summary>
    private sealed class Request(long[] prompt, int reserve, GenerationTracker tracker, LogitsProcessorList pipeline, TokenSampler sampler,
        Action<GenerationTracker>? onStep, CancellationToken cancellationToken) : IDisposable
    {
        private Tensor? sequences;

        /// <summary>The tokens <c>sequences</c> holds, in managed memory.</summary>
        private readonly List<long> tokens = [.. prompt];

        /// <summary>The row's tokens so far: the prompt, then every token picked.</summary>
        public IReadOnlyList<long> Tokens => tokens;

        /// <summary>
        /// For a greedy row whose only logits processor is a repetition penalty, that penalty; 1 for a greedy row with
        /// none; null for every other row (its token is picked by its own pipeline).
        /// </summary>
        public double? GreedyPenalty { get; } = sampler.DoSample ? null
            : pipeline.Count == 0 ? 1.0
            : pipeline is [RepetitionPenaltyLogitsProcessor penalty] ? penalty.Penalty : null;

        public GenerationTracker Tracker { get; } = tracker;

        public CancellationToken CancellationToken { get; } = cancellationToken;

        public TaskCompletionSource<GeneratedSequence> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public ModelStepper? Stepper { get; private set; }

        public long LastToken { get; private set; }

        public int PromptLength => prompt.Length;

        /// <summary>Prompt tokens in this row's cache so far.</summary>
        private int prefilled;

        /// <summary>Prompt tokens not yet in this row's cache.</summary>
        public int PromptTokensLeft => prompt.Length - prefilled;

        /// <summary>
        /// Gives the row its cache on first call: a kept cache that already holds a prefix of the prompt when
        /// <paramref name="prefixes"/> has one (only the rest is prefilled), else a new one. Returns the prompt tokens
        /// taken from a kept cache (0 after the first call).
        /// </summary>
        public int Start(GptNeoXForCausalLM model, PrefixCache? prefixes)
        {
            if (Stepper is not null) return 0;
            using var scope = NewDisposeScope();
            var ids = tensor(prompt, ScalarType.Int64, model.Device).unsqueeze(0);
            sequences = ids.DetachFromDisposeScope();
            int maxLength = prompt.Length + Tracker.MaxNewTokens;
            int reused = 0;
            if (prefixes?.Take(prompt) is { } hit)
            {
                (Stepper, reused) = hit;
                // A kept cache that must grow grows past this request, so a conversation's next turns fit in it: growing
                // to each turn's exact length copied the whole history every turn.
                Stepper.EnsureMaxLength(Math.Max(maxLength, Math.Min(model.Config.MaxPositionEmbeddings, maxLength + maxLength / KeptCacheHeadroomDivisor)));
            }
            else Stepper = new ModelStepper(model, ones_like(ids), reserve, maxLength);
            prefilled = reused;
            return reused;
        }

        /// <summary>The next <paramref name="tokens"/> prompt tokens, <c>[1, tokens]</c>.</summary>
        public Tensor Chunk(int tokens) => sequences!.narrow(1, prefilled, tokens);

        /// <summary>Feeds the next <paramref name="tokens"/> prompt tokens through the model alone; returns the last one's logits <c>[1, vocab]</c>.</summary>
        public Tensor Forward(int tokens) => Stepper!.Forward(Chunk(tokens));

        /// <summary>
        /// Records that the next <paramref name="tokens"/> prompt tokens were fed and, once the whole prompt is in, picks the
        /// first token from <paramref name="logits"/> (the last prompt token's), as <c>Generate</c>'s first step does.
        /// Returns whether the prompt is in.
        /// </summary>
        public bool Fed(int tokens, Tensor logits)
        {
            prefilled += tokens;
            if (prefilled < prompt.Length) return false;
            Advance(logits);
            return true;
        }

        /// <summary>This row's step without the others (after a batched step failed).</summary>
        public void StepAlone()
        {
            using var scope = NewDisposeScope();
            Advance(ModelStepper.ForwardRows([Stepper!], tensor(new[] { LastToken }, ScalarType.Int64, sequences!.device).unsqueeze(1)));
        }

        /// <summary>Picks the next token from this row's logits <c>[1, vocab]</c>, as <see cref="GenerationLoop"/>'s step does.</summary>
        public void Advance(Tensor logits)
        {
            using var scope = NewDisposeScope();
            var scores = pipeline.Process(sequences!, logits.to(ScalarType.Float32, sequences!.device));
            AdvanceWith(sampler.Next(scores).item<long>());
        }

        /// <summary>Appends <paramref name="token"/>, picked from this row's logits, and reports the step.</summary>
        public void AdvanceWith(long token)
        {
            using var scope = NewDisposeScope();
            var current = sequences!;
            long appended = Tracker.Advance([token])[0];
            sequences = cat([current, tensor(new[] { appended }, [1, 1], ScalarType.Int64, current.device)], 1).DetachFromDisposeScope();
            current.Dispose();
            tokens.Add(appended);
            LastToken = appended;
            onStep?.Invoke(Tracker);
        }

        /// <summary>Ends the request with its result; its cache goes to <paramref name="prefixes"/> for a later request, if there is a pool.</summary>
        public void Complete(PrefixCache? prefixes)
        {
            var result = Tracker.GetSequences()[0];
            if (prefixes is not null && Stepper is { CachedLength: > 0 } stepper && sequences is not null)
            {
                // The cache holds every token fed so far: all of the sequence but the last token picked.
                using (var held = sequences.narrow(1, 0, stepper.CachedLength).cpu())
                    prefixes.Add(held.data<long>().ToArray(), stepper);
                Stepper = null;
            }
            Dispose();
            Completion.TrySetResult(result);
        }

        public void Fail(Exception error)
        {
            Dispose();
            Completion.TrySetException(error);
        }

        public void Dispose()
        {
            Stepper?.Dispose();
            Stepper = null;
            sequences?.Dispose();
            sequences = null;
            sampler.Dispose();
        }
    }
}
