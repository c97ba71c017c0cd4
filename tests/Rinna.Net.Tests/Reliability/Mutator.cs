using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// Seeded mutations of a valid input: byte-level damage (bit flips, inserts, deletes, truncation, 64-bit "length lies")
/// and JSON-aware damage (a value replaced by a huge, negative, fractional, wrongly typed, deeply nested or enormous value,
/// a duplicated or dropped key). The same seed always yields the same input, so a failure names a reproducible case.
/// </summary>
internal sealed class Mutator(int seed)
{
    private static readonly string[] HostileJsonValues =
    [
        "0", "-1", "-2147483648", "2147483647", "2147483648", "-9223372036854775809", "9223372036854775807",
        "18446744073709551616", "1e308", "1e400", "-1e400", "1e-400", "0.5", "-0.0", "3.0000000001", "1E2",
        "\"NaN\"", "\"Infinity\"", "\"-1\"", "\"\"", "\"\\u0000\"", "\"../../etc/passwd\"", "\"/etc/passwd\"", "\"\\ud800\"",
        "true", "false", "null", "[]", "{}", "[1,2,3]", "[\"a\"]", "{\"content\":1}", "{\"type\":\"linear\",\"factor\":1e308}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ];

    private readonly Random random = new(seed);

    public int Next(int maxExclusive) => random.Next(maxExclusive);

    /// <summary>One to three stacked byte-level mutations.</summary>
    public byte[] MutateBytes(byte[] input, int focusLength = int.MaxValue)
    {
        var data = new List<byte>(input);
        int rounds = 1 + random.Next(3);
        for (int i = 0; i < rounds; i++) MutateOnce(data, Math.Min(focusLength, data.Count));
        return data.ToArray();
    }

    private void MutateOnce(List<byte> data, int focus)
    {
        if (data.Count == 0) { data.Add((byte)random.Next(256)); return; }
        focus = Math.Max(1, focus);
        int at = random.Next(focus);
        switch (random.Next(8))
        {
            case 0: data[at] ^= (byte)(1 << random.Next(8)); break;
            case 1: data[at] = (byte)new[] { 0x00, 0xFF, 0x7F, 0x80, 0x01, (byte)'"', (byte)'{', (byte)'[', (byte)'9' }[random.Next(9)]; break;
            case 2: data.InsertRange(at, Enumerable.Range(0, 1 + random.Next(16)).Select(_ => (byte)random.Next(256))); break;
            case 3: data.RemoveRange(at, Math.Min(data.Count - at, 1 + random.Next(16))); break;
            case 4:
            {
                int cut = random.Next(data.Count);
                data.RemoveRange(cut, data.Count - cut);
                break;
            }
            case 5:
            {
                int length = Math.Min(data.Count - at, 1 + random.Next(64));
                data.InsertRange(at, data.GetRange(at, length));
                break;
            }
            case 6: WriteInt64(data, at, InterestingInt64()); break;
            default:
            {
                // Varint-shaped damage: protobuf lengths and tags are LEB128, so plant a long continuation run.
                var run = Enumerable.Repeat((byte)0xFF, 1 + random.Next(10)).Append((byte)random.Next(128));
                data.InsertRange(at, run);
                break;
            }
        }
    }

    private long InterestingInt64() => random.Next(8) switch
    {
        0 => 0,
        1 => -1,
        2 => long.MaxValue,
        3 => long.MinValue,
        4 => int.MaxValue,
        5 => 1L << 40,
        6 => 100_000_001,
        _ => random.NextInt64(),
    };

    private static void WriteInt64(List<byte> data, int at, long value)
    {
        var bytes = BitConverter.GetBytes(value);
        for (int i = 0; i < 8 && at + i < data.Count; i++) data[at + i] = bytes[i];
    }

    /// <summary>A JSON-aware mutation of <paramref name="json"/>; falls back to byte damage when the text is not an object.</summary>
    public string MutateJson(string json)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(json); }
        catch (JsonException) { return Encoding.UTF8.GetString(MutateBytes(Encoding.UTF8.GetBytes(json))); }
        if (root is null) return json;

        var slots = new List<(JsonNode Parent, string? Key, int Index)>();
        Collect(root, slots);
        switch (random.Next(10))
        {
            case 0: return Encoding.UTF8.GetString(MutateBytes(Encoding.UTF8.GetBytes(json)));
            case 1 when root is JsonObject top && top.Count > 0:
            {
                // Duplicate key: the same name again with a different value, in front of the original.
                var name = top.ElementAt(random.Next(top.Count)).Key;
                int brace = json.IndexOf('{');
                return json[..(brace + 1)] + JsonSerializer.Serialize(name) + ":" + PickValue() + "," + json[(brace + 1)..];
            }
            case 2 when slots.Count > 0:
            {
                var (parent, key, index) = slots[random.Next(slots.Count)];
                if (parent is JsonObject o) o.Remove(key!); else ((JsonArray)parent).RemoveAt(index);
                return root.ToJsonString();
            }
            case 3: return json[..random.Next(json.Length)];
            default:
            {
                if (slots.Count == 0) return json;
                var (parent, key, index) = slots[random.Next(slots.Count)];
                const string placeholder = "\u0001PLACEHOLDER\u0001";
                if (parent is JsonObject o) o[key!] = placeholder; else ((JsonArray)parent)[index] = placeholder;
                return root.ToJsonString().Replace(JsonSerializer.Serialize(placeholder), PickValue(), StringComparison.Ordinal);
            }
        }
    }

    private string PickValue() => random.Next(12) switch
    {
        0 => JsonSerializer.Serialize(new string('x', 1 << 16)),
        1 => new string('[', 10_000) + new string(']', 10_000),
        2 => random.NextInt64(long.MinValue, long.MaxValue).ToString(System.Globalization.CultureInfo.InvariantCulture),
        3 => "[" + string.Join(",", Enumerable.Repeat("1", 10_000)) + "]",
        _ => HostileJsonValues[random.Next(HostileJsonValues.Length)],
    };

    private static void Collect(JsonNode node, List<(JsonNode, string?, int)> slots)
    {
        if (node is JsonObject o)
            foreach (var (key, child) in o.ToList())
            {
                slots.Add((o, key, -1));
                if (child is not null) Collect(child, slots);
            }
        else if (node is JsonArray a)
            for (int i = 0; i < a.Count; i++)
            {
                slots.Add((a, null, i));
                if (a[i] is { } child) Collect(child, slots);
            }
    }
}
