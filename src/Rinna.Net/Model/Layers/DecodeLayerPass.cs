using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Layers;

/// <summary>
/// A GPT-NeoX layer's decode step as one managed pass (<see cref="DecodeLayer"/>) where the layer qualifies: each of its
/// four linear layers float16 (<see cref="Float16Linear"/>, a weight the managed GEMV takes), LLM.int8()
/// (<see cref="Int8Linear"/>, where <see cref="Int8Gemv"/> is the decode kernel) or 4-bit (<see cref="Bnb4BitLinear"/>
/// computing in bfloat16 or float16, with rows an integer variant of <see cref="Bnb4BitGemv"/> takes), its LayerNorms and
/// activations in bfloat16 (a float16, int8 or 4-bit model on the CPU), the exact GELU, and a CPU where those kernels
/// run. A step qualifies when it is one sequence's one new token with a cache and no padding. Everything else, and any
/// step the pass declines, takes the layer's own operations.
/// </summary>
internal sealed class DecodeLayerPass
{
    private readonly LayerNorm inputNorm, postAttentionNorm;
    private readonly LinearLayer[] products;
    private readonly DecodeLayer.Shape shape;

    /// <summary>The parameters checked and their addresses, published as one object: generations on other caches may step this layer from other threads.</summary>
    private Plan? plan;

    private long steps;

    /// <param name="Parameters">The parameters <paramref name="Weights"/> points into, to notice one replaced (a model moved to another device).</param>
    /// <param name="Usable">Whether the pass may run on them.</param>
    /// <param name="Weights">Their addresses, where usable.</param>
    /// <param name="Pinned">Arrays <paramref name="Weights"/> points into besides the parameters (4-bit code tables), kept alive with the plan.</param>
    private sealed record Plan(Tensor?[] Parameters, bool Usable, DecodeLayer.Weights Weights, Array[] Pinned);

    private DecodeLayerPass(GptNeoXConfig config, LayerNorm inputNorm, LayerNorm postAttentionNorm, LinearLayer[] products)
    {
        (this.inputNorm, this.postAttentionNorm, this.products) = (inputNorm, postAttentionNorm, products);
        shape = new DecodeLayer.Shape(config.HiddenSize, config.IntermediateSize, config.NumAttentionHeads, config.HeadSize, config.RotaryNdims,
            config.LayerNormEps, config.UseParallelResidual);
    }

    /// <summary>The pass for a layer of these parts, or <c>null</c> where their types rule it out.</summary>
    public static DecodeLayerPass? For(GptNeoXConfig config, LayerNorm inputNorm, LayerNorm postAttentionNorm,
        LinearLayer queryKeyValue, LinearLayer dense, LinearLayer up, LinearLayer down, Activation activation)
    {
        LinearLayer[] products = [queryKeyValue, dense, up, down];
        return activation == Activation.Gelu && products.All(p => p is Float16Linear or Int8Linear or Bnb4BitLinear)
            ? new DecodeLayerPass(config, inputNorm, postAttentionNorm, products)
            : null;
    }

    /// <summary>
    /// The float16 GEMV's width: <see cref="Float16Gemv.DefaultVariant"/> where single-row float16 products take the
    /// managed GEMV, else none (no pass for a layer with a float16 product); tests set each accelerated one.
    /// </summary>
    internal Float16GemvVariant? Variant { get; set; } = Float16Gemv.IsSupported ? Float16Gemv.DefaultVariant : null;

    /// <summary>
    /// The int8 GEMV's width: <see cref="Int8Gemv.DefaultVariant"/> where int8 decode steps take it rather than
    /// <c>_int_mm</c>, else none (no pass for a layer with an int8 product); tests set each accelerated one.
    /// </summary>
    internal Int8GemvVariant? Int8Variant { get; set; } = Int8Gemv.IsPreferredForDecode ? Int8Gemv.DefaultVariant : null;

    /// <summary>
    /// The integer variant every 4-bit product runs with, or null for each weight's own
    /// (<see cref="Bnb4BitGemv.Int16VariantFor(int, float[])"/>, what its separate operation runs); tests set each one.
    /// </summary>
    internal Bnb4BitGemvVariant? Bnb4Variant { get; set; }

    /// <summary>Steps the pass has run, so that tests can tell it ran.</summary>
    internal long Steps => Interlocked.Read(ref steps);

