using System.Runtime.InteropServices;
using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Kernels;

/// <summary>
/// The LLM.int8() matrix product: the one place that reaches ATen's <c>torch._int_mm</c> (int8 × int8 → int32, oneDNN
/// on CPU, cuBLASLt on CUDA), which TorchSharp does not expose, through a TorchScript compilation unit.
/// </summary>
/// <remarks>
/// Why TorchScript: <c>_int_mm</c> streams the int8 weight faster than libtorch's bfloat16 GEMV streams twice the bytes
/// on CPUs with VNNI, and a script invoke costs only microseconds. A prompt's whole forward runs in one script function, so it pays that overhead once per layer; a decode row
/// calls only the product, and <see cref="RowwiseInt8"/> does the steps around it faster in managed code.
/// A TorchScript compile error aborts the process, so <see cref="Script"/> is a tested constant compiled once per
/// process. When TorchScript cannot be used at all, or a CUDA shape breaks cuBLASLt's int8 rules, the same arithmetic
/// runs in plain TorchSharp (<see cref="FallbackLinear"/>), which converts the int8 weight to float one block at a time.
/// On x64 CPUs without VNNI, oneDNN's int8 GEMM adds byte products in saturating 16-bit pairs (<c>vpmaddubsw</c>), so its
/// sums can be wrong by any amount; there (<see cref="IntMmIsExactOnCpu"/>, checked once per process) no CPU product
/// reaches <c>_int_mm</c>: every row count takes <see cref="Int8Gemv"/> (<see cref="StepwiseLinear"/>).
/// </remarks>
internal static class AtenInt8Kernels
{
    /// <summary>The name of the script function that computes the whole layer.</summary>
    private const string LinearFunction = "int8_linear";

    /// <summary>The name of the script function that is only the integer product (for <see cref="RowwiseInt8"/>).</summary>
    private const string ProductFunction = "int8_mm";

    /// <summary>
    /// <c>int8_linear(x [M,K] float, weight [N,K] int8, weight_scale [N] f32, bias [N] f32?, threshold) -> [M,N] x.dtype</c>.
    /// The native script resolver knows no dtype constants, hence <c>dtype=1</c> for int8. cuBLASLt's int8 GEMM needs
    /// more than 16 rows, so CUDA inputs are padded with zero rows and the result cut back. The outlier search runs
    /// only when some element exceeds the threshold, which keeps the common decode step to about 15 small ops.
    /// </summary>
    internal const string Script = """
        def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor], threshold: float) -> Tensor:
            xf = x.float()
            magnitude = xf.abs()
            row_max = magnitude.amax(1, True)
            outlier_product: Optional[Tensor] = None
            if threshold > 0.0 and bool(row_max.max() > threshold):
                outlier_cols = (magnitude.amax(0) > threshold).nonzero().squeeze(1)
                dequantized_cols = weight.index_select(1, outlier_cols).float().mul_(weight_scale.unsqueeze(1))
                outlier_product = xf.index_select(1, outlier_cols).matmul(dequantized_cols.t())
                xf = xf.index_fill(1, outlier_cols, 0.0)
                row_max = xf.abs().amax(1, True)
            x_scale = row_max.clamp_min_(1e-30).div_(127.0)
            xq = xf.div(x_scale).round_().to(dtype=1)
            rows = xq.size(0)
            if xq.is_cuda and rows <= 16:
                xq = torch.constant_pad_nd(xq, [0, 0, 0, 17 - rows], 0)
            acc = torch._int_mm(xq, weight.t())
            if acc.size(0) != rows:
                acc = acc.narrow(0, 0, rows)
            y = acc * (x_scale * weight_scale)
            if outlier_product is not None:
                y = y.add_(outlier_product)
            if bias is not None:
                y = y.add_(bias)
            return y.to(dtype=x.dtype)

        def int8_mm(xq: Tensor, weight: Tensor) -> Tensor:
            return torch._int_mm(xq, weight.t())

        """;

    /// <summary>Elements of the int8 weight converted to float at once by the fallback: 4 MiB of float32.</summary>
    private const long FallbackBlockElements = 1 << 20;

    private static readonly Lazy<(jit.CompilationUnit? Unit, string? Failure)> Compiled = new(Compile, LazyThreadSafetyMode.ExecutionAndPublication);

