using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Layers;

/// <summary>
/// A GPT-NeoX layer's decode step as one managed pass (<see cref="DecodeLayer"/>) where the layer qualifies: its four
/// linear layers in float16 (<see cref="Float16Linear"/>, weights the managed GEMV takes), its LayerNorms and activations
/// in bfloat16 (a float16 model on the CPU), the exact GELU, and a CPU where <see cref="Float16Gemv"/> runs. A step
/// qualifies when it is one sequence's one new token with a cache and no padding. Everything else, and any step the
/// pass declines, takes the layer's own operations.
/// </summary>
internal sealed class Float16DecodeLayer
{
    private readonly LayerNorm inputNorm, postAttentionNorm;
    private readonly Float16Linear queryKeyValue, dense, up, down;
    private readonly DecodeLayer.Shape shape;

    /// <summary>The parameters <see cref="weights"/> points into, to notice one replaced (a model moved to another device).</summary>
    private Tensor?[]? planned;
    private DecodeLayer.Weights weights;
    private bool usable;

    private Float16DecodeLayer(GptNeoXConfig config, LayerNorm inputNorm, LayerNorm postAttentionNorm,
        Float16Linear queryKeyValue, Float16Linear dense, Float16Linear up, Float16Linear down)
    {
        (this.inputNorm, this.postAttentionNorm) = (inputNorm, postAttentionNorm);
        (this.queryKeyValue, this.dense, this.up, this.down) = (queryKeyValue, dense, up, down);
        shape = new DecodeLayer.Shape(config.HiddenSize, config.IntermediateSize, config.NumAttentionHeads, config.HeadSize, config.RotaryNdims,
            config.LayerNormEps, config.UseParallelResidual);
    }

    /// <summary>The pass for a layer of these parts, or <c>null</c> where their types rule it out.</summary>
    public static Float16DecodeLayer? For(GptNeoXConfig config, LayerNorm inputNorm, LayerNorm postAttentionNorm,
        LinearLayer queryKeyValue, LinearLayer dense, LinearLayer up, LinearLayer down, Activation activation) =>
        activation == Activation.Gelu
        && queryKeyValue is Float16Linear q && dense is Float16Linear d && up is Float16Linear u && down is Float16Linear o
            ? new Float16DecodeLayer(config, inputNorm, postAttentionNorm, q, d, u, o)
            : null;

    /// <summary>
    /// The layer's output for <paramref name="hidden"/> <c>[1, 1, hidden]</c> at position <paramref name="past"/>, writing
    /// the new key and value into layer <paramref name="layer"/> of <paramref name="cache"/>; false where the pass does not
    /// apply (see <see cref="DecodeLayer.TryStep"/>).
    /// </summary>
    public bool TryForward(Tensor hidden, Tensor cos, Tensor sin, KeyValueCache cache, int layer, int past, out Tensor output)
    {
        output = null!;
        if (Variant is not { } variant || hidden.dtype != ScalarType.BFloat16 || hidden.numel() != shape.Hidden || !Plan()) return false;
        var (keys, values) = cache.Storage(layer, 1, shape.Heads, shape.HeadSize, ScalarType.Float32, ScalarType.BFloat16, hidden.device, past, past + 1);
        if (!DecodeLayer.TryStep(hidden, weights, shape, cos, sin, keys, values, past, variant, Float16Gemv.Widening, out output)) return false;
        Steps++;
        return true;
    }

    /// <summary>
    /// The GEMV width the pass uses: <see cref="Float16Gemv.DefaultVariant"/> (none, so no pass, where the single-row
    /// float16 GEMV stays with libtorch); tests set each accelerated one.
    /// </summary>
    internal Float16GemvVariant? Variant { get; set; } = Float16Gemv.IsSupported ? Float16Gemv.DefaultVariant : null;

    /// <summary>Steps the pass has run, so that tests can tell it ran.</summary>
    internal long Steps { get; private set; }

    /// <summary>Checks the parameters and takes their addresses once (again if one was replaced); whether the pass may run.</summary>
    private unsafe bool Plan()
    {
        Tensor?[] parameters =
        [
            inputNorm.Weight, inputNorm.Bias, postAttentionNorm.Weight, postAttentionNorm.Bias,
            queryKeyValue.Weight, queryKeyValue.Bias, dense.Weight, dense.Bias, up.Weight, up.Bias, down.Weight, down.Bias,
        ];
        if (planned is not null && SameObjects(parameters, planned)) return usable;
        planned = parameters;
        usable = Usable();
        if (usable)
            weights = new DecodeLayer.Weights
            {
                InputNormWeight = Address(inputNorm.Weight), InputNormBias = Address(inputNorm.Bias),
                PostAttentionNormWeight = Address(postAttentionNorm.Weight), PostAttentionNormBias = Address(postAttentionNorm.Bias),
                QueryKeyValue = Address(queryKeyValue.Weight), QueryKeyValueBias = Address(queryKeyValue.Bias),
                Dense = Address(dense.Weight), DenseBias = Address(dense.Bias), Up = Address(up.Weight), UpBias = Address(up.Bias),
                Down = Address(down.Weight), DownBias = Address(down.Bias),
            };
        return usable;
    }

    private bool Usable()
    {
        bool BFloat16Row(Tensor? t, long length) =>
            t is not null && t.device_type == DeviceType.CPU && t.dtype == ScalarType.BFloat16 && t.is_contiguous() && t.dim() == 1 && t.size(0) == length;
        bool Product(Float16Linear linear, long rows, long columns) =>
            linear.Weight.size(0) == rows && linear.Weight.size(1) == columns && linear.TakesManagedGemv
            && (linear.Bias is null || BFloat16Row(linear.Bias, rows));
        long h = shape.Hidden, i = shape.Intermediate;
        return BFloat16Row(inputNorm.Weight, h) && BFloat16Row(inputNorm.Bias, h)
            && BFloat16Row(postAttentionNorm.Weight, h) && BFloat16Row(postAttentionNorm.Bias, h)
            && Product(queryKeyValue, 3 * h, h) && Product(dense, h, h) && Product(up, i, h) && Product(down, h, i);
    }

    /// <summary>Whether each entry is the same object (Tensor's Equals compares values, in libtorch).</summary>
    private static bool SameObjects(Tensor?[] a, Tensor?[] b)
    {
        for (int i = 0; i < a.Length; i++)
            if (!ReferenceEquals(a[i], b[i])) return false;
        return true;
    }

    /// <summary>Where a parameter's elements live; libtorch never moves a tensor's storage, and the model holds the parameter.</summary>
    private static unsafe ushort* Address(Tensor? t)
    {
        if (t is null) return null;
        fixed (byte* bytes = t.bytes) return (ushort*)bytes;
    }
}
