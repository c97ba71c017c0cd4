using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>The generated continuation of one prompt.</summary>
/// <param name="Text">The new text (special tokens skipped; a stop string and what follows it left out).</param>
/// <param name="TokenIds">The new token ids (the end-of-sequence id included when one ended the text).</param>
/// <param name="PromptTokens">Tokens in the prompt.</param>
/// <param name="FinishReason">Why generation stopped.</param>
/// <param name="StopString">The stop string that ended the text, if one did.</param>
public sealed record GeneratedText(string Text, IReadOnlyList<int> TokenIds, int PromptTokens, FinishReason FinishReason, string? StopString);

/// <summary>
/// Text in, text out: encode a prompt the way rinna's model cards do (<c>add_special_tokens=False</c>), generate, and
/// decode — whole or streamed piece by piece as tokens are produced.
/// </summary>
public static class TextGeneration
{
    /// <summary>Generates a continuation of <paramref name="prompt"/> and returns it decoded.</summary>
    /// <param name="model">The model.</param>
    /// <param name="tokenizer">Its tokenizer.</param>
    /// <param name="prompt">The prompt text (for rinna's instruction models, built with <see cref="RinnaChatPromptBuilder"/>).</param>
    /// <param name="config">Settings; <c>null</c> means the model's <c>generation_config</c>.</param>
    /// <param name="cancellationToken">Stops between tokens; the text so far is returned with <see cref="FinishReason.Cancelled"/>.</param>
    /// <exception cref="ArgumentException">The prompt is empty or longer than the model's context.</exception>
    public static GeneratedText GenerateText(this GptNeoXForCausalLM model, PreTrainedTokenizer tokenizer, string prompt,
        GenerationConfig? config = null, CancellationToken cancellationToken = default)
    {
        using var ids = EncodePrompt(model, tokenizer, prompt);
        var output = model.Generate(ids, config, tokenizer: tokenizer, cancellationToken: cancellationToken);
        output.Sequences.Dispose();
        var row = output.Rows[0];
        return new GeneratedText(row.Text ?? "", row.TokenIds, (int)ids.shape[1], row.FinishReason, row.StopString);
    }

    /// <summary>
    /// Generates a continuation of <paramref name="prompt"/> and yields its text as it is produced: each piece is final
    /// (never half a UTF-8 character, never part of a stop string that may still complete), and the pieces concatenate
    /// to <see cref="GenerateText"/>'s text. Generation runs on a worker thread; cancelling the token, or abandoning the
    /// enumeration, stops it within one token.
    /// </summary>
    /// <inheritdoc cref="GenerateText" path="/param"/>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    public static IAsyncEnumerable<string> GenerateTextStreamingAsync(this GptNeoXForCausalLM model, PreTrainedTokenizer tokenizer,
        string prompt, GenerationConfig? config = null, CancellationToken cancellationToken = default) =>
        StreamAsync(model, tokenizer, prompt, config, completed: null, cancellationToken);

    /// <summary>The streaming generation; <paramref name="completed"/> receives the whole result before the last piece is read.</summary>
    internal static async IAsyncEnumerable<string> StreamAsync(GptNeoXForCausalLM model, PreTrainedTokenizer tokenizer,
        string prompt, GenerationConfig? config, Action<GeneratedText>? completed, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var pieces = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // A thread of its own that exits with the generation, so that no pool thread keeps a libgomp team
        // (LibTorchOpenMp.RunOnOwnThread).
        var worker = Native.LibTorchOpenMp.RunOnOwnThread(() =>
        {
            try
            {
                using var ids = EncodePrompt(model, tokenizer, prompt);
                var output = model.Generate(ids, config, tokenizer: tokenizer, onStep: tracker =>
                {
                    var piece = tracker.TakeText(0);
                    if (piece.Length > 0) pieces.Writer.TryWrite(piece);
                }, cancellationToken: stop.Token);
                output.Sequences.Dispose();
                var row = output.Rows[0];
                completed?.Invoke(new GeneratedText(row.Text ?? "", row.TokenIds, (int)ids.shape[1], row.FinishReason, row.StopString));
                pieces.Writer.TryComplete();
            }
            catch (Exception ex)
            {
                pieces.Writer.TryComplete(ex);
            }
            return true;
        }, "Rinna.Net generation", CancellationToken.None);
        try
        {
            await foreach (var piece in pieces.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return piece;
            cancellationToken.ThrowIfCancellationRequested();
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            await worker.ConfigureAwait(false);
        }
    }

    private static Tensor EncodePrompt(GptNeoXForCausalLM model, PreTrainedTokenizer tokenizer, string prompt) =>
        tensor(EncodePromptIds(model, tokenizer, prompt).Select(i => (long)i).ToArray(), ScalarType.Int64).unsqueeze(0);

    /// <summary>The prompt's ids as the model cards encode it (no special tokens), checked to fit the model.</summary>
    /// <exception cref="ArgumentException">The prompt is empty or longer than the model's context.</exception>
    internal static int[] EncodePromptIds(GptNeoXForCausalLM model, PreTrainedTokenizer tokenizer, string prompt)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(prompt);
        var ids = tokenizer.Encode(prompt, addSpecialTokens: false);
        CheckPromptLength(model, ids.Length);
        return ids;
    }

    /// <summary>Refuses a prompt of <paramref name="tokens"/> ids that is empty or leaves the model no position to answer in.</summary>
    /// <exception cref="ArgumentException">The prompt is empty or longer than the model's context.</exception>
    internal static void CheckPromptLength(GptNeoXForCausalLM model, int tokens)
    {
        if (tokens == 0) throw new ArgumentException("The prompt is empty: generation needs at least one token.", "prompt");
        if (tokens >= model.Config.MaxPositionEmbeddings && model.Config.RopeScaling is null)
            throw new ArgumentException(
                $"The prompt has {tokens} tokens; the model was trained on at most {model.Config.MaxPositionEmbeddings} " +
                "(max_position_embeddings), so nothing sensible can follow it. Shorten the prompt.", "prompt");
    }
}
