using System.Runtime.CompilerServices;
using System.Buffers;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Layers;
using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Quantization;

/// <summary>
/// A linear layer with LLM.int8() arithmetic, the counterpart of bitsandbytes' <c>Linear8bitLt</c> for inference:
/// the weight is stored as int8 with one absmax scale per output row, activations are quantized per token, and input
/// feature columns above <see cref="Threshold"/> are multiplied in floating point against the dequantized weight columns.
/// </summary>
/// <remarks>
/// The float weight is quantized block by block when the layer is built and is not kept: the layer holds about one
/// byte per weight element (plus 4 bytes per output row for the scale and the bias). <see cref="AtenInt8Kernels"/> runs
/// the product with exact integer sums: a managed int8 GEMV for decode steps, ATen's int8 GEMM for prompts where its
/// sums are exact on the CPU (the managed kernel elsewhere); either streams half the bytes of a bfloat16 <c>linear</c>.
/// Converting the module with <c>to(ScalarType)</c> changes nothing, because its storage dtypes are fixed; moving it to
/// another device moves every buffer.
/// </remarks>
public sealed class Int8Linear : LinearLayer
{
    /// <summary>Float elements converted at once while quantizing: 4 MiB of float32 per block bounds the loading peak.</summary>
    private const long QuantizeBlockElements = 1 << 20;

    private const string WeightScaleName = "weight_scale";

    // TorchSharp's Module.to() moves tensor fields by reflection and re-registers them under their component name, so
    // each field carries the name of its buffer; otherwise the buffer would be moved a second time under its own name.
    private Tensor weight;

    [ComponentName(Name = WeightScaleName)]
    private Tensor weightScale;

    private Tensor? bias;

    /// <summary>Quantizes a float weight (and takes an optional bias) into a new int8 layer.</summary>
    /// <param name="weight">The float weight <c>[out_features, in_features]</c> (float32, float16 or bfloat16, on any device).
    /// It is read, not kept or modified; the caller may dispose it afterwards.</param>
    /// <param name="bias">The optional bias <c>[out_features]</c>, stored as float32.</param>
    /// <param name="threshold">The outlier threshold (<see cref="QuantizationConfig.Int8Threshold"/>); zero or less means pure int8.</param>
    /// <param name="device">Where the quantized buffers live; <c>null</c> means the weight's device.</param>
    /// <exception cref="ArgumentException">The weight is not a 2-D floating-point tensor, the bias does not match it,
    /// or the threshold is not finite.</exception>
    public Int8Linear(Tensor weight, Tensor? bias = null, double threshold = QuantizationConfig.DefaultInt8Threshold, Device? device = null)
        : this(weight, bias, threshold, device, allocate: null)
    {
    }