    /// <summary>
    /// The layer's output for <paramref name="hidden"/> <c>[1, 1, hidden]</c> at position <paramref name="past"/>, writing
    /// the new key and value into layer <paramref name="layer"/> of <paramref name="cache"/>; false where the pass does not
    /// apply (see <see cref="DecodeLayer.TryStep"/>).
    /// </summary>
    public bool TryForward(Tensor hidden, Tensor cos, Tensor sin, KeyValueCache cache, int layer, int past, out Tensor output)
    {
        output = null!;
        if (hidden.dtype != ScalarType.BFloat16 || hidden.numel() != shape.Hidden || Current() is not { Usable: true } current) return false;
        var (keys, values) = cache.Storage(layer, 1, shape.Heads, shape.HeadSize, ScalarType.Float32, ScalarType.BFloat16, hidden.device, past, past + 1);
        var weights = current.Weights;
        if (Bnb4Variant is { } forced)
        {
            weights.QueryKeyValue.Bnb4.Variant = weights.Dense.Bnb4.Variant = forced;
            weights.Up.Bnb4.Variant = weights.Down.Bnb4.Variant = forced;
        }
        if (!DecodeLayer.TryStep(hidden, weights, shape, cos, sin, keys, values, past, Variant, Float16Gemv.Widening, Int8Variant, out output))
            return false;
        Interlocked.Increment(ref steps);
        return true;
    }

    /// <summary>The plan for the current parameters: checked and their addresses taken once (again if one was replaced).</summary>
    private unsafe Plan Current()
    {
        // Every step: compared object by object, without allocating.
        var current = Volatile.Read(ref plan);
        if (current is not null && StillPlanned(current.Parameters)) return current;
        var parameters = new Tensor?[] { inputNorm.Weight, inputNorm.Bias, postAttentionNorm.Weight, postAttentionNorm.Bias }
            .Concat(products.SelectMany(Parameters)).ToArray();
        bool usable = Usable();
        var pinned = new List<Array>();
        var weights = usable
            ? new DecodeLayer.Weights
            {
                InputNormWeight = Address(inputNorm.Weight), InputNormBias = Address(inputNorm.Bias),
                PostAttentionNormWeight = Address(postAttentionNorm.Weight), PostAttentionNormBias = Address(postAttentionNorm.Bias),
                QueryKeyValue = Product(products[0], pinned), Dense = Product(products[1], pinned), Up = Product(products[2], pinned),
                Down = Product(products[3], pinned),
            }
            : default;
        current = new Plan(parameters, usable, weights, [.. pinned]);
        Volatile.Write(ref plan, current);
        return current;
    }

    private static IEnumerable<Tensor?> Parameters(LinearLayer linear) => linear switch
    {
        Float16Linear f => [f.Weight, f.Bias],
        Int8Linear q => [q.Weight, q.WeightScale, q.Bias],
        Bnb4BitLinear b => [b.Weight, b.Absmax, b.NestedAbsmax, b.Bias],
        _ => [],
    };

    private bool Usable()
    {
        static bool Row(Tensor? t, long length, ScalarType dtype) =>
            t is not null && t.device_type == DeviceType.CPU && t.dtype == dtype && t.is_contiguous() && t.dim() == 1 && t.size(0) == length;
        static bool Matrix(Tensor t, long rows, long columns, ScalarType dtype) =>
            t.device_type == DeviceType.CPU && t.dtype == dtype && t.is_contiguous() && t.dim() == 2 && t.size(0) == rows && t.size(1) == columns;
        static bool Takes(LinearLayer linear, long rows, long columns) => linear switch
        {
            Float16Linear f => Matrix(f.Weight, rows, columns, ScalarType.Float16) && f.TakesManagedGemv
                && (f.Bias is null || Row(f.Bias, rows, ScalarType.BFloat16) || Row(f.Bias, rows, ScalarType.Float32)),
            Int8Linear q => Matrix(q.Weight, rows, columns, ScalarType.Int8) && columns <= Int8Gemv.MaxColumns
                && Row(q.WeightScale, rows, ScalarType.Float32) && (q.Bias is null || Row(q.Bias, rows, ScalarType.Float32)),
            // Computing in bfloat16 or float16, where the separate operation takes the same integer variant.
            Bnb4BitLinear b => b.OutFeatures == rows && b.InFeatures == columns && b.ComputeDType is null or ScalarType.BFloat16 or ScalarType.Float16
                && Bnb4BitGemv.Int16VariantFor((int)columns, b.Code) is not null
                && Row(b.Weight, rows * columns / 2, ScalarType.Byte) && (b.Bias is null || Row(b.Bias, rows, ScalarType.Float32))
                && (b.NestedAbsmax is null
                    ? Row(b.Absmax, rows * columns / 64, ScalarType.Float32)
                    : Row(b.Absmax, rows * columns / 64, ScalarType.Byte) && Row(b.NestedAbsmax, b.NestedAbsmax.numel(), ScalarType.Float32)),
            _ => false,
        };
        long h = shape.Hidden, i = shape.Intermediate;
        return Row(inputNorm.Weight, h, ScalarType.BFloat16) && Row(inputNorm.Bias, h, ScalarType.BFloat16)
            && Row(postAttentionNorm.Weight, h, ScalarType.BFloat16) && Row(postAttentionNorm.Bias, h, ScalarType.BFloat16)
            && Takes(products[0], 3 * h, h) && Takes(products[1], h, h) && Takes(products[2], i, h) && Takes(products[3], h, i);
    }

