namespace Rinna.Net.Model.DeviceMap;

/// <summary>How a <see cref="DeviceMapSpec"/> places modules.</summary>
public enum DeviceMapStrategy
{
    /// <summary>transformers' <c>"auto"</c>: the same as <see cref="Balanced"/>.</summary>
    Auto,

    /// <summary>Spread modules evenly over the GPUs within their budgets; what does not fit stays on the cpu.</summary>
    Balanced,

    /// <summary>Fill GPU 0 up to its budget, then GPU 1, and so on; what does not fit stays on the cpu.</summary>
    Sequential,

    /// <summary>Everything on one device (<c>"cpu"</c>, <c>"cuda:0"</c>, ...).</summary>
    SingleDevice,

    /// <summary>An explicit map from module names (or dotted prefixes of them) to devices.</summary>
    Explicit,
}

/// <summary>
/// The <c>device_map</c> argument of transformers' <c>from_pretrained</c>: <c>"auto"</c>, <c>"balanced"</c>,
/// <c>"sequential"</c>, a single device (<c>"cpu"</c>, <c>"cuda"</c>, <c>"cuda:1"</c>, <c>"1"</c>), or an explicit map
/// from module name to device. A string converts implicitly, so <c>options.DeviceMap = "auto"</c> works.
/// </summary>
/// <remarks>
/// The spec only says what was asked; <see cref="DeviceMapPlanner.Plan"/> turns it into a placement once the module
/// sizes and the available devices are known, and reports module names and devices it cannot honour.
/// </remarks>
public sealed class DeviceMapSpec
{
    private const string Expected = "expected auto, balanced, sequential, cpu, cuda, cuda:N, N, or an explicit module-to-device map";

    private DeviceMapSpec(DeviceMapStrategy strategy, string? device, IReadOnlyDictionary<string, string>? assignments)
    {
        Strategy = strategy;
        Device = device;
        Assignments = assignments;
    }

    /// <summary><c>"auto"</c>: balanced over the GPUs, the rest on the cpu.</summary>
    public static DeviceMapSpec Auto { get; } = new(DeviceMapStrategy.Auto, null, null);

    /// <summary><c>"balanced"</c>: the same placement as <see cref="Auto"/>.</summary>
    public static DeviceMapSpec Balanced { get; } = new(DeviceMapStrategy.Balanced, null, null);

    /// <summary><c>"sequential"</c>: GPU 0 first, then the next GPU, the rest on the cpu.</summary>
    public static DeviceMapSpec Sequential { get; } = new(DeviceMapStrategy.Sequential, null, null);

    /// <summary><c>"cpu"</c>: everything on the host.</summary>
    public static DeviceMapSpec Cpu { get; } = new(DeviceMapStrategy.SingleDevice, DeviceNames.Cpu, null);

    /// <summary>How modules are placed.</summary>
    public DeviceMapStrategy Strategy { get; }

    /// <summary>The device (<c>cpu</c> or <c>cuda:N</c>) for <see cref="DeviceMapStrategy.SingleDevice"/>; otherwise <c>null</c>.</summary>
    public string? Device { get; }

    /// <summary>
    /// For <see cref="DeviceMapStrategy.Explicit"/>: module name or dotted prefix (<c>""</c> is the whole model) → device
    /// (<c>cpu</c> or <c>cuda:N</c>); otherwise <c>null</c>.
    /// </summary>
    public IReadOnlyDictionary<string, string>? Assignments { get; }

    /// <summary>Parses a <c>device_map</c> string.</summary>
    /// <param name="spec"><c>auto</c>, <c>balanced</c>, <c>sequential</c>, <c>cpu</c>, <c>cuda</c>, <c>cuda:N</c> or <c>N</c> (case-insensitive).</param>
    /// <exception cref="ArgumentException">The string is empty or none of these; the message quotes it.</exception>
    public static DeviceMapSpec Parse(string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        switch (spec.Trim().ToLowerInvariant())
        {
            case "auto": return Auto;
            case "balanced": return Balanced;
            case "sequential": return Sequential;
            case "balanced_low_0":
                throw new ArgumentException($"device_map '{spec}' is not supported; {Expected}.", nameof(spec));
        }
        try
        {
            return OnDevice(spec);
        }
        catch (ArgumentException ex)
        {
            throw new ArgumentException($"Unknown device_map '{spec}'; {Expected}.", nameof(spec), ex);
        }
    }

    /// <summary>Places every module on one device.</summary>
    /// <param name="device"><c>cpu</c>, <c>cuda</c>, <c>cuda:N</c> or <c>N</c>.</param>
    /// <exception cref="ArgumentException">The device name is not one of these.</exception>
    public static DeviceMapSpec OnDevice(string device)
    {
        var normalized = DeviceNames.Normalize(device, nameof(device));
        return normalized == DeviceNames.Cpu ? Cpu : new DeviceMapSpec(DeviceMapStrategy.SingleDevice, normalized, null);
    }

    /// <summary>
    /// An explicit map like transformers' dict form, e.g. <c>{"gpt_neox.embed_in": "cuda:0", "gpt_neox.layers.0": "0",
    /// "gpt_neox": "cuda:1", "embed_out": "cpu"}</c>. A key may be a whole module or a dotted prefix of module names
    /// (<c>"gpt_neox.layers"</c>, <c>"gpt_neox"</c>, <c>""</c> for everything); the longest matching key wins.
    /// </summary>
    /// <param name="assignments">Module name or prefix → device (<c>cpu</c>, <c>cuda</c>, <c>cuda:N</c> or <c>N</c>).</param>
    /// <exception cref="ArgumentException">The map is empty, names a key twice, or holds an invalid device name.</exception>
    public static DeviceMapSpec FromAssignments(IEnumerable<KeyValuePair<string, string>> assignments)
    {
        ArgumentNullException.ThrowIfNull(assignments);
        var normalized = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, device) in assignments)
        {
            var module = key?.Trim() ?? throw new ArgumentException("A device_map key must not be null; use \"\" for the whole model.", nameof(assignments));
            string target;
            try
            {
                target = DeviceNames.Normalize(device, nameof(assignments));
            }
            catch (ArgumentException ex)
            {
                throw new ArgumentException($"device_map['{module}']: {ex.Message}", nameof(assignments), ex);
            }
            if (!normalized.TryAdd(module, target))
                throw new ArgumentException($"device_map names module '{module}' twice.", nameof(assignments));
        }
        if (normalized.Count == 0)
            throw new ArgumentException("An explicit device_map must name at least one module.", nameof(assignments));
        return new DeviceMapSpec(DeviceMapStrategy.Explicit, null, normalized.AsReadOnly());
    }

    /// <summary>Parses a <c>device_map</c> string (see <see cref="Parse"/>).</summary>
    /// <param name="spec">The string form.</param>
    public static implicit operator DeviceMapSpec(string spec) => Parse(spec);

    /// <summary>The string form: the strategy name, the device, or the explicit map as <c>{module: device, ...}</c>.</summary>
    public override string ToString() => Strategy switch
    {
        DeviceMapStrategy.SingleDevice => Device!,
        DeviceMapStrategy.Explicit => "{" + string.Join(", ", Assignments!.Select(a => $"'{a.Key}': '{a.Value}'")) + "}",
        _ => Strategy.ToString().ToLowerInvariant(),
    };
}
