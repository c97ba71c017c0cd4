using System.Globalization;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Native;

/// <summary>What the huge-page tests share: the skip where the host has none, a model to load, and /proc/self/smaps.</summary>
internal static class HugePageProbe
{
    /// <summary>Skips the test where transparent huge pages are absent or switched off (weights then keep ordinary pages).</summary>
    public static void SkipUnlessAvailable()
    {
        const string Settings = "/sys/kernel/mm/transparent_hugepage/enabled";
        if (!OperatingSystem.IsLinux() || !File.Exists(Settings) || File.ReadAllText(Settings).Contains("[never]"))
            Assert.Skip("transparent huge pages are absent or switched off on this machine.");
    }

    /// <summary>Saves a random float16 model whose matrices are 2–8 MB (too small for glibc to map them on their own) into <paramref name="directory"/>.</summary>
    public static void SaveFloat16Model(string directory, int layers)
    {
        var config = new GptNeoXConfig
        {
            VocabSize = 512, HiddenSize = 1024, NumHiddenLayers = layers, NumAttentionHeads = 8, IntermediateSize = 4096,
            RotaryPct = 1.0, TorchDtype = "float16",
        };
        using var random = GptNeoXForCausalLM.CreateRandom(config, seed: 5, ScalarType.Float16);
        random.SavePretrained(directory);
    }

    /// <summary>
    /// The <c>VmFlags</c> and <c>AnonHugePages</c> of the mapping in /proc/self/smaps that holds the tensor's middle byte:
    /// the advice covers only the 2 MiB-aligned interior of the tensor, which the kernel splits off into a mapping of its own.
    /// </summary>
    public static unsafe (string Flags, long HugeBytes) Around(Tensor tensor)
    {
        ulong address;
        fixed (byte* data = tensor.bytes) address = (ulong)data + (ulong)tensor.bytes.Length / 2;
        bool inside = false;
        long? hugeBytes = null;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            var dash = line.IndexOf('-');
            var space = line.IndexOf(' ');
            if (dash > 0 && space > dash && ulong.TryParse(line.AsSpan(0, dash), NumberStyles.HexNumber, null, out var start)
                && ulong.TryParse(line.AsSpan(dash + 1, space - dash - 1), NumberStyles.HexNumber, null, out var end))
                inside = start <= address && address < end;
            else if (inside && line.StartsWith("AnonHugePages:", StringComparison.Ordinal))
                hugeBytes = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
            else if (inside && line.StartsWith("VmFlags:", StringComparison.Ordinal))
                return (line["VmFlags:".Length..].Trim(), hugeBytes ?? throw new InvalidOperationException("smaps listed VmFlags before AnonHugePages."));
        }
        throw new InvalidOperationException($"no mapping in /proc/self/smaps holds 0x{address:x}.");
    }
}
