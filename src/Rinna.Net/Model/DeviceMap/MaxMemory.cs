using System.Collections;
using System.Globalization;

namespace Rinna.Net.Model.DeviceMap;

/// <summary>
/// transformers' <c>max_memory</c>: the most bytes of weights the planner may put on each device, e.g.
/// <c>new MaxMemory { { "cuda:0", "10GiB" }, { "cpu", "30GiB" } }</c>. Devices without an entry get their detected
/// capacity (no limit where it is unknown).
/// </summary>
public sealed class MaxMemory : IReadOnlyDictionary<string, long>
{
    private static readonly (string Suffix, long Multiplier)[] Units =
    [
        ("TIB", 1L << 40), ("GIB", 1L << 30), ("MIB", 1L << 20), ("KIB", 1L << 10),
        ("TB", 1_000_000_000_000L), ("GB", 1_000_000_000L), ("MB", 1_000_000L), ("KB", 1_000L), ("B", 1L),
    ];

    private readonly Dictionary<string, long> limits = new(StringComparer.Ordinal);

    /// <summary>Sets the budget of a device in bytes.</summary>
    /// <param name="device"><c>cpu</c>, <c>cuda</c>, <c>cuda:N</c> or <c>N</c>.</param>
    /// <param name="bytes">The budget; zero means nothing may go there.</param>
    /// <exception cref="ArgumentException">The device name is invalid or already has a budget.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The budget is negative.</exception>
    public void Add(string device, long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        var name = DeviceNames.Normalize(device, nameof(device));
        if (!limits.TryAdd(name, bytes))
            throw new ArgumentException($"max_memory names device '{device}' ({name}) twice.", nameof(device));
    }

    /// <summary>Sets the budget of a device from a size string such as <c>"10GiB"</c>, <c>"500MB"</c> or <c>"1073741824"</c>.</summary>
    /// <param name="device"><c>cpu</c>, <c>cuda</c>, <c>cuda:N</c> or <c>N</c>.</param>
    /// <param name="size">See <see cref="ParseSize"/>.</param>
    /// <exception cref="ArgumentException">The device name or the size is invalid.</exception>
    public void Add(string device, string size) => Add(device, ParseSize(size));

    /// <summary>
    /// Parses a size: a non-negative number (decimals allowed) followed by an optional unit, case-insensitive:
    /// <c>B</c>, <c>KB</c>/<c>MB</c>/<c>GB</c>/<c>TB</c> (powers of 1000) or <c>KiB</c>/<c>MiB</c>/<c>GiB</c>/<c>TiB</c>
    /// (powers of 1024), as transformers' <c>convert_file_size_to_int</c>.
    /// </summary>
    /// <param name="size">For example <c>"10GiB"</c>, <c>"1.5 GB"</c>, <c>"500MB"</c>, <c>"4096"</c>.</param>
    /// <returns>The size in bytes, rounded down.</returns>
    /// <exception cref="ArgumentException">The text is not such a size; the message quotes it.</exception>
    public static long ParseSize(string size)
    {
        ArgumentNullException.ThrowIfNull(size);
        var text = size.Trim().ToUpperInvariant();
        var (number, multiplier) = (text, 1L);
        foreach (var (suffix, unit) in Units)
        {
            if (!text.EndsWith(suffix, StringComparison.Ordinal)) continue;
            (number, multiplier) = (text[..^suffix.Length].TrimEnd(), unit);
            break;
        }
        if (!decimal.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value))
            throw new ArgumentException($"Invalid memory size '{size}'; expected a number with an optional unit such as 10GiB, 500MB or 4096.", nameof(size));
        var bytes = value * multiplier;
        if (bytes > long.MaxValue)
            throw new ArgumentException($"Memory size '{size}' is too large.", nameof(size));
        return (long)decimal.Floor(bytes);
    }

    /// <inheritdoc />
    public long this[string key] => limits[key];

    /// <summary>The devices with a budget, in canonical form (<c>cpu</c>, <c>cuda:N</c>).</summary>
    public IEnumerable<string> Keys => limits.Keys;

    /// <summary>The budgets in bytes, in the order of <see cref="Keys"/>.</summary>
    public IEnumerable<long> Values => limits.Values;

    /// <summary>The number of devices with a budget.</summary>
    public int Count => limits.Count;

    /// <summary>Whether <paramref name="key"/> (in canonical form: <c>cpu</c>, <c>cuda:N</c>) has a budget.</summary>
    /// <param name="key">The device.</param>
    public bool ContainsKey(string key) => limits.ContainsKey(key);

    /// <summary>Looks up the budget of <paramref name="key"/> (in canonical form: <c>cpu</c>, <c>cuda:N</c>).</summary>
    /// <param name="key">The device.</param>
    /// <param name="value">The budget in bytes, when present.</param>
    public bool TryGetValue(string key, out long value) => limits.TryGetValue(key, out value);

    /// <summary>Enumerates device → budget pairs.</summary>
    public IEnumerator<KeyValuePair<string, long>> GetEnumerator() => limits.GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
