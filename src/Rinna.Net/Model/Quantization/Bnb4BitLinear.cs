using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Rinna.Net.Kernels;
using Rinna.Net.Kernels.Cpu;
using Rinna.Net.Model.Layers;
using Rinna.Net.Native;
using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Rinna.Net.Model.Quantization;

/// <summary>
/// A linear layer with 4-bit weights, the counterpart of bitsandbytes' <c>Linear4bit</c> for inference: the flattened
/// <c>[out, in]</c> weight is cut into blocks of 64, each stored as 4-bit NF4 or FP4 codes with a float32 absmax scale
/// (or, with double quantization, an 8-bit scale plus a float32 scale per 256 blocks), exactly as bitsandbytes'
/// <c>quantize_4bit</c> stores it (<see cref="Bnb4BitQuantization"/>).
/// </summary>
/// <remarks>
/// On the CPU, rows go through a managed GEMV that dequantizes in registers and never builds the float weight
/// (<see cref="Bnb4BitGemv"/>): a decode step, a batched step, a chat turn, a speculative step's proposals, and with
/// bfloat16 or float16 compute whole prompts. It computes in float32 when the compute dtype is float32 (up to 32–48
/// rows, eight per pass over the weight), and with a 16-bit integer form of the code book and activations, more precise
/// than the dtype, when it is bfloat16 or float16 (every row, a tile at a time, unless the CPU has a fast bfloat16
/// GEMM; eight rows without AVX2). Other prompts dequantize a block of output features at a time into a reused
/// per-thread buffer and multiply it with libtorch: in the compute dtype, or, for float16 and (where the CPU has no fast
/// bfloat16 GEMM) bfloat16, in float32 on the rounded operands. Off the CPU the whole weight is dequantized, as
/// bitsandbytes does. The float weight given to the constructor is read block by block and not kept: the layer holds
/// about 0.56 byte per weight (0.52 with double quantization).
/// </remarks>
public sealed class Bnb4BitLinear : LinearLayer
{
    /// <summary>Float elements converted at once while quantizing (a multiple of the block size): 4 MiB of float32.</summary>
    private const long QuantizeChunkElements = 1 << 20;

    private const string NestedAbsmaxName = "nested_absmax";

    /// <summary>Weights dequantized at once on the prompt path: a 16 MiB float32 scratch buffer per thread.</summary>
    private const long ScratchElements = 4L << 20;

    /// <summary>
    /// The most rows the GEMV takes where its integer loops meet a prompt path that multiplies in float32: every row. A
    /// call multiplies a whole prompt a tile of rows at a time, which beat dequantizing for libtorch's float32 GEMM at
    /// every prompt length measured (benchmarks/RESULTS.md).
    /// </summary>
    internal const int MaxGemvRows = int.MaxValue;

    /// <summary>
    /// The most rows the GEMV takes where the prompt path multiplies faster than the GEMV: a bfloat16 GEMM in hardware
    /// (<see cref="PromptsInBFloat16"/>), or float32 compute, whose GEMV loops do float32 arithmetic. 48 with AVX-512 and
    /// 32 with AVX2, whose float32 loop is slower: below each measured crossover with a margin (benchmarks/RESULTS.md).
    /// </summary>
    internal static int GemvRowsBesideFastGemm { get; } = System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? 48 : 32;

    /// <summary>
    /// The most rows one product gives the GEMV for <paramref name="computeDType"/> here: <see cref="MaxGemvRows"/> for the
    /// integer loops (bfloat16 or float16 compute) where prompts multiply in float32, <see cref="GemvRowsBesideFastGemm"/>
    /// for float32 compute or a hardware bfloat16 GEMM, and one group of <see cref="Bnb4BitGemv.MaxActivationRows"/>
    /// without AVX2 (the portable loops, Arm64), where they are not measured against dequantizing.
    /// </summary>
    internal int GemvRowsFor(ScalarType computeDType) => GemvRowsFor(computeDType, (int)InFeatures, code);

