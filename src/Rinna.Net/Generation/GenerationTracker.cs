using System.Text;
using Rinna.Net.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// The per-row bookkeeping of a decode loop, as Hugging Face's <c>unfinished_sequences</c> and stopping criteria do
/// it: each step it takes the sampled token of every row, replaces it with the pad id in rows that already finished,
/// and finishes rows on an end-of-sequence id, a stop string in their decoded text, the token budget, or cancellation.
/// </summary>
/// <remarks>
/// Rows are independent, so left-padded batches work: the prompt width only sets the token budget when
/// <see cref="GenerationConfig.MaxNewTokens"/> is unset. Stop strings are searched in the generated text only (not in
/// the prompt). Not thread-safe; one tracker per generation.
/// </remarks>
public sealed class GenerationTracker
{
    private readonly HashSet<int> eosTokenIds;
    private readonly Row[] rows;

    /// <summary>Creates the tracker for one generation, decoding each row with a whole-sequence decode function.</summary>
    /// <param name="config">The generation settings (validated here).</param>
    /// <param name="batchSize">Number of rows.</param>
    /// <param name="promptLength">Width of the prompt batch (left padding included).</param>
    /// <param name="decode">
    /// Decodes generated ids of one row to text (special tokens skipped); required for stop strings, and gives
    /// <see cref="TakeText"/> and <see cref="GeneratedSequence.Text"/>. Each step re-decodes the row; prefer the
    /// tokenizer's incremental decoder (the other constructor) for long outputs.
    /// </param>
    /// <exception cref="ArgumentException">
    /// The configuration is invalid; stop strings are set without <paramref name="decode"/>; or rows of a batch can
    /// finish early (end-of-sequence ids or stop strings) but there is no pad id to fill them with.
    /// </exception>
    public GenerationTracker(GenerationConfig config, int batchSize, int promptLength, Func<int[], string>? decode = null)
        : this(config, batchSize, promptLength, decode is null ? null : () => new DecodedTextStream(decode))
    {
    }

    /// <summary>Creates the tracker for one generation.</summary>
    /// <param name="config">The generation settings (validated here).</param>
    /// <param name="batchSize">Number of rows.</param>
    /// <param name="promptLength">Width of the prompt batch (left padding included).</param>
    /// <param name="createDecoder">
    /// Creates one incremental decoder per row (e.g. <c>() => tokenizer.CreateStreamingDecoder(skipSpecialTokens: true)</c>);
    /// required for stop strings, and gives <see cref="TakeText"/> and <see cref="GeneratedSequence.Text"/>.
    /// </param>
    /// <exception cref="ArgumentException">
    /// The configuration is invalid; stop strings are set without <paramref name="createDecoder"/>; or rows of a batch can
    /// finish early (end-of-sequence ids or stop strings) but there is no pad id to fill them with.
    /// </exception>
    public GenerationTracker(GenerationConfig config, int batchSize, int promptLength, Func<StreamingDecoder>? createDecoder)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        ArgumentOutOfRangeException.ThrowIfNegative(promptLength);
        config.Validate();
        if (config.StopStrings is not null && createDecoder is null)
            throw new ArgumentException("Stop strings need a decoder to find them in the generated text.", nameof(createDecoder));

        PadTokenId = config.ResolvePadTokenId();
        var rowsCanFinishEarly = config.EosTokenId is not null || config.StopStrings is not null;
        if (batchSize > 1 && rowsCanFinishEarly && PadTokenId is null)
            throw new ArgumentException(
                "Rows of a batch can finish before the others, so set PadTokenId (or EosTokenId) to fill them.", nameof(config));

