using System.Runtime.InteropServices;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Checkpoint;

/// <summary>
/// Allocates the CPU tensor a checkpoint tensor is read into, refusing one larger than the memory available and turning
/// libtorch's allocation failure (an <see cref="ExternalException"/>) into a <see cref="CheckpointException"/> that names
/// the tensor and its size.
/// </summary>
internal static class TensorAllocation
{
    /// <exception cref="CheckpointException">The tensor does not fit in the memory available, or libtorch cannot allocate it.</exception>
    public static Tensor Empty(long[] shape, ScalarType dtype, string file, string name) =>
        Guard(shape, dtype, file, name, () => empty(shape, dtype));

    /// <summary>Runs an allocation of a tensor of this shape and dtype under the same checks.</summary>
    /// <exception cref="CheckpointException">The tensor does not fit in the memory available, or libtorch cannot allocate it.</exception>
    public static Tensor Guard(long[] shape, ScalarType dtype, string file, string name, Func<Tensor> allocate)
    {
        long bytes = Bytes(shape, dtype);
        long available = MemoryInfo.AvailableBytes;
        if (bytes > available)
            throw new CheckpointException(file, $"tensor '{Cut(name)}' [{string.Join(", ", shape)}] of {dtype} needs {bytes} bytes, more than the {available} bytes of memory available.");
        try
        {
            return allocate();
        }
        catch (ExternalException ex)
        {
            throw new CheckpointException(file,
                $"tensor '{Cut(name)}' [{string.Join(", ", shape)}] of {dtype} ({bytes} bytes) cannot be allocated: {Cut(ex.Message.Split('\n')[0])}", ex);
        }
    }

    /// <summary>The bytes a contiguous tensor of this shape and dtype takes (saturating at <see cref="long.MaxValue"/>).</summary>
    public static long Bytes(long[] shape, ScalarType dtype)
    {
        long bytes = dtype switch
        {
            ScalarType.Float64 or ScalarType.Int64 => 8,
            ScalarType.Float32 or ScalarType.Int32 => 4,
            ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
            _ => 1,
        };
        foreach (var dim in shape)
            bytes = dim == 0 ? 0 : bytes > long.MaxValue / dim ? long.MaxValue : bytes * dim;
        return bytes;
    }

    private static string Cut(string text) => text.Length <= 200 ? text : text[..200] + "…";
}
