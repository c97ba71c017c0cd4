using Rinna.Net.Model.Layers;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Adapters;

/// <summary>Which run-time adapters a model applies: one for every row, or one per row of a batch.</summary>
internal sealed class AdapterState
{
    public Dictionary<string, LoraAdapter> Loaded { get; } = new(StringComparer.Ordinal);

    public List<LoraLinear> Layers { get; } = [];

    public string? Active { get; set; }

    public string?[]? PerRow { get; set; }

    public bool AnyActive => Active is not null || PerRow is { } rows && rows.Any(r => r is not null);
}

/// <summary>
/// PEFT's unmerged LoRA layer: <c>W x + s · B (A x)</c> around any <see cref="LinearLayer"/> (dense, float16,
/// int8), with the update of whichever loaded adapter is active (or, per row of a batch, each row's adapter). With no
/// adapter active it is the wrapped layer, fused activation and residual kernels included.
/// </summary>
/// <remarks>
/// The wrapped layer's parameters and buffers are registered under their own names, so the model's state dict,
/// device map and saving are those of the base model. Updates are computed in float32 and added in the layer's output dtype.
/// </remarks>
internal sealed class LoraLinear : LinearLayer
{
    private readonly LinearLayer inner;
    private readonly AdapterState state;
    private readonly Dictionary<string, LoraUpdate> updates = new(StringComparer.Ordinal);

    public LoraLinear(string module, LinearLayer inner, AdapterState state) : base("lora_linear")
    {
        Module = module;
        this.inner = inner;
        this.state = state;
        foreach (var (name, parameter) in inner.named_parameters(recurse: false)) register_parameter(name, parameter);
        foreach (var (name, buffer) in inner.named_buffers(recurse: false)) register_buffer(name, buffer);
    }

    /// <summary>The module's full name (<c>gpt_neox.layers.0.attention.query_key_value</c>).</summary>
    public string Module { get; }

    public LinearLayer Inner => inner;

    public IReadOnlyCollection<string> AdapterNames => updates.Keys;

    /// <summary>Adds <paramref name="adapter"/>'s update, copied to the device of the wrapped layer.</summary>
    public void Attach(string adapter, LoraUpdate update)
    {
        var device = inner.parameters().Select(p => p.device).Concat(inner.buffers().Select(b => b.device)).FirstOrDefault() ?? CPU;
        Detach(adapter);
        // Copies, so the layer owns what it disposes whether or not the device changes.
        updates[adapter] = new LoraUpdate(update.A.to(device).clone().DetachFromDisposeScope(), update.B.to(device).clone().DetachFromDisposeScope(), update.Scaling);
    }

    public void Detach(string adapter)
    {
        if (!updates.Remove(adapter, out var old)) return;
        old.A.Dispose();
        old.B.Dispose();
    }

    public override Tensor forward(Tensor x) => Forward(x, Activation.Identity);

    internal override Tensor Forward(Tensor x, Activation activation, Tensor? residual = null)
    {
        if (!state.AnyActive || updates.Count == 0) return inner.Forward(x, activation, residual);
        var output = inner.call(x);
        if (state.PerRow is { } perRow) output = AddPerRow(x, output, perRow);
        else if (updates.TryGetValue(state.Active!, out var update)) output = output.add_(Delta(x, update).to(output.dtype));
        output = activation.Apply(output);
        return residual is null ? output : output.add_(residual);
    }

    private Tensor AddPerRow(Tensor x, Tensor output, string?[] perRow)
    {
        long rows = x.size(0);
        if (rows % perRow.Length != 0)
            throw new InvalidOperationException($"{perRow.Length} per-row adapters were set, but the model got {rows} rows.");
        // Generation repeats each prompt's row for beams and returned sequences, in consecutive rows.
        long repeat = rows / perRow.Length;
        foreach (var group in Enumerable.Range(0, (int)rows).GroupBy(r => perRow[r / repeat]))
        {
            if (group.Key is null || !updates.TryGetValue(group.Key, out var update)) continue;
            using var index = tensor(group.Select(r => (long)r).ToArray(), ScalarType.Int64, x.device);
            output = output.index_add_(0, index, Delta(x.index_select(0, index), update).to(output.dtype), 1);
        }
        return output;
    }

    private static Tensor Delta(Tensor x, LoraUpdate update) =>
        x.to(ScalarType.Float32).matmul(update.A.t()).matmul(update.B.t()).mul_(update.Scaling);
}
