namespace Rinna.Net.Generation;

/// <summary>What <see cref="StopStringMatcher.Push"/> found in the text given so far.</summary>
/// <param name="SafeText">Text that can be emitted now: it is not (and cannot become) part of a stop string.</param>
/// <param name="StopString">The stop string that completed, or <c>null</c>. Once set, nothing after it is ever emitted.</param>
public readonly record struct StopStringScan(string SafeText, string? StopString)
{
    /// <summary>Whether a stop string completed.</summary>
    public bool Stopped => StopString is not null;
}

/// <summary>
/// Finds stop strings in a stream of decoded text pieces, however the pieces split them, and says how much text is
/// safe to emit: text that could still turn out to be the start of a stop string is held back until the next piece
/// decides it, and neither a stop string nor anything after it is ever emitted.
/// </summary>
/// <remarks>One matcher per sequence; not thread-safe.</remarks>
public sealed class StopStringMatcher
{
    private readonly string[] stopStrings;
    private string held = "";

    /// <summary>Creates a matcher.</summary>
    /// <param name="stopStrings">The stop strings; none may be empty.</param>
    /// <exception cref="ArgumentException">The list is empty or holds an empty string.</exception>
    public StopStringMatcher(IEnumerable<string> stopStrings)
    {
        ArgumentNullException.ThrowIfNull(stopStrings);
        this.stopStrings = stopStrings.Distinct(StringComparer.Ordinal).ToArray();
        if (this.stopStrings.Length == 0) throw new ArgumentException("Give at least one stop string.", nameof(stopStrings));
        if (this.stopStrings.Any(string.IsNullOrEmpty)) throw new ArgumentException("Stop strings must not be empty.", nameof(stopStrings));
    }

    /// <summary>The stop string that completed, or <c>null</c> while none has.</summary>
    public string? StopString { get; private set; }

    /// <summary>Text received but not yet released, because it may be the start of a stop string.</summary>
    public string HeldText => held;

    /// <summary>Adds the next piece of decoded text.</summary>
    /// <returns>The text that became safe to emit, and the stop string if one completed (the first one to start, when several).</returns>
    /// <exception cref="InvalidOperationException">A stop string already completed.</exception>
    public StopStringScan Push(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (StopString is not null) throw new InvalidOperationException($"The stop string '{StopString}' already completed.");
        var pending = held + text;

        var (start, found) = FirstOccurrence(pending);
        if (found is not null)
        {
            StopString = found;
            held = "";
            return new StopStringScan(pending[..start], found);
        }

        var hold = LongestSuffixThatStartsAStopString(pending);
        held = pending[^hold..];
        return new StopStringScan(pending[..^hold], null);
    }

    /// <summary>Ends the stream: releases the held text, since no later piece can complete a stop string with it.</summary>
    /// <returns>The held text (empty after a stop string completed).</returns>
    public string Flush()
    {
        var held = this.held;
        this.held = "";
        return held;
    }

    private (int Start, string? StopString) FirstOccurrence(string text)
    {
        var best = (Start: int.MaxValue, StopString: (string?)null);
        foreach (var stop in stopStrings)
        {
            var at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (at < best.Start || (at == best.Start && stop.Length < best.StopString!.Length))) best = (at, stop);
        }
        return best;
    }

    private int LongestSuffixThatStartsAStopString(string text)
    {
        var longest = 0;
        foreach (var stop in stopStrings)
            for (var length = Math.Min(stop.Length - 1, text.Length); length > longest; length--)
                if (string.CompareOrdinal(text, text.Length - length, stop, 0, length) == 0)
                {
                    longest = length;
                    break;
                }
        return longest;
    }
}
