using System.Runtime.CompilerServices;
using Rinna.Net.Model.Layers;

namespace Rinna.Net.Model.Adapters;

/// <summary>
/// Run-time LoRA adapters on one base model (PEFT's <c>load_adapter</c>, <c>set_adapter</c>, <c>disable_adapter</c>,
/// <c>delete_adapter</c>): load several, then pick per request which one applies, or one per row of a batch.
/// </summary>
/// <remarks>
/// Needs a model loaded with <see cref="ModelLoadOptions.EnableAdapters"/> (or an unmerged
/// <see cref="ModelLoadOptions.Adapter"/>), whose linear layers are then <c>W x + s·B(A x)</c> layers: an adapter costs
/// two thin products per layer while active and nothing while no adapter is. The active adapter belongs to the
/// model: as generation is one call at a time per model, set it before each call. For zero run-time cost with a single
/// adapter, merge it at load instead (<see cref="ModelLoadOptions.Adapter"/>).
/// </remarks>
public static class AdapterExtensions
{
    private static readonly ConditionalWeakTable<GptNeoXForCausalLM, AdapterState> States = new();

    internal static void Register(GptNeoXForCausalLM model, AdapterState state) => States.AddOrUpdate(model, state);

    private static AdapterState StateOf(GptNeoXForCausalLM model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return States.TryGetValue(model, out var state) ? state
            : throw new InvalidOperationException("The model was loaded without run-time adapters; load it with ModelLoadOptions.EnableAdapters = true.");
    }