    private static unsafe DecodeLayer.Product Product(LinearLayer linear, List<Array> pinned) => linear switch
    {
        Bnb4BitLinear b => new DecodeLayer.Product
        {
            IsBnb4 = true, Bias = Address(b.Bias),
            Bnb4 = new Bnb4BitGemv.DecodeWeight
            {
                Codes = (byte*)Address(b.Weight), Absmax = Address(b.Absmax), Nested = (float*)Address(b.NestedAbsmax), Offset = b.Offset,
                NestedCode = b.NestedAbsmax is null ? null : PinnedCopy(Bnb4BitQuantization.DynamicMap, pinned),
                Table16 = PinnedCopy(Bnb4BitGemv.Int16TableOf(b.Code), pinned),
                Variant = Bnb4BitGemv.Int16VariantFor((int)b.InFeatures, b.Code)!.Value,
            },
        },
        Float16Linear f => new DecodeLayer.Product
        {
            Weight = Address(f.Weight), Bias = Address(f.Bias), BiasIsBFloat16 = f.Bias?.dtype == ScalarType.BFloat16,
        },
        Int8Linear q => new DecodeLayer.Product
        {
            IsInt8 = true, Weight = Address(q.Weight), WeightScale = (float*)Address(q.WeightScale), Bias = Address(q.Bias), Threshold = q.Threshold,
        },
        _ => throw new InvalidOperationException($"{linear.GetType().Name} has no decode pass."),
    };

    /// <summary>Whether the parameters are the objects <paramref name="p"/> holds (Tensor's Equals compares values, in libtorch).</summary>
    private bool StillPlanned(Tensor?[] p)
    {
        if (!ReferenceEquals(p[0], inputNorm.Weight) || !ReferenceEquals(p[1], inputNorm.Bias)
            || !ReferenceEquals(p[2], postAttentionNorm.Weight) || !ReferenceEquals(p[3], postAttentionNorm.Bias))
            return false;
        int at = 4;
        foreach (var linear in products)
        {
            switch (linear)
            {
                case Float16Linear f:
                    if (!ReferenceEquals(p[at++], f.Weight) || !ReferenceEquals(p[at++], f.Bias)) return false;
                    break;
                case Int8Linear q:
                    if (!ReferenceEquals(p[at++], q.Weight) || !ReferenceEquals(p[at++], q.WeightScale) || !ReferenceEquals(p[at++], q.Bias)) return false;
                    break;
                case Bnb4BitLinear b:
                    if (!ReferenceEquals(p[at++], b.Weight) || !ReferenceEquals(p[at++], b.Absmax) || !ReferenceEquals(p[at++], b.NestedAbsmax)
                        || !ReferenceEquals(p[at++], b.Bias))
                        return false;
                    break;
            }
        }
        return true;
    }

    /// <summary>Where a copy of <paramref name="array"/> that the GC never moves lives; the copy is kept with the plan.</summary>
    private static unsafe T* PinnedCopy<T>(T[] array, List<Array> pinned) where T : unmanaged
    {
        var copy = GC.AllocateArray<T>(array.Length, pinned: true);
        array.CopyTo(copy, 0);
        pinned.Add(copy);
        return (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(copy));
    }

    /// <summary>Where a parameter's elements live; libtorch never moves a tensor's storage, and the model holds the parameter.</summary>
    private static unsafe ushort* Address(Tensor? t)
    {
        if (t is null) return null;
        fixed (byte* bytes = t.bytes) return (ushort*)bytes;
    }
}