    /// <summary><see cref="GemvRowsFor(ScalarType)"/> for a layer of <paramref name="columns"/> input features and this code book.</summary>
    internal static int GemvRowsFor(ScalarType computeDType, int columns, float[] code)
    {
        if (!System.Runtime.Intrinsics.X86.Avx2.IsSupported) return Bnb4BitGemv.MaxActivationRows;
        bool integer = computeDType is ScalarType.BFloat16 or ScalarType.Float16 && Bnb4BitGemv.Int16VariantFor(columns, code) is not null;
        return integer && !(computeDType == ScalarType.BFloat16 && PromptsInBFloat16) ? MaxGemvRows : GemvRowsBesideFastGemm;
    }

    /// <summary>Double-quantized block scales dequantized at once on the prompt path, on the stack: 4 KiB.</summary>
    private const int StackBlocks = 1024;

    [ThreadStatic]
    private static Tensor? floatScratch;

    [ThreadStatic]
    private static Tensor? typedScratch;

    // Field names are the buffer names, so TorchSharp's reflective Module.to() re-registers each buffer once.
    private Tensor weight;
    private Tensor absmax;

    [ComponentName(Name = NestedAbsmaxName)]
    private Tensor? nestedAbsmax;

    private Tensor? bias;
    private readonly float offset;
    private readonly float[] code;

    /// <summary>Quantizes a float weight (and takes an optional bias) into a new 4-bit layer.</summary>
    /// <param name="weight">The float weight <c>[out_features, in_features]</c> (float32, float16 or bfloat16, on any device).
    /// It is read, not kept or modified.</param>
    /// <param name="bias">The optional bias <c>[out_features]</c>, stored as float32.</param>
    /// <param name="quantType"><see cref="Bnb4BitQuantization.Nf4"/> or <see cref="Bnb4BitQuantization.Fp4"/>.</param>
    /// <param name="useDoubleQuant">Quantize the block scales again to 8 bits (bitsandbytes' <c>compress_statistics</c>).</param>
    /// <param name="computeDType">The dtype prompts are multiplied in; <c>null</c> means the input's.</param>
    /// <exception cref="ArgumentException">The weight is not a 2-D floating-point tensor, the bias does not match it, or
    /// the quant type is unknown.</exception>
    public Bnb4BitLinear(Tensor weight, Tensor? bias = null, string quantType = Bnb4BitQuantization.Nf4, bool useDoubleQuant = false,
        ScalarType? computeDType = ScalarType.Float32)
        : this(weight, bias, quantType, useDoubleQuant, computeDType, allocate: null)
    {
    }

