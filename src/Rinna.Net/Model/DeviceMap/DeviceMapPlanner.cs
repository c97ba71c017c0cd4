using System.Collections.ObjectModel;
using System.Text.RegularExpressions;

namespace Rinna.Net.Model.DeviceMap;

/// <summary>
/// Turns a <see cref="DeviceMapSpec"/> into a placement of whole modules on devices, like accelerate's
/// <c>infer_auto_device_map</c>: GPUs are filled in order within their budgets and what does not fit stays on the cpu,
/// where it is computed (activations move between devices, weights do not).
/// </summary>
public static partial class DeviceMapPlanner
{
    /// <summary>
    /// The modules of a GPT-NeoX causal LM that are placed as wholes, in execution order:
    /// <c>gpt_neox.embed_in</c>, <c>gpt_neox.layers.0</c> … <c>gpt_neox.layers.{n-1}</c>, <c>gpt_neox.final_layer_norm</c>, <c>embed_out</c>.
    /// </summary>
    /// <param name="numHiddenLayers">The config's <c>num_hidden_layers</c>.</param>
    /// <exception cref="ArgumentOutOfRangeException">The layer count is less than 1.</exception>
    public static IReadOnlyList<string> GptNeoXModuleNames(int numHiddenLayers)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(numHiddenLayers, 1);
        return
        [
            "gpt_neox.embed_in",
            .. Enumerable.Range(0, numHiddenLayers).Select(i => $"gpt_neox.layers.{i}"),
            "gpt_neox.final_layer_norm",
            "embed_out",
        ];
    }

    /// <summary>Places every module on a device.</summary>
    /// <param name="spec">What was asked (<c>"auto"</c>, <c>"sequential"</c>, a device, an explicit map, ...).</param>
    /// <param name="modules">Every module with its weight bytes, in execution order (see <see cref="GptNeoXModuleNames"/>).</param>
    /// <param name="devices">The devices that exist, GPUs in order (see <see cref="ComputeDevice.DetectAvailable"/>); the cpu is
    /// added when missing.</param>
    /// <param name="maxMemory">Optional per-device budgets; a device without one gets its <see cref="ComputeDevice.MemoryBytes"/>.</param>
    /// <returns>Module name → device (<c>cpu</c> or <c>cuda:N</c>) for every module, enumerated in module order: the shape of
    /// transformers' <c>hf_device_map</c>.</returns>
    /// <exception cref="ArgumentException">A module list that is empty or repeats a name; a device or budget naming a device
    /// that is not available; an explicit map naming an unknown module, a layer index out of range, part of a module, or
    /// leaving a module unplaced; or budgets too small to hold the model even on the cpu. Messages quote the value at fault.</exception>
    public static IReadOnlyDictionary<string, string> Plan(
        DeviceMapSpec spec, IReadOnlyList<ModuleFootprint> modules, IReadOnlyList<ComputeDevice> devices, MaxMemory? maxMemory = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(modules);
        ArgumentNullException.ThrowIfNull(devices);
        ValidateModules(modules);
        var available = AvailableDevices(devices);
        var budgets = Budgets(available, maxMemory);

        var placement = spec.Strategy switch
        {
            DeviceMapStrategy.SingleDevice => modules.Select(m => (m.Name, RequireAvailable(spec.Device!, available, nameof(spec)))),
            DeviceMapStrategy.Explicit => AssignExplicitly(spec.Assignments!, modules, available),
            DeviceMapStrategy.Sequential => Fill(modules, available, budgets, balanced: false),
            _ => Fill(modules, available, budgets, balanced: true),
        };
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (module, device) in placement) result.Add(module, device);
        return new ReadOnlyDictionary<string, string>(result);
    }

    private static void ValidateModules(IReadOnlyList<ModuleFootprint> modules)
    {
        if (modules.Count == 0) throw new ArgumentException("The module list is empty.", nameof(modules));
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var module in modules)
        {
            if (string.IsNullOrWhiteSpace(module.Name)) throw new ArgumentException("A module name is empty.", nameof(modules));
            if (module.Bytes < 0) throw new ArgumentException($"Module '{module.Name}' has a negative size {module.Bytes}.", nameof(modules));
            if (!seen.Add(module.Name)) throw new ArgumentException($"Module '{module.Name}' is listed twice.", nameof(modules));
        }
    }

    private static List<ComputeDevice> AvailableDevices(IReadOnlyList<ComputeDevice> devices)
    {
        var available = new List<ComputeDevice>();
        foreach (var device in devices)
        {
            var name = DeviceNames.Normalize(device.Name, nameof(devices));
            if (available.Any(d => d.Name == name)) throw new ArgumentException($"Device '{device.Name}' is listed twice.", nameof(devices));
            available.Add(device with { Name = name });
        }
        // The cpu is the last resort whatever the caller listed: modules that fit on no GPU are computed there.
        var cpu = available.Find(d => d.Name == DeviceNames.Cpu) ?? new ComputeDevice(DeviceNames.Cpu, null);
        available.Remove(cpu);
        available.Add(cpu);
        return available;
    }

    private static Dictionary<string, long> Budgets(List<ComputeDevice> available, MaxMemory? maxMemory)
    {
        var budgets = available.ToDictionary(d => d.Name, d => d.MemoryBytes ?? long.MaxValue, StringComparer.Ordinal);
        foreach (var (device, bytes) in maxMemory ?? [])
        {
            if (!budgets.ContainsKey(device))
                throw new ArgumentException($"max_memory names device '{device}', which is not available (available: {DeviceList(available)}).", nameof(maxMemory));
            budgets[device] = bytes;
        }
        return budgets;
    }

    private static string RequireAvailable(string device, List<ComputeDevice> available, string paramName)
        => available.Any(d => d.Name == device)
            ? device
            : throw new ArgumentException($"Device '{device}' is not available (available: {DeviceList(available)}).", paramName);

    private static string DeviceList(List<ComputeDevice> available) => string.Join(", ", available.Select(d => d.Name));

    /// <summary>
    /// Fills GPUs in order and never goes back to an earlier one, so consecutive layers share a device and activations
    /// cross devices as rarely as possible. Balanced caps every GPU but the last at an even share of the model plus its
    /// largest module (so rounding does not push one layer over), as accelerate's <c>get_balanced_memory</c> does.
    /// </summary>
    private static IEnumerable<(string Module, string Device)> Fill(
        IReadOnlyList<ModuleFootprint> modules, List<ComputeDevice> available, Dictionary<string, long> budgets, bool balanced)
    {
        var gpus = available.Where(d => DeviceNames.IsCuda(d.Name)).Select(d => d.Name).ToList();
        var limits = gpus.Select(g => budgets[g]).ToList();
        if (balanced && gpus.Count > 1)
        {
            var total = modules.Sum(m => m.Bytes);
            var share = (total + gpus.Count - 1) / gpus.Count + modules.Max(m => m.Bytes);
            for (var i = 0; i < gpus.Count - 1; i++) limits[i] = Math.Min(limits[i], share);
        }

        var used = new long[gpus.Count];
        var gpu = 0;
        long cpuUsed = 0;
        var placement = new List<(string, string)>(modules.Count);
        foreach (var module in modules)
        {
            while (gpu < gpus.Count && used[gpu] + module.Bytes > limits[gpu]) gpu++;
            if (gpu < gpus.Count)
            {
                used[gpu] += module.Bytes;
                placement.Add((module.Name, gpus[gpu]));
                continue;
            }
            cpuUsed += module.Bytes;
            if (cpuUsed > budgets[DeviceNames.Cpu])
                throw new ArgumentException(
                    $"The model does not fit in max_memory: module '{module.Name}' ({module.Bytes} bytes) fits on no GPU and the cpu budget " +
                    $"of {budgets[DeviceNames.Cpu]} bytes is exhausted ({modules.Sum(m => m.Bytes)} bytes in all). Offloading to disk is not supported.",
                    "maxMemory");
            placement.Add((module.Name, DeviceNames.Cpu));
        }
        return placement;
    }

    private static IEnumerable<(string Module, string Device)> AssignExplicitly(
        IReadOnlyDictionary<string, string> assignments, IReadOnlyList<ModuleFootprint> modules, List<ComputeDevice> available)
    {
        foreach (var (key, device) in assignments)
        {
            if (!modules.Any(m => CoversModule(key, m.Name))) throw UnknownKey(key, modules);
            RequireAvailable(device, available, "spec");
        }
        var placement = new List<(string, string)>(modules.Count);
        var unplaced = new List<string>();
        foreach (var module in modules)
        {
            var key = assignments.Keys.Where(k => CoversModule(k, module.Name)).MaxBy(k => k.Length);
            if (key is null) unplaced.Add(module.Name);
            else placement.Add((module.Name, assignments[key]));
        }
        if (unplaced.Count > 0)
            throw new ArgumentException($"The device_map places no device for module(s) {string.Join(", ", unplaced.Select(m => $"'{m}'"))}; " +
                "map each of them, a prefix of their names, or \"\" for the rest of the model.", "spec");
        return placement;
    }

    /// <summary>Whether a map key is the module itself or a dotted prefix of its name (<c>""</c> covers everything).</summary>
    private static bool CoversModule(string key, string module)
        => key.Length == 0 || module == key || module.StartsWith(key + ".", StringComparison.Ordinal);

    private static ArgumentException UnknownKey(string key, IReadOnlyList<ModuleFootprint> modules)
    {
        var split = modules.FirstOrDefault(m => key.StartsWith(m.Name + ".", StringComparison.Ordinal));
        if (split.Name is not null)
            return new ArgumentException($"The device_map key '{key}' names part of module '{split.Name}', which is placed as a whole; map '{split.Name}' instead.", "spec");

        var layer = LayerKey().Match(key);
        if (layer.Success)
        {
            var stem = layer.Groups["stem"].Value + ".";
            var count = modules.Count(m => m.Name.StartsWith(stem, StringComparison.Ordinal));
            if (count > 0)
                return new ArgumentException($"The device_map key '{key}' names layer {layer.Groups["index"].Value}, " +
                    $"but the model has {count} layers ({stem}0 to {stem}{count - 1}).", "spec");
        }
        var known = modules.Count <= 6
            ? string.Join(", ", modules.Select(m => m.Name))
            : $"{modules[0].Name}, {modules[1].Name}, …, {modules[^1].Name}";
        return new ArgumentException($"The device_map names unknown module '{key}' (modules: {known}).", "spec");
    }

    [GeneratedRegex(@"^(?<stem>.+\.layers)\.(?<index>\d+)(\..*)?$", RegexOptions.CultureInvariant)]
    private static partial Regex LayerKey();
}
