using TorchSharp;

namespace Rinna.Net.Model.DeviceMap;

/// <summary>A device the planner may place modules on.</summary>
/// <param name="Name"><c>cpu</c> or <c>cuda:N</c>.</param>
/// <param name="MemoryBytes">How many bytes of weights it can hold, or <c>null</c> when unknown (treated as unlimited
/// unless <see cref="MaxMemory"/> sets a budget).</param>
public sealed record ComputeDevice(string Name, long? MemoryBytes)
{
    /// <summary>
    /// The devices TorchSharp can use here, GPUs first (<c>cuda:0</c>, <c>cuda:1</c>, ...) and the cpu last.
    /// </summary>
    /// <remarks>
    /// TorchSharp exposes no GPU memory query, so GPU capacities are reported as unknown; pass a <see cref="MaxMemory"/>
    /// to bound them. The cpu is reported as unknown too: weights may be memory-mapped, and the cpu is where modules go
    /// when nothing else has room.
    /// </remarks>
    public static IReadOnlyList<ComputeDevice> DetectAvailable()
    {
        var gpus = torch.cuda.is_available() ? torch.cuda.device_count() : 0;
        return [.. Enumerable.Range(0, gpus).Select(i => new ComputeDevice($"cuda:{i}", null)), new ComputeDevice(DeviceNames.Cpu, null)];
    }
}

/// <summary>A module the planner places as a whole, with the bytes its weights take after dtype conversion and quantization.</summary>
/// <param name="Name">The module's dotted name, e.g. <c>gpt_neox.layers.0</c>.</param>
/// <param name="Bytes">Its weight bytes on the device.</param>
public readonly record struct ModuleFootprint(string Name, long Bytes);
