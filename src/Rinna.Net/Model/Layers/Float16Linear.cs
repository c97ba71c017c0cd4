using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Native;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Rinna.Net.Model.Layers;

/// <summary>
/// A linear layer that keeps its weight in float16 inside a model that computes in another dtype (bfloat16 on the CPU),
/// and picks libtorch's kernel per phase so that float16 pays off in both.
/// </summary>
/// <remarks>
/// Float16 GEMVs stream about twice as fast as libtorch's bfloat16 GEMV on CPUs, which makes float16 the decode format.
/// One row (a decode step) goes through <see cref="Float16Gemv"/> where the CPU supports it (product, bias, conversion
/// and the GELU or residual sum that follows, in one managed pass on libtorch's threads), otherwise through libtorch's
/// float16 GEMV; up to <see cref="MultiRowGemv.MaxRows"/> rows (a continuous-batching step, a short prompt) go through
/// <see cref="MultiRowGemv"/> the same way. libtorch has no fast float16 GEMM on CPUs without AVX512-FP16, so a longer
/// prompt converts the weight one block at a time into a reused scratch buffer and multiplies there: to bfloat16 where
/// libtorch's bfloat16 GEMM outruns its float32 one (<see cref="CpuFeatures.BFloat16GemmOutrunsFloat32"/>), to float32
/// (exact) elsewhere. Memory stays at two bytes per weight; the
/// scratch buffers are at most <see cref="ConversionBlockElements"/> float32 elements (and as many bfloat16 ones on the
/// bfloat16 path) per thread that ran a prompt. Off the CPU the weight is simply used in float16.
/// </remarks>
internal sealed class Float16Linear : LinearLayer
{
    /// <summary>
    /// Where <see cref="MultiRowGemv"/> does not run, inputs of up to this many rows run row by row through libtorch's
    /// float16 GEMV: a few weight streams still beat converting the weight to bfloat16 (an order of magnitude slower
    /// than streaming it) and running the GEMM.
    /// </summary>
    internal const int GemvRowLimit = 8;

    /// <summary>Whether prompts multiply in bfloat16 (the weight rounded to it) rather than in float32 (the weight exact).</summary>
    internal static bool PromptsInBFloat16 { get; } = CpuFeatures.BFloat16GemmOutrunsFloat32;

    /// <summary>Float16 elements converted at once on the GEMM path: scratch buffers of 32 MiB (float32) and 16 MiB (bfloat16).</summary>
    internal const long ConversionBlockElements = 8L << 20;

    [ThreadStatic]
    private static Tensor? conversionScratch;

    [ThreadStatic]
    private static Tensor? widenedScratch;

    private readonly Parameter weight;
    private readonly Parameter? bias;

    /// <summary>Whether products of a few rows may use the managed GEMVs: decided at the first such product, when the weight holds its values.</summary>
    private bool? managedGemv;

    /// <param name="weight">The float16 weight <c>[out_features, in_features]</c>, kept as given.</param>
    /// <param name="bias">The optional bias <c>[out_features]</c>, in the model's compute dtype.</param>
    public Float16Linear(Parameter weight, Parameter? bias) : base("linear")
    {
        if (weight.dtype != ScalarType.Float16 || weight.dim() != 2)
            throw new ArgumentException($"Float16Linear needs a 2-D float16 weight, got {weight.dtype} [{string.Join(", ", weight.shape)}].", nameof(weight));
        this.weight = weight;
        this.bias = bias;
        register_parameter("weight", weight);
        if (bias is not null) register_parameter("bias", bias);
    }

    /// <summary>The float16 weight <c>[out_features, in_features]</c>.</summary>
    internal Parameter Weight => weight;

    /// <summary>The bias in the model's compute dtype, or <c>null</c>.</summary>
    internal Parameter? Bias => bias;

    /// <summary>
    /// Whether the managed GEMVs may multiply this weight: a contiguous CPU weight without infinities or NaNs (those keep
    /// libtorch's float16 semantics). Checked at the first product, when the weight holds its values, not per token.
    /// </summary>
    internal bool TakesManagedGemv => managedGemv ??= weight.device_type == DeviceType.CPU && weight.is_contiguous()
        && weight.numel() * sizeof(short) <= int.MaxValue && Float16Gemv.IsFinite(weight);

