using System.Globalization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Native;

/// <summary>Reads this process's memory mappings (/proc/self/smaps) for the huge-page tests.</summary>
internal static class SmapsMapping
{
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