    private static readonly Lazy<bool> IntMmExact = new(CheckIntMmOnCpu, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Whether the TorchScript path is usable in this process.</summary>
    internal static bool IsScriptAvailable => Compiled.Value.Unit is not null;

    /// <summary>
    /// Whether <c>_int_mm</c> returns exact int32 sums for CPU tensors here. oneDNN's int8 GEMM on an x64 CPU without VNNI
    /// (AVX-512 VNNI or AVX-VNNI: AMD before Zen 4, Intel client cores before Alder Lake, Skylake-SP) offsets one operand
    /// to unsigned bytes and adds each pair of byte products in a saturating 16-bit lane (<c>vpmaddubsw</c>), which clips
    /// at ±32767 where two large products meet; the GEMM API cannot ask for anything else. So this is measured, not
    /// inferred from CPU flags: the first call multiplies rows that such a kernel clips and compares with exact sums.
    /// False also where the script is unavailable.
    /// </summary>
    internal static bool IntMmIsExactOnCpu => IntMmExact.Value;

    /// <summary>Whether a product of <paramref name="weight"/> may go through <c>_int_mm</c>: the script runs, the shape suits cuBLASLt, and a CPU's sums are exact.</summary>
    private static bool IntMmServes(Tensor weight)
        => IsScriptAvailable && IntMmAccepts(weight) && (weight.device_type != DeviceType.CPU || IntMmIsExactOnCpu);

    /// <summary>Why the TorchScript path is unusable, or <c>null</c> when it works.</summary>
    internal static string? ScriptFailure => Compiled.Value.Failure;

    /// <summary>
    /// Computes <c>x · dequant(weight)ᵀ + bias</c> with LLM.int8() arithmetic, on the fastest exact path the shape allows:
    /// for CPU rows without outliers (one, or up to <see cref="Int8Gemv.MaxRows"/> where <see cref="Int8Gemv"/> is
    /// preferred) the steps around the product run in <see cref="RowwiseInt8"/>; otherwise all in the script, or, on a CPU
    /// whose <c>_int_mm</c> is not exact, around <see cref="Int8Gemv"/> (<see cref="StepwiseLinear"/>).
    /// </summary>
    /// <param name="x">Activations <c>[M,K]</c> in a floating dtype; the result has the same dtype.</param>
    /// <param name="weight">Quantized weight <c>[N,K]</c>, int8, row-major.</param>
    /// <param name="weightScale">Per-row dequantization scale <c>[N]</c>, float32.</param>
    /// <param name="bias">Optional bias <c>[N]</c>, float32.</param>
    /// <param name="threshold">Outlier threshold; zero or less means pure int8.</param>
    internal static Tensor Linear(Tensor x, Tensor weight, Tensor weightScale, Tensor? bias, double threshold)
    {
        if (TryLinearFewRows(x, weight, weightScale, bias, threshold, gelu: false, residual: null, out var managed)) return managed;
        if (IntMmServes(weight)) return ScriptLinear(x, weight, weightScale, bias, threshold);
        return weight.device_type == DeviceType.CPU && Int8Gemv.IsSupported
            ? StepwiseLinear(x, weight, weightScale, bias, threshold)
            : FallbackLinear(x, weight, weightScale, bias, threshold);
    }

    /// <summary>
    /// <see cref="Linear"/> for CPU rows that take the managed steps around the product, with the exact GELU
    /// (<paramref name="gelu"/>) and a <paramref name="residual"/> <c>[M, N]</c> of x's dtype applied in the rescale's pass,
    /// each rounded to x's dtype as the separate libtorch operations would; false, doing nothing, for any other input.
    /// </summary>
    internal static bool TryLinearFewRows(Tensor x, Tensor weight, Tensor weightScale, Tensor? bias, double threshold, bool gelu, Tensor? residual,
        out Tensor result)
    {
        result = null!;
        bool script = IntMmServes(weight);
        // One row takes the managed steps around either product; a few rows only around the managed one, since the
        // script computes those steps for all rows in about the same time as for one. Where Int8Gemv is preferred it
        // also takes the few rows of a batched step: on CPUs without VNNI _int_mm is compute-bound for them as for one
        // row, and on the VNNI machine an 8-row step of rinna-4b-L4 measured the same either way (benchmarks/RESULTS.md).
        // Where _int_mm is not exact, Int8Gemv takes every CPU product it can, whatever RINNA_INT8_GEMV says.
        bool managedProduct = (Int8Gemv.IsPreferredForDecode || (Int8Gemv.IsSupported && !script)) && x.size(0) <= Int8Gemv.MaxRows;
        if (residual is not null && (residual.device_type != TorchSharp.DeviceType.CPU || !residual.is_contiguous() || residual.dtype != x.dtype
            || x.dim() != 2 || residual.numel() != x.size(0) * weight.size(0)))
            return false;
        Span<float> scales = stackalloc float[Int8Gemv.MaxRows];
        if ((managedProduct || (script && x.size(0) == 1)) && RowwiseInt8.TryQuantize(x, threshold, out var quantized, scales))
        {
            using (quantized)
            {
                Tensor? accumulator = managedProduct && Int8Gemv.TryMultiply(quantized, weight, out var managed) ? managed
                    : script ? Product(quantized, weight) : null;
                if (accumulator is not null)
                    using (accumulator)
                    {
                        result = RowwiseInt8.Rescale(accumulator, scales[..(int)x.size(0)], weightScale, bias, x.dtype, gelu, residual);
                        return true;
                    }
            }
        }
        return false;
    }

    /// <summary>The integer product alone, <c>_int_mm(xq, weightᵀ)</c> (int8 → int32); throws when the script is unavailable.</summary>
    internal static Tensor Product(Tensor quantized, Tensor weight) =>
        (Compiled.Value.Unit ?? throw new InvalidOperationException($"TorchScript int8 kernels are unavailable: {ScriptFailure}"))
            .invoke<Tensor>(ProductFunction, quantized, weight);

    /// <summary>The TorchScript path; throws when it is unavailable.</summary>
    internal static Tensor ScriptLinear(Tensor x, Tensor weight, Tensor weightScale, Tensor? bias, double threshold)
    {
        var unit = Compiled.Value.Unit ?? throw new InvalidOperationException($"TorchScript int8 kernels are unavailable: {ScriptFailure}");
        // invoke() converts a double argument into a temporary Scalar and passes only its handle, so the GC may free it
        // before the native call reads it; a Scalar held here stays alive for the call.
        using var thresholdScalar = threshold.ToScalar();
        return unit.invoke<Tensor>(LinearFunction, x, weight, weightScale, bias!, thresholdScalar);
    }

    /// <summary>The same arithmetic as <see cref="Script"/> in plain TorchSharp ops, with the integer product done in float32 blocks.</summary>
    internal static Tensor FallbackLinear(Tensor x, Tensor weight, Tensor weightScale, Tensor? bias, double threshold)
        => LinearAround(x, weight, weightScale, bias, threshold, FloatBlocksProduct);

    /// <summary>
    /// The script's arithmetic in TorchSharp ops around <see cref="Int8Gemv"/>'s exact integer product,
    /// <see cref="Int8Gemv.MaxRows"/> rows a call, for contiguous CPU operands: the same bits as <see cref="ScriptLinear"/>
    /// where <c>_int_mm</c> is exact, and the right ones where it is not.
    /// </summary>
    internal static Tensor StepwiseLinear(Tensor x, Tensor weight, Tensor weightScale, Tensor? bias, double threshold)
        => LinearAround(x, weight, weightScale, bias, threshold, ManagedProduct);

    /// <summary>
    /// <see cref="Script"/>'s steps in TorchSharp ops: <paramref name="product"/> multiplies the rounded activations
    /// (integers held in float32, <c>[M, K]</c>) with the int8 weight into float32 sums <c>[M, N]</c>. Internal so that
    /// tests can put exact sums in it as a reference where <c>_int_mm</c> has none.
    /// </summary>
    internal static Tensor LinearAround(Tensor x, Tensor weight, Tensor weightScale, Tensor? bias, double threshold, Func<Tensor, Tensor, Tensor> product)
    {
        using var scope = NewDisposeScope();
        var xf = x.to(ScalarType.Float32);
        var magnitude = xf.abs();
        var rowMax = magnitude.amax([1], keepdim: true);
        Tensor? outlierProduct = null;
        if (threshold > 0.0 && rowMax.max().item<float>() > threshold)
        {
            var outlierCols = magnitude.amax([0]).gt(threshold).nonzero().squeeze(1);
            var dequantizedCols = weight.index_select(1, outlierCols).to(ScalarType.Float32).mul_(weightScale.unsqueeze(1));
            outlierProduct = xf.index_select(1, outlierCols).matmul(dequantizedCols.t());
            xf = xf.index_fill(1, outlierCols, 0.0);
            rowMax = xf.abs().amax([1], keepdim: true);
        }
        var xScale = rowMax.clamp_min_(1e-30).div_(127.0);
        var xq = xf.div(xScale).round_();

        var y = product(xq, weight).mul_(xScale * weightScale);
        if (outlierProduct is not null) y.add_(outlierProduct);
        if (bias is not null) y.add_(bias);
        return y.to(x.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>The fallback's product: the int8 weight converted to float32 a block of rows at a time, multiplied by libtorch.</summary>
    private static Tensor FloatBlocksProduct(Tensor xq, Tensor weight)
    {
        var outFeatures = weight.size(0);
        var acc = empty(xq.size(0), outFeatures, dtype: ScalarType.Float32, device: xq.device);
        var rowsPerBlock = Math.Max(1, FallbackBlockElements / Math.Max(1, weight.size(1)));
        for (long row = 0; row < outFeatures; row += rowsPerBlock)
        {
            using var blockScope = NewDisposeScope();
            var rows = Math.Min(rowsPerBlock, outFeatures - row);
            // Integers up to 127 are exact in float32; sums stay exact up to K ≈ 1000 and within 1e-7 relative beyond.
            acc.narrow(1, row, rows).copy_(xq.matmul(weight.narrow(0, row, rows).to(ScalarType.Float32).t()));
        }
        return acc;
    }

    /// <summary>
    /// <see cref="StepwiseLinear"/>'s product: the activations as int8, through
    /// <see cref="Int8Gemv"/> a call per <see cref="Int8Gemv.MaxRows"/> rows, the int32 sums converted to float32 as the
    /// script's <c>acc * scale</c> converts them; <see cref="FloatBlocksProduct"/> for a weight Int8Gemv does not take.
    /// </summary>
    private static Tensor ManagedProduct(Tensor xq, Tensor weight)
    {
        var quantized = xq.to(ScalarType.Int8);
        long rows = quantized.size(0);
        var acc = empty(rows, weight.size(0), dtype: ScalarType.Float32);
        for (long first = 0; first < rows; first += Int8Gemv.MaxRows)
        {
            using var chunkScope = NewDisposeScope();
            var chunk = quantized.narrow(0, first, Math.Min(Int8Gemv.MaxRows, rows - first));
            // Int8Gemv refuses by the weight alone (not contiguous, rows too long), so only a first chunk can be refused.
            if (!Int8Gemv.TryMultiply(chunk, weight, out var sums)) return FloatBlocksProduct(xq, weight);
            acc.narrow(0, first, chunk.size(0)).copy_(sums);
        }
        return acc;
    }

    /// <summary>
    /// <see cref="IntMmIsExactOnCpu"/>'s check: rows of ±127 and rows of mixed values, at one row and at a prompt's row
    /// count, whose products a saturating 16-bit pair sum gets wrong, against sums computed here in 64-bit integers.
    /// </summary>
    private static bool CheckIntMmOnCpu()
    {
        if (!IsScriptAvailable) return false;
        const int Columns = 256, Outputs = 16;
        foreach (int rows in new[] { 1, 48 })
        {
            var x = new sbyte[rows * Columns];
            var w = new sbyte[Outputs * Columns];
            for (int i = 0; i < x.Length; i++) x[i] = Pattern(i / Columns, i % Columns);
            for (int i = 0; i < w.Length; i++) w[i] = Pattern(i / Columns + 3, i % Columns);
            using var scope = NewDisposeScope();
            var sums = Product(tensor(x).reshape(rows, Columns), tensor(w).reshape(Outputs, Columns)).data<int>().ToArray();
            for (int r = 0; r < rows; r++)
                for (int o = 0; o < Outputs; o++)
                {
                    long exact = 0;
                    for (int c = 0; c < Columns; c++) exact += x[r * Columns + c] * w[o * Columns + c];
                    if (sums[r * Outputs + o] != exact) return false;
                }
        }
        return true;

        // Row kinds by row % 4: all 127, all −127, alternating ±127, and a fixed scramble of [−127, 127].
        static sbyte Pattern(int row, int column) => (row % 4) switch
        {
            0 => 127,
            1 => -127,
            2 => (sbyte)(column % 2 == 0 ? 127 : -127),
            _ => (sbyte)((column * 97 + row * 31) % 255 - 127),
        };
    }

    /// <summary>cuBLASLt's int8 GEMM wants K and N multiples of 8; the CPU kernel takes any shape.</summary>
    private static bool IntMmAccepts(Tensor weight)
        => weight.device_type != DeviceType.CUDA || (weight.size(0) % 8 == 0 && weight.size(1) % 8 == 0);

    private static (jit.CompilationUnit?, string?) Compile()
    {
        try
        {
            return (jit.compile(Script), null);
        }
        catch (Exception ex) when (ex is ExternalException or DllNotFoundException or EntryPointNotFoundException or NotSupportedException)
        {
            return (null, ex.Message);
        }
    }
}