    /// <summary><c>x · Wᵀ + b</c> for <c>x [..., in_features]</c>, returned in <c>x</c>'s dtype.</summary>
    public override Tensor forward(Tensor x)
    {
        if (TryForwardFewRows(x, gelu: false, residual: null, out var single)) return single;
        using var scope = NewDisposeScope();
        var rows = x.reshape(-1, weight.size(1));
        var product = weight.device_type != DeviceType.CPU ? F.linear(rows.to(ScalarType.Float16), weight)
            : rows.size(0) <= GemvRowLimit ? RowByRowGemv(rows)
            : BlockwiseGemm(rows, PromptsInBFloat16);
        var output = product.to(x.dtype);
        if (bias is not null) output = output.add_(bias);
        return output.view(TensorShapes.WithLastDimension(x, weight.size(0))).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>activation(x · Wᵀ + b) + residual</c>: up to <see cref="MultiRowGemv.MaxRows"/> rows with no activation or the
    /// exact GELU in one pass of the managed GEMVs, anything else as the separate operations.
    /// </summary>
    internal override Tensor Forward(Tensor x, Activation activation, Tensor? residual = null) =>
        activation is Activation.Identity or Activation.Gelu && TryForwardFewRows(x, activation == Activation.Gelu, residual, out var fused)
            ? fused
            : base.Forward(x, activation, residual);

    /// <summary>
    /// <c>gelu?(x · Wᵀ + b) + residual</c> for <c>x [..., in_features]</c> of one row (<see cref="Float16Gemv"/>) or up to
    /// <see cref="MultiRowGemv.MaxRows"/> rows (<see cref="MultiRowGemv"/>, a continuous-batching step) in one pass over
    /// the weight; false, doing nothing, where those paths do not apply.
    /// </summary>
    private bool TryForwardFewRows(Tensor x, bool gelu, Tensor? residual, out Tensor output)
    {
        output = null!;
        long columns = weight.size(1);
        if (weight.device_type != DeviceType.CPU || x.dim() == 0 || x.size(-1) != columns) return false;
        long rows = x.numel() / columns;
        if (rows == 1 ? !Float16Gemv.IsSupported : rows > MultiRowGemv.MaxRows || !MultiRowGemv.SupportsFloat16) return false;
        if (!TakesManagedGemv) return false;
        var input = x.is_contiguous() ? x : x.contiguous();
        return rows == 1
            ? Float16Gemv.TryMultiply(input, weight, bias, out output, gelu, residual)
            : MultiRowGemv.TryMultiply(input, weight, bias, out output, gelu, residual);
    }

    private Tensor RowByRowGemv(Tensor rows)
    {
        var half = rows.to(ScalarType.Float16);
        if (half.size(0) == 1) return F.linear(half, weight);
        return cat(Enumerable.Range(0, (int)half.size(0)).Select(i => F.linear(half.narrow(0, i, 1), weight)).ToArray(), 0);
    }

    /// <summary>
    /// <c>rows · Wᵀ</c> through a GEMM on the weight converted block by block: in bfloat16 (returned in bfloat16), or in
    /// float32 (returned in float32, for the caller's single rounding).
    /// </summary>
    internal Tensor BlockwiseGemm(Tensor rows, bool inBFloat16)
    {
        var resultType = inBFloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
        var input = rows.to(resultType);
        long outFeatures = weight.size(0), inFeatures = weight.size(1);
        long blockRows = Math.Clamp(ConversionBlockElements / inFeatures, 1, outFeatures);
        var (widened, scratch) = ConversionScratch(blockRows * inFeatures, inBFloat16);
        // Through float32: libtorch's direct float16 → bfloat16 copy is scalar and took 3.5× as long as the two
        // vectorized copies, which round the same way (float16 widens to float32 exactly).
        Tensor Block(long first, long count)
        {
            var block = widened.narrow(0, 0, count * inFeatures).view(count, inFeatures).copy_(weight.narrow(0, first, count));
            return F.linear(input, scratch is null ? block : scratch.narrow(0, 0, count * inFeatures).view(count, inFeatures).copy_(block));
        }
        if (blockRows == outFeatures) return Block(0, outFeatures);

        var output = empty(input.size(0), outFeatures, resultType);
        for (long first = 0; first < outFeatures; first += blockRows)
        {
            var count = Math.Min(blockRows, outFeatures - first);
            output.narrow(1, first, count).copy_(Block(first, count));
        }
        return output;
    }

    /// <summary>
    /// This thread's float32 scratch buffer and, for a bfloat16 GEMM, its bfloat16 one (else <c>null</c>), grown to at
    /// least <paramref name="elements"/>; never part of a dispose scope.
    /// </summary>
    private static (Tensor Float32, Tensor? BFloat16) ConversionScratch(long elements, bool bfloat16)
    {
        if (widenedScratch is null || widenedScratch.numel() < elements)
        {
            widenedScratch?.Dispose();
            widenedScratch = empty(elements, ScalarType.Float32).DetachFromDisposeScope();
        }
        if (bfloat16 && (conversionScratch is null || conversionScratch.numel() < elements))
        {
            conversionScratch?.Dispose();
            conversionScratch = empty(elements, ScalarType.BFloat16).DetachFromDisposeScope();
        }
        return (widenedScratch, bfloat16 ? conversionScratch : null);
    }
}
