using System.Text;
using Rinna.Net.Tokenization.Fast;

namespace Rinna.Net.Tokenization;

/// <summary>
/// Incremental form of <see cref="PreTrainedTokenizerFast.Decode"/>. Byte-level BPE splits a character's UTF-8 bytes
/// over several tokens (most Japanese characters take two or three), so the bytes of a character still incomplete at
/// the end are held back until a later token completes it, or <see cref="Flush"/> replaces them with U+FFFD as the
/// batch decode does; with clean-up, text that a later token could still change is held back too.
/// </summary>
internal sealed class FastStreamingDecoder : StreamingDecoder
{
    private readonly PreTrainedTokenizerFast tokenizer;
    private readonly bool skipSpecialTokens;
    private readonly DecodeRules rules;
    private readonly List<byte> pendingBytes = [];
    private readonly StringBuilder unsettled = new();
    private bool anyToken;

    public FastStreamingDecoder(PreTrainedTokenizerFast tokenizer, bool skipSpecialTokens)
    {
        this.tokenizer = tokenizer;
        this.skipSpecialTokens = skipSpecialTokens;
        rules = tokenizer.Rules;
    }

    public override string Append(int id)
    {
        if (tokenizer.DecodeToken(id, skipSpecialTokens) is not { } token) return "";
        if (!tokenizer.ByteLevelDecoder)
        {
            var text = anyToken ? " " + token : token;
            anyToken = true;
            return Settle(text);
        }

        ByteLevelAlphabet.AppendBytes(token, pendingBytes);
        var complete = pendingBytes.Count - IncompleteTailLength(pendingBytes);
        if (complete == 0) return "";
        var decoded = Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(pendingBytes)[..complete]);
        pendingBytes.RemoveRange(0, complete);
        return Settle(decoded);
    }

    public override string Flush()
    {
        var rest = unsettled.Append(Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(pendingBytes))).ToString();
        pendingBytes.Clear();
        unsettled.Clear();
        anyToken = false;
        return rules.CleanUpTokenizationSpaces ? DecodeRules.CleanUp(rest) : rest;
    }

    /// <summary>Emits the part of the text that clean-up can no longer change.</summary>
    private string Settle(string text)
    {
        if (rules.EmitsImmediately || text.Length == 0) return text;
        var previousLength = unsettled.Length;
        unsettled.Append(text);
        for (var i = unsettled.Length - 1; i >= previousLength; i--)
        {
            if (!rules.IsSafeCutAfter(unsettled[i])) continue;
            var settled = unsettled.ToString(0, i + 1);
            unsettled.Remove(0, i + 1);
            return DecodeRules.CleanUp(settled);
        }

        return "";
    }

    /// <summary>
    /// Length of the trailing bytes that start a UTF-8 sequence without finishing it (0 to 3). The bytes before them
    /// decode the same whatever follows, since a lead byte always ends the previous ill-formed subsequence.
    /// </summary>
    internal static int IncompleteTailLength(List<byte> bytes)
    {
        for (var length = 1; length <= Math.Min(3, bytes.Count); length++)
        {
            var lead = bytes[^length];
            if (lead is >= 0x80 and <= 0xBF) continue;
            var needed = lead switch
            {
                >= 0xC2 and <= 0xDF => 2,
                >= 0xE0 and <= 0xEF => 3,
                >= 0xF0 and <= 0xF4 => 4,
                _ => 1,
            };
            if (needed <= length) return 0;
            if (length >= 2)
            {
                var second = bytes[^(length - 1)];
                var (low, high) = lead switch
                {
                    0xE0 => (0xA0, 0xBF),
                    0xED => (0x80, 0x9F),
                    0xF0 => (0x90, 0xBF),
                    0xF4 => (0x80, 0x8F),
                    _ => (0x80, 0xBF),
                };
                if (second < low || second > high) return 0;
            }

            return length;
        }

        return 0;
    }
}
