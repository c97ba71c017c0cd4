using static TorchSharp.torch;

namespace Rinna.Net.Kernels;

/// <summary>
/// Output shapes for the code every token runs. TorchSharp's <c>Tensor.shape</c> fills a new array through a native
/// callback, about a hundred times slower than <c>size(dim)</c>; a decode step asked for shapes some thousand times, so the per-token path reads dimensions with <c>size(dim)</c> and builds arrays here.
/// </summary>
internal static class TensorShapes
{
    /// <summary><paramref name="x"/>'s shape with its last dimension replaced by <paramref name="last"/>.</summary>
    public static long[] WithLastDimension(Tensor x, long last)
    {
        var shape = new long[x.dim()];
        for (int i = 0; i < shape.Length - 1; i++) shape[i] = x.size(i);
        shape[^1] = last;
        return shape;
    }

    /// <summary><paramref name="x"/>'s shape followed by one more dimension of <paramref name="size"/>.</summary>
    public static long[] Append(Tensor x, long size)
    {
        var shape = new long[x.dim() + 1];
        for (int i = 0; i < shape.Length - 1; i++) shape[i] = x.size(i);
        shape[^1] = size;
        return shape;
    }
}
