using System.Globalization;

namespace Rinna.Net.Model.DeviceMap;

/// <summary>Parses the device names a device map or a memory budget may use into one canonical form.</summary>
internal static class DeviceNames
{
    /// <summary>The host: where modules that fit on no accelerator are kept.</summary>
    internal const string Cpu = "cpu";

    private const string CudaPrefix = "cuda:";

    /// <summary>
    /// Returns <c>cpu</c> or <c>cuda:N</c> for <c>cpu</c>, <c>cuda</c> (device 0), <c>cuda:N</c> or a bare index <c>N</c>
    /// (transformers writes GPU <c>N</c> as the integer <c>N</c>).
    /// </summary>
    /// <exception cref="ArgumentException">The name is none of these; the message quotes it.</exception>
    internal static string Normalize(string? device, string paramName)
    {
        var name = device?.Trim().ToLowerInvariant();
        if (string.IsNullOrEmpty(name))
            throw new ArgumentException("A device name must not be empty; expected cpu, cuda, cuda:N or N.", paramName);
        if (name == Cpu) return Cpu;
        if (name == "cuda") return CudaPrefix + "0";
        var index = name.StartsWith(CudaPrefix, StringComparison.Ordinal) ? name[CudaPrefix.Length..] : name;
        if (index.Length > 0 && index.All(char.IsAsciiDigit) && int.TryParse(index, NumberStyles.None, CultureInfo.InvariantCulture, out var ordinal))
            return CudaPrefix + ordinal.ToString(CultureInfo.InvariantCulture);
        if (name == "disk")
            throw new ArgumentException($"Device '{device}': offloading to disk is not supported; modules that fit on no GPU stay on the cpu.", paramName);
        throw new ArgumentException($"Unknown device '{device}'; expected cpu, cuda, cuda:N or N.", paramName);
    }

    internal static bool IsCuda(string normalized) => normalized.StartsWith(CudaPrefix, StringComparison.Ordinal);
}