    /// <param name="weight">See the public constructor.</param>
    /// <param name="bias">See the public constructor.</param>
    /// <param name="quantType">See the public constructor.</param>
    /// <param name="useDoubleQuant">See the public constructor.</param>
    /// <param name="computeDType">See the public constructor.</param>
    /// <param name="allocate">Allocates the packed codes on the CPU before they are filled (the loader's memory policy);
    /// <c>null</c> means <c>empty</c>.</param>
    internal Bnb4BitLinear(Tensor weight, Tensor? bias, string quantType, bool useDoubleQuant, ScalarType? computeDType,
        Func<long[], ScalarType, Device, Tensor>? allocate)
        : base(nameof(Bnb4BitLinear))
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.dim() != 2 || !weight.is_floating_point())
            throw new ArgumentException($"The weight must be a 2-D floating-point tensor [out_features, in_features], got {weight.dtype} [{string.Join(", ", weight.shape)}].", nameof(weight));
        if (bias is not null && (bias.dim() != 1 || bias.size(0) != weight.size(0) || !bias.is_floating_point()))
            throw new ArgumentException($"The bias must be a floating-point vector of {weight.size(0)} elements, got {bias.dtype} [{string.Join(", ", bias.shape)}].", nameof(bias));
        code = Bnb4BitQuantization.CodeOf(quantType);
        if (weight.numel() > 2L * int.MaxValue)
            throw new ArgumentException($"The weight has {weight.numel()} elements; 4-bit layers hold at most {2L * int.MaxValue}.", nameof(weight));
        if (computeDType is { } c && c is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16))
            throw new ArgumentException($"The compute dtype must be float32, float16 or bfloat16, got {c}.", nameof(computeDType));

        QuantType = quantType;
        OutFeatures = weight.size(0);
        InFeatures = weight.size(1);
        ComputeDType = computeDType;
        var device = weight.device;
        var (packed, scales) = Quantize(weight, code == Bnb4BitQuantization.Nf4Code, allocate ?? ((shape, dtype, on) => empty(shape, dtype, on)));
        if (useDoubleQuant)
        {
            var (scaleCodes, nested, mean) = Bnb4BitQuantization.DoubleQuantize(scales);
            absmax = OnDevice(tensor(scaleCodes, ScalarType.Byte), device);
            nestedAbsmax = OnDevice(tensor(nested, ScalarType.Float32), device);
            offset = mean;
        }
        else
        {
            absmax = OnDevice(tensor(scales, ScalarType.Float32), device);
        }
        this.weight = OnDevice(packed, device);
        this.bias = bias?.to(ScalarType.Float32, device, copy: true).DetachFromDisposeScope();
        register_buffer(nameof(weight), this.weight);
        register_buffer(nameof(absmax), absmax);
        if (nestedAbsmax is not null) register_buffer(NestedAbsmaxName, nestedAbsmax);
        if (this.bias is not null) register_buffer(nameof(bias), this.bias);
    }

    /// <summary>Input features (the weight's second dimension).</summary>
    public long InFeatures { get; }

    /// <summary>Output features (the weight's first dimension).</summary>
    public long OutFeatures { get; }

    /// <summary>The 4-bit data type, <c>"nf4"</c> or <c>"fp4"</c>.</summary>
    public string QuantType { get; }

    /// <summary>Whether the block scales are themselves 8-bit quantized.</summary>
    public bool UsesDoubleQuant => nestedAbsmax is not null;

    /// <summary>The dtype prompts are multiplied in, or <c>null</c> for the input's dtype.</summary>
    public ScalarType? ComputeDType { get; }

    /// <summary>
    /// The packed codes, uint8 <c>[(out·in + 1) / 2]</c>: element <c>2j</c> of the flattened weight in the high nibble of
    /// byte <c>j</c>, element <c>2j + 1</c> in the low nibble (bitsandbytes' layout).
    /// </summary>
    public Tensor Weight => weight;

    /// <summary>
    /// The block scales: float32 <c>[blocks]</c>, or with double quantization their uint8 codes in the dynamic map.
    /// </summary>
    public Tensor Absmax => absmax;

    /// <summary>With double quantization, the float32 scale of each 256 block scales; otherwise <c>null</c>.</summary>
    public Tensor? NestedAbsmax => nestedAbsmax;

    /// <summary>With double quantization, the mean subtracted from the block scales before quantizing them; otherwise 0.</summary>
    public float Offset => offset;

    /// <summary>The bias <c>[out_features]</c> as float32, or <c>null</c>.</summary>
    public Tensor? Bias => bias;

    /// <summary>The code book of <see cref="QuantType"/>: the 16 values a code stands for.</summary>
    internal float[] Code => code;

    /// <summary>Bytes of the quantized weight: the packed codes and the block scales (and the nested scales with double quantization).</summary>
    public long WeightBytes => weight.numel() + absmax.numel() * absmax.ElementSize + (nestedAbsmax is null ? 0 : nestedAbsmax.numel() * 4 + sizeof(float));

    /// <summary>
    /// The bytes a <see cref="Bnb4BitLinear"/> of this shape holds (codes, scales, float32 bias); to size modules for a
    /// device map before anything is loaded.
    /// </summary>
    /// <param name="outFeatures">Output features (weight rows).</param>
    /// <param name="inFeatures">Input features (weight columns).</param>
    /// <param name="hasBias">Whether the layer has a bias.</param>
    /// <param name="useDoubleQuant">Whether the block scales are 8-bit.</param>
    public static long StorageBytes(long outFeatures, long inFeatures, bool hasBias, bool useDoubleQuant)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(outFeatures);
        ArgumentOutOfRangeException.ThrowIfNegative(inFeatures);
        long n = outFeatures * inFeatures, blocks = (n + Bnb4BitQuantization.BlockSize - 1) / Bnb4BitQuantization.BlockSize;
        long scales = useDoubleQuant
            ? blocks + 4 * ((blocks + Bnb4BitQuantization.AbsmaxBlockSize - 1) / Bnb4BitQuantization.AbsmaxBlockSize) + 4
            : 4 * blocks;
        return (n + 1) / 2 + scales + (hasBias ? 4 * outFeatures : 0);
    }

    /// <summary>Computes <c>input · Wᵀ + bias</c> with the 4-bit weight.</summary>
    /// <param name="input">Activations <c>[..., in_features]</c> in a floating dtype, on the layer's device.</param>
    /// <returns><c>[..., out_features]</c> in the input's dtype.</returns>
    /// <exception cref="ArgumentException">The input is not floating point or its last dimension is not <see cref="InFeatures"/>.</exception>
    public override Tensor forward(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (!input.is_floating_point() || input.dim() == 0 || input.size(-1) != InFeatures)
            throw new ArgumentException($"Bnb4BitLinear expects floating-point input [..., {InFeatures}], got {input.dtype} [{string.Join(", ", input.shape)}].", nameof(input));

        using var scope = NewDisposeScope();
        var outputShape = TensorShapes.WithLastDimension(input, OutFeatures);
        var rows = input.reshape(-1, InFeatures);
        Tensor output;
        if (rows.size(0) == 0)
            output = empty(0, OutFeatures, dtype: input.dtype, device: input.device);
        else if (weight.device_type == DeviceType.CPU && rows.size(0) <= GemvRowsFor(ComputeDType ?? rows.dtype) && TryGemv(rows, out var product))
            output = product;
        else
        {
            using (no_grad())
                output = weight.device_type == DeviceType.CPU ? DequantizingProduct(rows) : DenseProduct(rows);
        }
        return output.reshape(outputShape).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Rows through <see cref="Bnb4BitGemv"/>, as many per call as it takes (<see cref="Bnb4BitGemv.MaxRowsPerCall(Bnb4BitMatrix, ScalarType)"/>;
    /// the decode layer pass's arithmetic, so a row gets the same result in a prompt as in a decode step); false where
    /// the GEMV does not take them.
    /// </summary>
    internal bool TryGemv(Tensor rows, out Tensor output)
    {
        var computeDType = ComputeDType ?? rows.dtype;
        var matrix = Matrix();
        long count = rows.size(0);
        int perCall = Math.Max(Bnb4BitGemv.MaxActivationRows, Bnb4BitGemv.MaxRowsPerCall(matrix, computeDType));
        if (count <= perCall) return Bnb4BitGemv.TryMultiply(rows, matrix, bias, out output, computeDType);
        output = empty(count, OutFeatures, rows.dtype);
        for (long first = 0; first < count; first += perCall)
        {
            long group = Math.Min(perCall, count - first);
            if (!Bnb4BitGemv.TryMultiply(rows.narrow(0, first, group), matrix, bias, out var product, computeDType)) return false;
            using (product) output.narrow(0, first, group).copy_(product);
        }
        return true;
    }

    /// <summary>Whether bfloat16-compute prompts multiply in bfloat16 here, rather than in float32 on bfloat16-rounded operands.</summary>
    internal static bool PromptsInBFloat16 { get; } = CpuFeatures.BFloat16GemmOutrunsFloat32;

    /// <summary>Rows <c>[n, in_features]</c> on the CPU through <see cref="BlockwiseProduct(Tensor, bool)"/>, in the compute dtype, returned in theirs.</summary>
    internal Tensor DequantizingProduct(Tensor rows) => DequantizingProduct(rows, PromptsInBFloat16);

    /// <summary><see cref="DequantizingProduct(Tensor)"/> with bfloat16 multiplied in bfloat16 or not; for tests.</summary>
    internal Tensor DequantizingProduct(Tensor rows, bool bfloat16Gemm) => BlockwiseProduct(rows.to(ComputeDType ?? rows.dtype), bfloat16Gemm).to(rows.dtype);

    /// <summary>Off the CPU: the whole weight dequantized for this product, as bitsandbytes' <c>matmul_4bit</c> does.</summary>
    private Tensor DenseProduct(Tensor rows)
    {
        var computeDType = ComputeDType ?? rows.dtype;
        using var dense = DequantizeWeight(computeDType);
        return nn.functional.linear(rows.to(computeDType), dense, bias?.to(computeDType)).to(rows.dtype);
    }

    /// <summary>
    /// Several rows on the CPU: a block of output features at a time is dequantized into this thread's reused scratch
    /// buffer, converted to the compute dtype and multiplied, so no allocation grows with the layer (allocating and
    /// faulting in a fresh float32 copy of a large layer cost more than the product itself).
    /// </summary>
    /// <remarks>
    /// Float16 is multiplied in float32 on float16-rounded operands: libtorch's float16 GEMM on the CPU ran at a third of
    /// its float32 rate here (no float16 arithmetic in most CPUs' vectors), while a product of two float16 values is exact
    /// in float32, so this is what a float16 GEMM accumulating in float32 computes (cuBLAS's, under bitsandbytes), rounded
    /// to float16 once at the end. Bfloat16 is multiplied the same way unless <paramref name="bfloat16Gemm"/>: where
    /// libtorch's bfloat16 GEMM does not outrun its float32 one (<see cref="CpuFeatures.BFloat16GemmOutrunsFloat32"/>; on
    /// CPUs without bfloat16 instructions oneDNN emulates them at a third of float32's rate).
    /// </remarks>
    private Tensor BlockwiseProduct(Tensor input, bool bfloat16Gemm)
    {
        if (input.dtype == ScalarType.Float16 || (input.dtype == ScalarType.BFloat16 && !bfloat16Gemm))
        {
            using var widened = input.to(ScalarType.Float32);
            using var product = MultiplyBlocks(widened, roundedTo: input.dtype);
            return product.to(input.dtype);
        }
        return MultiplyBlocks(input, roundedTo: null);
    }

    /// <param name="input">Rows in the dtype the weight is dequantized to.</param>
    /// <param name="roundedTo">Float16 or bfloat16: the weight and bias are rounded to it and held in float32 (the input's dtype).</param>
    private Tensor MultiplyBlocks(Tensor input, ScalarType? roundedTo)
    {
        var dtype = input.dtype;
        long blockRows = Math.Clamp(ScratchElements / InFeatures, 1, OutFeatures);
        // Blocks of rows start on 64-element boundaries of the flattened weight, where whole-block dequantization applies.
        long alignment = Bnb4BitQuantization.BlockSize / (long)BigInteger.GreatestCommonDivisor(InFeatures, Bnb4BitQuantization.BlockSize);
        blockRows = Math.Min(OutFeatures, Math.Max(alignment, blockRows / alignment * alignment));
        var output = empty(input.size(0), OutFeatures, dtype);
        var typedBias = roundedTo is { } rounding ? bias?.to(rounding).to(dtype) : bias?.to(dtype);
        for (long first = 0; first < OutFeatures; first += blockRows)
        {
            long count = Math.Min(blockRows, OutFeatures - first);
            var block = DequantizeRows(first, count, dtype, roundedTo);
            using var product = nn.functional.linear(input, block, typedBias?.narrow(0, first, count));
            output.narrow(1, first, count).copy_(product);
        }
        return output;
    }

    /// <summary>
    /// Rows <c>[first, first + count)</c> of the weight in <paramref name="dtype"/>, in this thread's scratch buffers; with
    /// <paramref name="roundedTo"/>, float32 holding the float16 or bfloat16 values.
    /// </summary>
    private Tensor DequantizeRows(long first, long count, ScalarType dtype, ScalarType? roundedTo)
    {
        long elements = count * InFeatures, start = first * InFeatures;
        if (Bnb4BitDequantize.IsAvailable && (roundedTo is not null || dtype is ScalarType.Float32 or ScalarType.BFloat16))
        {
            // On libtorch's team, in the compute dtype in one pass.
            var form = roundedTo switch
            {
                ScalarType.Float16 => Bnb4BitDequantizedForm.Float16InFloat32,
                ScalarType.BFloat16 => Bnb4BitDequantizedForm.BFloat16InFloat32,
                _ => dtype == ScalarType.BFloat16 ? Bnb4BitDequantizedForm.BFloat16 : Bnb4BitDequantizedForm.Float32,
            };
            var target = form == Bnb4BitDequantizedForm.BFloat16
                ? Scratch(ref typedScratch, elements, ScalarType.BFloat16)
                : Scratch(ref floatScratch, elements, ScalarType.Float32);
            Bnb4BitDequantize.Rows(Matrix(), (int)first, (int)count, target, form);
            return target.narrow(0, 0, elements).view(count, InFeatures);
        }
        var scratch = Scratch(ref floatScratch, elements, ScalarType.Float32);
        int parts = (int)Math.Max(1, Math.Min(Environment.ProcessorCount, elements / (16 * 1024)));
        long partElements = (elements / parts + Bnb4BitQuantization.BlockSize - 1) / Bnb4BitQuantization.BlockSize * Bnb4BitQuantization.BlockSize;
        Parallel.For(0, parts, part =>
        {
            long from = part * partElements, length = Math.Min(partElements, elements - from);
            if (length <= 0) return;
            DequantizeRange(start + from, Bnb4BitQuantization.AsFloats(scratch).Slice((int)from, (int)length));
        });
        var dense = scratch.narrow(0, 0, elements).view(count, InFeatures);
        if (roundedTo is { } rounding)
        {
            using var rounded = Scratch(ref typedScratch, elements, rounding).narrow(0, 0, elements).view(count, InFeatures);
            return dense.copy_(rounded.copy_(dense));
        }
        if (dtype == ScalarType.Float32) return dense;
        return Scratch(ref typedScratch, elements, dtype).narrow(0, 0, elements).view(count, InFeatures).copy_(dense);
    }

    /// <summary>
    /// Elements <c>[start, start + target.Length)</c> of the flattened CPU weight, dequantized. The scales are read where
    /// they are stored, or, with double quantization, dequantized on the stack for up to <see cref="StackBlocks"/> blocks
    /// at a time: a prompt multiplies every layer, and a managed copy of all of a layer's scales per product (2 MB for
    /// rinna-4b's MLP) piled up on the large-object heap faster than the GC returned it.
    /// </summary>
    [SkipLocalsInit]
    private void DequantizeRange(long start, Span<float> target)
    {
        if (nestedAbsmax is null)
        {
            Bnb4BitQuantization.DequantizeRange(weight.bytes, Bnb4BitQuantization.AsFloats(absmax), code, start, target);
            return;
        }
        Span<float> scales = stackalloc float[StackBlocks];
        var scaleCodes = absmax.bytes;
        var nested = Bnb4BitQuantization.AsFloats(nestedAbsmax);
        long end = start + target.Length;
        for (long at = start; at < end;)
        {
            long firstBlock = at / Bnb4BitQuantization.BlockSize;
            // From the first of these blocks on, so that scales[0] is its scale (a block's first element is even).
            long origin = firstBlock * Bnb4BitQuantization.BlockSize;
            long stop = Math.Min(end, origin + StackBlocks * Bnb4BitQuantization.BlockSize);
            int blocks = (int)((stop - origin + Bnb4BitQuantization.BlockSize - 1) / Bnb4BitQuantization.BlockSize);
            for (int b = 0; b < blocks; b++)
                scales[b] = Bnb4BitQuantization.DequantizeAbsmax(scaleCodes, nested, offset, (int)(firstBlock + b));
            Bnb4BitQuantization.DequantizeRange(weight.bytes[(int)(origin / 2)..], scales[..blocks], code, at - origin,
                target.Slice((int)(at - start), (int)(stop - at)));
            at = stop;
        }
    }

    /// <summary>A thread's scratch buffer of <paramref name="dtype"/>, grown to at least <paramref name="elements"/>; never in a dispose scope.</summary>
    private static Tensor Scratch(ref Tensor? buffer, long elements, ScalarType dtype)
    {
        if (buffer is null || buffer.numel() < elements || buffer.dtype != dtype)
        {
            buffer?.Dispose();
            buffer = empty(elements, dtype).DetachFromDisposeScope();
        }
        return buffer;
    }

    /// <summary>
    /// The dequantized weight <c>[out_features, in_features]</c>: each element <c>code[q] · absmax</c> in float32, exactly
    /// bitsandbytes' <c>dequantize_4bit</c>, then converted to <paramref name="dtype"/>, on the layer's device.
    /// </summary>
    /// <param name="dtype">The dtype of the result (float32 gives bitsandbytes' values exactly).</param>
    public Tensor DequantizeWeight(ScalarType dtype = ScalarType.Float32)
    {
        var device = weight.device;
        var dense = empty([OutFeatures, InFeatures], ScalarType.Float32);
        var packed = weight.device_type == DeviceType.CPU ? weight : weight.cpu();
        var scales = BlockScales();
        long total = OutFeatures * InFeatures;
        var chunks = (int)((total + QuantizeChunkElements - 1) / QuantizeChunkElements);
        var destination = dense;
        Parallel.For(0, chunks, chunk =>
        {
            long start = chunk * QuantizeChunkElements;
            int length = (int)Math.Min(QuantizeChunkElements, total - start);
            var target = Bnb4BitQuantization.AsFloats(destination).Slice((int)start, length);
            Bnb4BitQuantization.DequantizeRange(packed.bytes, scales, code, start, target);
        });
        if (!ReferenceEquals(packed, weight)) packed.Dispose();
        if (dtype == ScalarType.Float32 && device.type == DeviceType.CPU) return dense;
        var converted = dense.to(dtype, device);
        dense.Dispose();
        return converted;
    }

    /// <summary>The float32 scale of every block (dequantized from 8 bits under double quantization).</summary>
    internal float[] BlockScales()
    {
        using var scales = absmax.cpu();
        if (nestedAbsmax is null) return Bnb4BitQuantization.AsFloats(scales).ToArray();
        using var nested = nestedAbsmax.cpu();
        var codes = scales.bytes;
        var result = new float[codes.Length];
        for (int b = 0; b < result.Length; b++)
            result[b] = Bnb4BitQuantization.DequantizeAbsmax(codes, Bnb4BitQuantization.AsFloats(nested), offset, b);
        return result;
    }

    /// <summary>Keeps 4-bit codes and float32 scales whatever dtype the model is converted to.</summary>
    protected override nn.Module _to(ScalarType dtype, bool non_blocking) => this;

    /// <summary>Moves the buffers to <paramref name="device"/>; the storage dtypes stay as they are.</summary>
    protected override nn.Module _to(Device device, ScalarType dtype, bool non_blocking)
        => _to(device.type, device.index, non_blocking);

    /// <summary>The CPU tensor itself on the CPU, else a copy on <paramref name="device"/> (the CPU one disposed).</summary>
    private static Tensor OnDevice(Tensor cpu, Device device)
    {
        if (device.type == DeviceType.CPU) return cpu.DetachFromDisposeScope();
        var moved = cpu.to(device).DetachFromDisposeScope();
        cpu.Dispose();
        return moved;
    }

    private Bnb4BitMatrix Matrix() => new(weight, code, absmax, nestedAbsmax, offset,
        nestedAbsmax is null ? null : Bnb4BitQuantization.DynamicMap, (int)OutFeatures, (int)InFeatures);

    /// <summary>
    /// Quantizes the flattened weight chunk by chunk (chunks start on block boundaries), in parallel. A CPU weight is read
    /// in place and widened into pooled managed buffers: native allocations from the worker threads would each leave
    /// memory in a malloc arena.
    /// </summary>
    private static (Tensor Packed, float[] Absmax) Quantize(Tensor weight, bool nf4, Func<long[], ScalarType, Device, Tensor> allocate)
    {
        long total = weight.numel();
        long blocks = (total + Bnb4BitQuantization.BlockSize - 1) / Bnb4BitQuantization.BlockSize;
        var packed = allocate([(total + 1) / 2], ScalarType.Byte, CPU).DetachFromDisposeScope();
        var scales = new float[blocks];
        bool inPlace = weight.device_type == DeviceType.CPU && weight.is_contiguous() && total * weight.ElementSize <= int.MaxValue;
        var source = inPlace ? weight : weight.to(ScalarType.Float32, CPU).contiguous();
        try
        {
            var dtype = source.dtype;
            var chunks = (int)((total + QuantizeChunkElements - 1) / QuantizeChunkElements);
            Parallel.For(0, chunks, chunk =>
            {
                long start = chunk * QuantizeChunkElements;
                int length = (int)Math.Min(QuantizeChunkElements, total - start);
                var buffer = ArrayPool<float>.Shared.Rent(length);
                try
                {
                    var values = buffer.AsSpan(0, length);
                    Widen(source, dtype, start, values);
                    var target = packed.bytes.Slice((int)(start / 2), (length + 1) / 2);
                    var blockScales = scales.AsSpan((int)(start / Bnb4BitQuantization.BlockSize), (length + Bnb4BitQuantization.BlockSize - 1) / Bnb4BitQuantization.BlockSize);
                    Bnb4BitQuantization.QuantizeBlocks(values, nf4, target, blockScales);
                }
                finally
                {
                    ArrayPool<float>.Shared.Return(buffer);
                }
            });
        }
        finally
        {
            if (!inPlace) source.Dispose();
        }
        return (packed, scales);
    }

    /// <summary>Elements <c>[start, start + values.Length)</c> of a contiguous CPU tensor as float32 (exact for 16-bit types).</summary>
    private static void Widen(Tensor source, ScalarType dtype, long start, Span<float> values)
    {
        var bytes = source.bytes;
        switch (dtype)
        {
            case ScalarType.Float32:
                MemoryMarshal.Cast<byte, float>(bytes).Slice((int)start, values.Length).CopyTo(values);
                break;
            case ScalarType.Float16:
                Float16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(bytes).Slice((int)start, values.Length), values);
                break;
            case ScalarType.BFloat16:
                BFloat16Bits.Widen(MemoryMarshal.Cast<byte, ushort>(bytes).Slice((int)start, values.Length), values);
                break;
            case ScalarType.Float64:
                var doubles = MemoryMarshal.Cast<byte, double>(bytes).Slice((int)start, values.Length);
                for (int i = 0; i < values.Length; i++) values[i] = (float)doubles[i];
                break;
            default:
                throw new ArgumentException($"4-bit quantization reads float32, float16, bfloat16 or float64 weights, not {dtype}.");
        }
    }
}