    /// <param name="weight">See the public constructor.</param>
    /// <param name="bias">See the public constructor.</param>
    /// <param name="threshold">See the public constructor.</param>
    /// <param name="device">See the public constructor.</param>
    /// <param name="allocate">Allocates the int8 weight before it is filled (the loader's memory policy); <c>null</c> means <c>empty</c>.</param>
    internal Int8Linear(Tensor weight, Tensor? bias, double threshold, Device? device, Func<long[], ScalarType, Device, Tensor>? allocate)
        : base(nameof(Int8Linear))
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.dim() != 2 || !weight.is_floating_point())
            throw new ArgumentException($"The weight must be a 2-D floating-point tensor [out_features, in_features], got {weight.dtype} [{string.Join(", ", weight.shape)}].", nameof(weight));
        if (bias is not null && (bias.dim() != 1 || bias.size(0) != weight.size(0) || !bias.is_floating_point()))
            throw new ArgumentException($"The bias must be a floating-point vector of {weight.size(0)} elements, got {bias.dtype} [{string.Join(", ", bias.shape)}].", nameof(bias));
        if (!double.IsFinite(threshold))
            throw new ArgumentException($"The threshold must be a finite number, got {threshold}.", nameof(threshold));

        device ??= weight.device;
        OutFeatures = weight.size(0);
        InFeatures = weight.size(1);
        Threshold = threshold;
        (this.weight, weightScale) = QuantizeRows(weight, device, allocate ?? ((shape, dtype, on) => empty(shape, dtype, on)));
        this.bias = bias?.to(ScalarType.Float32, device, copy: true).DetachFromDisposeScope();
        register_buffer(nameof(weight), this.weight);
        register_buffer(WeightScaleName, weightScale);
        if (this.bias is not null) register_buffer(nameof(bias), this.bias);
    }

    /// <summary>Input features (the weight's second dimension).</summary>
    public long InFeatures { get; }

    /// <summary>Output features (the weight's first dimension).</summary>
    public long OutFeatures { get; }

    /// <summary>The outlier threshold; zero or less disables the mixed-precision decomposition.</summary>
    public double Threshold { get; }

    /// <summary>The quantized weight <c>[out_features, in_features]</c>, int8: <c>round(w / scale)</c> per row.</summary>
    public Tensor Weight => weight;

    /// <summary>The per-row scale <c>[out_features]</c>, float32: the row's largest magnitude divided by 127.</summary>
    public Tensor WeightScale => weightScale;

    /// <summary>The bias <c>[out_features]</c> as float32, or <c>null</c>.</summary>
    public Tensor? Bias => bias;

    /// <summary>
    /// The bytes an <see cref="Int8Linear"/> of this shape holds: one per weight element plus a float32 scale (and a
    /// float32 bias) per output row. Use it to size modules for a device map before anything is loaded.
    /// </summary>
    /// <param name="outFeatures">Output features (weight rows).</param>
    /// <param name="inFeatures">Input features (weight columns).</param>
    /// <param name="hasBias">Whether the layer has a bias.</param>
    public static long StorageBytes(long outFeatures, long inFeatures, bool hasBias)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(outFeatures);
        ArgumentOutOfRangeException.ThrowIfNegative(inFeatures);
        return outFeatures * inFeatures + outFeatures * sizeof(float) * (hasBias ? 2 : 1);
    }

    /// <summary>Computes <c>input · Wᵀ + bias</c> with int8 arithmetic.</summary>
    /// <param name="input">Activations <c>[..., in_features]</c> in a floating dtype (float32 or bfloat16 in practice), on the layer's device.</param>
    /// <returns><c>[..., out_features]</c> in the input's dtype.</returns>
    /// <exception cref="ArgumentException">The input is not floating point or its last dimension is not <see cref="InFeatures"/>.</exception>
    public override Tensor forward(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (!input.is_floating_point() || input.dim() == 0 || input.size(-1) != InFeatures)
            throw new ArgumentException($"Int8Linear expects floating-point input [..., {InFeatures}], got {input.dtype} [{string.Join(", ", input.shape)}].", nameof(input));

        using var scope = NewDisposeScope();
        var outputShape = TensorShapes.WithLastDimension(input, OutFeatures);
        var rows = input.reshape(-1, InFeatures);
        var output = rows.size(0) == 0
            ? empty(0, OutFeatures, dtype: input.dtype, device: input.device)
            : AtenInt8Kernels.Linear(rows, weight, weightScale, bias, Threshold);
        return output.reshape(outputShape).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>activation(x · Wᵀ + b) + residual</c>: a decode step's rows (those the managed steps around the product take)
    /// with no activation or the exact GELU apply both in the rescale's pass, without the two libtorch calls (oneDNN
    /// builds a GELU primitive per call); anything else as the separate operations.
    /// </summary>
    internal override Tensor Forward(Tensor x, Activation activation, Tensor? residual = null)
    {
        if (activation is Activation.Identity or Activation.Gelu && x.dim() > 0 && x.size(-1) == InFeatures && x.is_floating_point()
            && (residual is null || residual.numel() == x.numel() / InFeatures * OutFeatures))
        {
            using var scope = NewDisposeScope();
            var rows = x.reshape(-1, InFeatures);
            if (rows.size(0) > 0 && AtenInt8Kernels.TryLinearFewRows(rows, weight, weightScale, bias, Threshold, activation == Activation.Gelu,
                    residual?.reshape(rows.size(0), OutFeatures), out var fused))
                return fused.reshape(TensorShapes.WithLastDimension(x, OutFeatures)).MoveToOuterDisposeScope();
        }
        return base.Forward(x, activation, residual);
    }

    /// <summary>Keeps int8 weights and float32 scales whatever dtype the model is converted to.</summary>
    protected override nn.Module _to(ScalarType dtype, bool non_blocking) => this;

    /// <summary>Moves the buffers to <paramref name="device"/>; the storage dtypes stay as they are.</summary>
    protected override nn.Module _to(Device device, ScalarType dtype, bool non_blocking)
        => _to(device.type, device.index, non_blocking);

    /// <summary>
    /// Per-row absmax quantization as bitsandbytes' <c>Int8Params</c> does it on a GPU: the weight is rounded to float16
    /// first (except a row float16 cannot hold, which bitsandbytes would turn into infinities and is quantized from its
    /// own values), <c>scale = absmax / 127</c>, and each code is <c>rint(w · (127 ⊘ absmax))</c> half to even, where
    /// <c>⊘</c> is CUDA's fast division (<c>__fdividef</c>: 127 times the GPU's reciprocal, <see cref="CudaFastMath"/>).
    /// A CPU weight is quantized row by row in managed code (<see cref="TryQuantizeRowsOnCpu"/>); otherwise, or where a
    /// row holds an infinity or NaN, libtorch quantizes one block of rows at a time so that only a block is ever in float32.
    /// </summary>
    internal static (Tensor Quantized, Tensor Scale) QuantizeRows(Tensor weight, Device device, Func<long[], ScalarType, Device, Tensor> allocate,
        bool managed = true)
    {
        var (outFeatures, inFeatures) = (weight.size(0), weight.size(1));
        var quantized = allocate([outFeatures, inFeatures], ScalarType.Int8, device).DetachFromDisposeScope();
        var scale = empty(outFeatures, dtype: ScalarType.Float32, device: device).DetachFromDisposeScope();
        if (managed && TryQuantizeRowsOnCpu(weight, quantized, scale)) return (quantized, scale);
        var rowsPerBlock = Math.Max(1, QuantizeBlockElements / Math.Max(1, inFeatures));
        using (no_grad())
        {
            for (long row = 0; row < outFeatures; row += rowsPerBlock)
            {
                using var scope = NewDisposeScope();
                var rows = Math.Min(rowsPerBlock, outFeatures - row);
                // A private float32 copy (even of a float32 weight) so the block can be scaled in place.
                var block = weight.narrow(0, row, rows).to(ScalarType.Float32, device, copy: true);
                var fits = linalg.vector_norm(block, double.PositiveInfinity, [1]).lt(HalfLimit).unsqueeze(1);
                block = where(fits, block.to(ScalarType.Float16).to(ScalarType.Float32), block);
                var absmax = linalg.vector_norm(block, double.PositiveInfinity, [1]);
                scale.narrow(0, row, rows).copy_(absmax / 127.0f);
                var multipliers = absmax.cpu().data<float>().ToArray().Select(RowMultiplier).ToArray();
                block.mul_(tensor(multipliers, device: device).unsqueeze(1)).round_();
                quantized.narrow(0, row, rows).copy_(block);
            }
        }
        return (quantized, scale);
    }

    /// <summary>Magnitudes from here up round to infinity in float16.</summary>
    private const float HalfLimit = 65520f;

    /// <summary><c>__fdividef(127.0f, absmax)</c> on a GPU; 0 for a zero row, whose codes are then 0 as on the GPU.</summary>
    private static float RowMultiplier(float absmax) => absmax == 0f ? 0f : CudaFastMath.Multiply(127f, CudaFastMath.Reciprocal(absmax));

    /// <summary>
    /// The libtorch path's float32 operations, fused into one pass per row on pooled buffers: libtorch's path allocated
    /// a fresh 4 MiB float32 block per step, whose page faults and four passes made loading the model card's int8 take
    /// three times as long as loading float16. Returns false (the caller then redoes every row with libtorch) where the
    /// tensors are not contiguous CPU ones of a 16- or 32-bit float type, or a row holds an infinity or NaN, whose
    /// propagation is libtorch's to define.
    /// </summary>
    private static bool TryQuantizeRowsOnCpu(Tensor weight, Tensor quantized, Tensor scale)
    {
        static bool Cpu(Tensor t) => t.device_type == DeviceType.CPU && t.is_contiguous();
        var dtype = weight.dtype;
        if (!Cpu(weight) || !Cpu(quantized) || !Cpu(scale) || dtype is not (ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32)
            || weight.numel() * weight.ElementSize > int.MaxValue || !Vector256.IsHardwareAccelerated)
            return false;
        int rows = (int)weight.size(0), columns = (int)weight.size(1);
        const int RowsPerTask = 16;
        int nonFinite = 0;
        Parallel.For(0, (rows + RowsPerTask - 1) / RowsPerTask, (task, state) =>
        {
            var pooled = ArrayPool<float>.Shared.Rent(columns);
            try
            {
                var values = pooled.AsSpan(0, columns);
                var scales = MemoryMarshal.Cast<byte, float>(scale.bytes);
                var codes = MemoryMarshal.Cast<byte, sbyte>(quantized.bytes);
                var bytes = weight.bytes;
                for (int row = task * RowsPerTask; row < Math.Min(rows, (task + 1) * RowsPerTask); row++)
                {
                    long start = (long)row * columns;
                    if (dtype == ScalarType.Float16) Float16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(bytes).Slice((int)start, columns), values);
                    else if (dtype == ScalarType.BFloat16) BFloat16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(bytes).Slice((int)start, columns), values);
                    else MemoryMarshal.Cast<byte, float>(bytes).Slice((int)start, columns).CopyTo(values);
                    if (!QuantizeRow(values, codes.Slice((int)start, columns), dtype != ScalarType.Float16, out scales[row]))
                    {
                        Interlocked.Exchange(ref nonFinite, 1);
                        state.Stop();
                        return;
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(pooled);
            }
        });
        return nonFinite == 0;
    }

    /// <summary>
    /// One row (<see cref="QuantizeRows"/>' definition): its scale and codes; false if the row is not all finite.
    /// <paramref name="toHalf"/> rounds the values to float16 first (they are float32 or bfloat16 ones).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool QuantizeRow(Span<float> values, Span<sbyte> codes, bool toHalf, out float scale)
    {
        int width = Vector256<float>.Count, c = 0;
        var max = Vector256<float>.Zero;
        var infinity = Vector256.Create(float.PositiveInfinity);
        var finite = Vector256<int>.AllBitsSet;
        for (; c + width <= values.Length; c += width)
        {
            var a = Vector256.Abs(Vector256.Create(values.Slice(c, width)));
            finite &= Vector256.LessThan(a, infinity).AsInt32();
            max = Vector256.Max(max, a);
        }
        float absmax = 0f;
        for (int lane = 0; lane < width; lane++) absmax = MathF.Max(absmax, max[lane]);
        for (; c < values.Length; c++)
        {
            float a = MathF.Abs(values[c]);
            if (!(a < float.PositiveInfinity)) return Fail(out scale);
            absmax = MathF.Max(absmax, a);
        }
        if (finite != Vector256<int>.AllBitsSet) return Fail(out scale);
        if (toHalf && absmax < HalfLimit)
        {
            // Rounding is monotonic, so the rounded row's absmax is the rounded absmax.
            Float16Bits.RoundToHalf(values);
            absmax = (float)(Half)absmax;
        }
        scale = absmax / 127.0f;
        var multipliers = Vector256.Create(RowMultiplier(absmax));
        c = 0;
        for (; c + 4 * width <= values.Length; c += 4 * width)
        {
            var low = Vector256.Narrow(Quantize(values, c, multipliers), Quantize(values, c + width, multipliers));
            var high = Vector256.Narrow(Quantize(values, c + 2 * width, multipliers), Quantize(values, c + 3 * width, multipliers));
            Vector256.Narrow(low, high).CopyTo(codes.Slice(c, 4 * width));
        }
        for (; c < values.Length; c++) codes[c] = (sbyte)MathF.Round(values[c] * multipliers[0], MidpointRounding.ToEven);
        return true;

        static bool Fail(out float scale)
        {
            scale = float.NaN;
            return false;
        }

        static Vector256<int> Quantize(ReadOnlySpan<float> values, int at, Vector256<float> multipliers)
            => Vector256.ConvertToInt32(Vector256.Round(Vector256.Create(values.Slice(at, Vector256<float>.Count)) * multipliers));
    }
}