        BatchSize = batchSize;
        PromptLength = promptLength;
        MaxNewTokens = config.ResolveMaxNewTokens(promptLength);
        eosTokenIds = config.EosTokenId?.ToHashSet() ?? [];
        rows = Enumerable.Range(0, batchSize).Select(_ => new Row(createDecoder?.Invoke(), config.StopStrings)).ToArray();
    }

    /// <summary>Number of rows.</summary>
    public int BatchSize { get; }

    /// <summary>Width of the prompt batch.</summary>
    public int PromptLength { get; }

    /// <summary>The token budget: no row gets more new tokens than this.</summary>
    public int MaxNewTokens { get; }

    /// <summary>The id appended to finished rows (<see cref="GenerationConfig.ResolvePadTokenId"/>).</summary>
    public int? PadTokenId { get; }

    /// <summary>Steps taken so far, i.e. tokens appended to every row (padding included).</summary>
    public int Steps { get; private set; }

    /// <summary>Whether every row has finished; the decode loop ends then.</summary>
    public bool IsDone => rows.All(r => r.Reason is not null);

    /// <summary>Why <paramref name="row"/> finished, or <c>null</c> while it is still generating.</summary>
    public FinishReason? GetFinishReason(int row) => rows[row].Reason;

    /// <summary>
    /// Records one step: the token sampled for each row. Returns the tokens to append to the sequences: the sampled
    /// ones, with <see cref="PadTokenId"/> in rows that had finished before this step.
    /// </summary>
    /// <param name="nextTokens">One id per row, <c>[batch]</c>, any integer dtype, any device.</param>
    /// <returns>The ids to append, <c>[batch]</c>, int64, on the device of <paramref name="nextTokens"/>.</returns>
    /// <exception cref="InvalidOperationException">Every row has already finished.</exception>
    public Tensor Advance(Tensor nextTokens)
    {
        ArgumentNullException.ThrowIfNull(nextTokens);
        if (nextTokens.dim() != 1 || nextTokens.shape[0] != BatchSize)
            throw new ArgumentException($"Expected one token per row ([{BatchSize}]), got [{string.Join(", ", nextTokens.shape)}].", nameof(nextTokens));
        using var onCpu = nextTokens.to(ScalarType.Int64, CPU);
        var appended = Advance(onCpu.data<long>().ToArray());
        return tensor(appended, dtype: ScalarType.Int64, device: nextTokens.device);
    }

    /// <summary>Records one step; see <see cref="Advance(Tensor)"/>.</summary>
    /// <param name="nextTokens">One id per row.</param>
    /// <returns>The ids to append to each row.</returns>
    /// <exception cref="InvalidOperationException">Every row has already finished.</exception>
    public long[] Advance(ReadOnlySpan<long> nextTokens)
    {
        if (nextTokens.Length != BatchSize)
            throw new ArgumentException($"Expected one token per row ({BatchSize}), got {nextTokens.Length}.", nameof(nextTokens));
        if (IsDone) throw new InvalidOperationException("Every row has finished; the generation is over.");

        var appended = new long[BatchSize];
        for (var i = 0; i < BatchSize; i++)
        {
            var row = rows[i];
            if (row.Reason is not null)
            {
                // A row finishes before the others only with an eos id or a stop string, which the constructor made sure come with a pad id.
                appended[i] = PadTokenId.GetValueOrDefault();
                continue;
            }
            var token = nextTokens[i];
            if (token is < 0 or > int.MaxValue)
                throw new ArgumentOutOfRangeException(nameof(nextTokens), token, $"Row {i}: not a token id.");
            appended[i] = token;
            row.Add((int)token, eosTokenIds.Contains((int)token));
        }
        Steps++;
        if (Steps >= MaxNewTokens)
            foreach (var row in rows.Where(r => r.Reason is null)) row.Finish(FinishReason.Length);
        return appended;
    }

    /// <summary>Finishes every row that is still generating with <see cref="FinishReason.Cancelled"/>.</summary>
    public void Cancel()
    {
        foreach (var row in rows.Where(r => r.Reason is null)) row.Finish(FinishReason.Cancelled);
    }

    /// <summary>
    /// The text of <paramref name="row"/> that became final since the previous call: for streaming. Text that may
    /// still turn into a stop string, and incomplete UTF-8 characters, are held back until decided.
    /// </summary>
    /// <exception cref="InvalidOperationException">No decode function was given.</exception>
    public string TakeText(int row) => rows[row].TakeText();

    /// <summary>The outcome of every row, once all have finished.</summary>
    /// <exception cref="InvalidOperationException">Some row is still generating.</exception>
    public IReadOnlyList<GeneratedSequence> GetSequences()
    {
        if (!IsDone) throw new InvalidOperationException("Some rows are still generating; call Cancel() to stop them first.");
        return rows.Select(r => r.ToSequence()).ToArray();
    }

    private sealed class Row(StreamingDecoder? stream, IReadOnlyList<string>? stopStrings)
    {
        private readonly List<int> tokens = [];
        private readonly StreamingDecoder? stream = stream;
        private readonly StopStringMatcher? matcher = stopStrings is null ? null : new StopStringMatcher(stopStrings);
        private readonly StringBuilder text = new();
        private int taken;

        public FinishReason? Reason { get; private set; }

        public void Add(int token, bool isEos)
        {
            tokens.Add(token);
            if (isEos)
            {
                Finish(FinishReason.EndOfSequence);
                return;
            }
            if (this.stream is not null) Release(this.stream.Append(token));
        }

        public void Finish(FinishReason reason)
        {
            Reason = reason;
            if (this.stream is null) return;
            Release(this.stream.Flush());
            if (matcher is { StopString: null }) text.Append(matcher.Flush());
        }

        public string TakeText()
        {
            if (this.stream is null) throw new InvalidOperationException("No decode function was given, so there is no text.");
            var piece = text.ToString(taken, text.Length - taken);
            taken = text.Length;
            return piece;
        }

        public GeneratedSequence ToSequence() =>
            new(tokens.ToArray(), Reason!.Value, this.stream is null ? null : text.ToString(), matcher?.StopString);

        private void Release(string piece)
        {
            if (matcher is null)
            {
                text.Append(piece);
                return;
            }
            if (matcher.StopString is not null) return;
            var scan = matcher.Push(piece);
            text.Append(scan.SafeText);
            if (scan.Stopped) Reason = FinishReason.StopString;
        }
    }
}
