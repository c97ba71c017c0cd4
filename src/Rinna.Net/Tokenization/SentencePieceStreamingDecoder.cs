using System.Text;
using Rinna.Net.Tokenization.SentencePiece;

namespace Rinna.Net.Tokenization;

/// <summary>
/// Incremental form of <see cref="SlowSentencePieceTokenizer.Decode"/>: the same token stream, with each rule of the
/// batch decode applied as soon as its outcome is certain.
/// </summary>
internal sealed class SentencePieceStreamingDecoder : StreamingDecoder
{
    private readonly SlowSentencePieceTokenizer tokenizer;
    private readonly bool skipSpecialTokens;
    private readonly DecodeRules rules;

    private readonly StringBuilder runText = new();
    private readonly StringBuilder unsettled = new();
    private PieceRunDecoder? run;
    private int emittedFromRun;
    private bool runHeld;
    private int tokenIndex;
    private bool previousWasSpecial;
    private bool sawNonWhitespace;

    public SentencePieceStreamingDecoder(SlowSentencePieceTokenizer tokenizer, bool skipSpecialTokens)
    {
        this.tokenizer = tokenizer;
        this.skipSpecialTokens = skipSpecialTokens;
        rules = tokenizer.Rules;
    }

    public override string Append(int id)
    {
        tokenizer.ValidateId(id);
        if (skipSpecialTokens && tokenizer.IsSpecialId(id)) return "";
        var index = tokenIndex++;
        var (pieceId, token, isSpecial) = tokenizer.ResolveToken(id, index);
        var output = new StringBuilder();

        if (isSpecial)
        {
            var spaceBefore = !previousWasSpecial && (rules.SpaceBeforeLeadingSpecial || index != 0);
            var heldText = CloseRun();
            // The space goes before the run's text; a run that was not held started in leading whitespace that
            // the final strip removes, so the space would vanish with it.
            PushRaw((spaceBefore && runHeld ? " " : "") + heldText + token, output);
            runHeld = false;
            previousWasSpecial = true;
            return output.ToString();
        }

        if (run is null)
        {
            // A space will be inserted before this run if a special token follows it. Unless skipped, that can
            // happen, so hold the run back when the space would matter: always without a final strip, and with
            // one once the text has visible content (before that, the space is leading whitespace and stripped).
            runHeld = !skipSpecialTokens && (!rules.StripResult || sawNonWhitespace);
            run = new PieceRunDecoder(tokenizer.Model, runText);
            emittedFromRun = 0;
        }

        run.Append(pieceId, token);
        previousWasSpecial = false;
        if (!runHeld) PushRunProgress(output);
        return output.ToString();
    }

    public override string Flush()
    {
        var output = new StringBuilder();
        PushRaw(CloseRun(), output);
        var rest = unsettled.ToString();
        if (rules.StripResult) rest = DecodeRules.TrimEndPython(rest);
        if (rules.CleanUpTokenizationSpaces) rest = DecodeRules.CleanUp(rest);
        output.Append(rest);

        unsettled.Clear();
        runHeld = false;
        tokenIndex = 0;
        previousWasSpecial = false;
        sawNonWhitespace = false;
        return output.ToString();
    }

    /// <summary>Ends the current run; returns its text not yet pushed (all of it when the run was held).</summary>
    private string CloseRun()
    {
        if (run is null) return "";
        run.Finish();
        var rest = runText.ToString(emittedFromRun, runText.Length - emittedFromRun);
        runText.Clear();
        run = null;
        emittedFromRun = 0;
        return rest;
    }

    private void PushRunProgress(StringBuilder output)
    {
        if (runText.Length == emittedFromRun) return;
        var fresh = runText.ToString(emittedFromRun, runText.Length - emittedFromRun);
        emittedFromRun = runText.Length;
        PushRaw(fresh, output);
    }

    /// <summary>Feeds raw decoded text through the final strip / clean-up stage, emitting what is settled.</summary>
    private void PushRaw(string text, StringBuilder output)
    {
        if (text.Length == 0) return;
        if (rules.EmitsImmediately)
        {
            output.Append(text);
            return;
        }

        var span = text.AsSpan();
        if (rules.StripResult && !sawNonWhitespace)
        {
            var start = 0;
            while (start < span.Length && DecodeRules.IsPythonWhitespace(span[start])) start++;
            span = span[start..];
            if (span.IsEmpty) return;
        }

        sawNonWhitespace = true;
        var previousLength = unsettled.Length;
        unsettled.Append(span);
        var cut = -1;
        for (var i = unsettled.Length - 1; i >= previousLength; i--)
        {
            if (rules.IsSafeCutAfter(unsettled[i]))
            {
                cut = i + 1;
                break;
            }
        }

        if (cut < 0) return;
        var settled = unsettled.ToString(0, cut);
        unsettled.Remove(0, cut);
        output.Append(rules.CleanUpTokenizationSpaces ? DecodeRules.CleanUp(settled) : settled);
    }
}