    /// <summary>Loads a PEFT LoRA adapter from <paramref name="directory"/> under <paramref name="name"/>; it is not made active.</summary>
    /// <param name="model">A model loaded with <see cref="ModelLoadOptions.EnableAdapters"/>.</param>
    /// <param name="name">The name to activate it by.</param>
    /// <param name="directory">The directory holding <c>adapter_config.json</c> and <c>adapter_model.safetensors</c> (or <c>.bin</c>).</param>
    /// <exception cref="AdapterConfigException">The adapter is not a supported LoRA adapter (<c>modules_to_save</c> adapters can only be merged at load).</exception>
    /// <exception cref="CheckpointException">The adapter's weights are missing or do not fit the model.</exception>
    /// <exception cref="ArgumentException"><paramref name="name"/> is already loaded, or the directory does not exist.</exception>
    /// <exception cref="InvalidOperationException">The model was loaded without run-time adapters.</exception>
    public static void LoadAdapter(this GptNeoXForCausalLM model, string name, string directory)
    {
        var state = StateOf(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (state.Loaded.ContainsKey(name)) throw new ArgumentException($"an adapter named '{name}' is already loaded.", nameof(name));
        if (!Directory.Exists(directory)) throw new ArgumentException($"adapter directory '{directory}' does not exist.", nameof(directory));
        var adapter = LoraAdapter.Load(directory, GptNeoXWeightLayout.For(model.Config));
        Attach(state, name, adapter);
    }

    /// <summary>
    /// Loads a PEFT LoRA adapter from a directory or a hub id (resolved, downloaded and cached like a model id) under
    /// <paramref name="name"/>; it is not made active. PEFT's <c>model.load_adapter(adapter_id, adapter_name)</c>.
    /// </summary>
    /// <param name="model">A model loaded with <see cref="ModelLoadOptions.EnableAdapters"/>.</param>
    /// <param name="name">The name to activate it by.</param>
    /// <param name="adapterIdOrPath">A directory holding <c>adapter_config.json</c> and the weights, or a hub id.</param>
    /// <param name="options">Endpoint, cache, token, offline mode and revision of the adapter repository; <c>null</c> uses the environment.</param>
    /// <param name="cancellationToken">Stops a download (it stays resumable).</param>
    /// <exception cref="AdapterConfigException">The adapter is not a supported LoRA adapter.</exception>
    /// <exception cref="CheckpointException">The adapter's weights are missing or do not fit the model.</exception>
    /// <exception cref="Hub.HubException">The hub id cannot be resolved or downloaded (or is not cached when offline).</exception>
    /// <exception cref="ArgumentException"><paramref name="name"/> is already loaded, or <paramref name="adapterIdOrPath"/> is neither a directory nor a valid hub id.</exception>
    /// <exception cref="InvalidOperationException">The model was loaded without run-time adapters.</exception>
    public static async Task LoadAdapterAsync(this GptNeoXForCausalLM model, string name, string adapterIdOrPath,
        Hub.HubOptions? options = null, CancellationToken cancellationToken = default)
    {
        var state = StateOf(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentException.ThrowIfNullOrWhiteSpace(adapterIdOrPath);
        if (state.Loaded.ContainsKey(name)) throw new ArgumentException($"an adapter named '{name}' is already loaded.", nameof(name));
        var directory = await (options ?? new Hub.HubOptions()).ResolveAsync(adapterIdOrPath, Hub.HubFileSet.Adapter, cancellationToken)
            .ConfigureAwait(false);
        model.LoadAdapter(name, directory);
    }

    internal static void Attach(AdapterState state, string name, LoraAdapter adapter)
    {
        try
        {
            if (adapter.SavedTensors.Count > 0)
                throw new AdapterConfigException(Path.Combine(adapter.Directory, "adapter_config.json"), "modules_to_save",
                    "adapters that replace whole modules can only be merged at load (ModelLoadOptions.Adapter), not switched at run time.");
            var layers = state.Layers.ToDictionary(l => l.Module, StringComparer.Ordinal);
            foreach (var module in adapter.Updates.Keys.Where(m => !layers.ContainsKey(m)))
                throw new AdapterConfigException(Path.Combine(adapter.Directory, "adapter_config.json"), "target_modules",
                    $"'{module}' cannot take a run-time adapter (the tied output head).");
            foreach (var (module, update) in adapter.Updates) layers[module].Attach(name, update);
            state.Loaded[name] = adapter;
        }
        catch
        {
            foreach (var layer in state.Layers) layer.Detach(name);
            adapter.Dispose();
            throw;
        }
    }

    /// <summary>Makes <paramref name="name"/> the adapter every row uses (PEFT's <c>set_adapter</c>); <c>null</c> runs the base model.</summary>
    /// <exception cref="ArgumentException">No adapter of that name is loaded.</exception>
    /// <exception cref="InvalidOperationException">The model was loaded without run-time adapters.</exception>
    public static void SetAdapter(this GptNeoXForCausalLM model, string? name)
    {
        var state = StateOf(model);
        if (name is not null && !state.Loaded.ContainsKey(name)) throw new ArgumentException($"no adapter named '{name}' is loaded.", nameof(name));
        state.PerRow = null;
        state.Active = name;
    }

    /// <summary>
    /// One adapter per prompt row of the next calls (<c>null</c> for the base model), for a batch that mixes requests of
    /// different adapters. Rows that generation repeats (beams, returned sequences) follow their prompt's entry.
    /// </summary>
    /// <exception cref="ArgumentException">An adapter is not loaded.</exception>
    /// <exception cref="InvalidOperationException">The model was loaded without run-time adapters.</exception>
    public static void SetAdapters(this GptNeoXForCausalLM model, IReadOnlyList<string?> perRow)
    {
        var state = StateOf(model);
        ArgumentNullException.ThrowIfNull(perRow);
        if (perRow.Count == 0) throw new ArgumentException("give one entry per row.", nameof(perRow));
        foreach (var name in perRow)
            if (name is not null && !state.Loaded.ContainsKey(name)) throw new ArgumentException($"no adapter named '{name}' is loaded.", nameof(perRow));
        state.Active = null;
        state.PerRow = perRow.ToArray();
    }

    /// <summary>The adapter all rows use, or <c>null</c> (base model, or per-row adapters).</summary>
    public static string? ActiveAdapter(this GptNeoXForCausalLM model) => StateOf(model).Active;

    /// <summary>The names of the loaded adapters.</summary>
    public static IReadOnlyCollection<string> LoadedAdapters(this GptNeoXForCausalLM model) => StateOf(model).Loaded.Keys.ToArray();

    /// <summary>Unloads an adapter (PEFT's <c>delete_adapter</c>); if it was active, the base model runs again.</summary>
    /// <exception cref="ArgumentException">No adapter of that name is loaded.</exception>
    public static void DeleteAdapter(this GptNeoXForCausalLM model, string name)
    {
        var state = StateOf(model);
        if (!state.Loaded.Remove(name, out var adapter)) throw new ArgumentException($"no adapter named '{name}' is loaded.", nameof(name));
        foreach (var layer in state.Layers) layer.Detach(name);
        adapter.Dispose();
        if (state.Active == name) state.Active = null;
        if (state.PerRow is { } rows && rows.Contains(name)) state.PerRow = rows.Select(r => r == name ? null : r).ToArray();
    }

    /// <summary>Wraps a linear layer being built by the loader so adapters can be attached to it later.</summary>
    internal static LinearLayer Wrap(AdapterState state, string module, LinearLayer layer)
    {
        var wrapped = new LoraLinear(module, layer, state);
        state.Layers.Add(wrapped);
        return wrapped;
    }
}
