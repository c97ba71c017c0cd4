namespace Rinna.Net.Model.Quantization;

/// <summary>
/// How linear layers are quantized while loading, shaped like transformers' <c>BitsAndBytesConfig</c>
/// (<c>load_in_8bit</c>, <c>llm_int8_threshold</c>, <c>llm_int8_skip_modules</c>, <c>load_in_4bit</c>,
/// <c>bnb_4bit_quant_type</c>, <c>bnb_4bit_use_double_quant</c>, <c>bnb_4bit_compute_dtype</c>).
/// </summary>
/// <remarks>
/// With <see cref="LoadIn8Bit"/> every linear layer whose name is not matched by <see cref="SkipModules"/> becomes an
/// <see cref="Int8Linear"/> (LLM.int8(): int8 weights with one scale per output row, activations quantized per token,
/// outlier feature columns computed in floating point). With <see cref="LoadIn4Bit"/> it becomes a
/// <see cref="Bnb4BitLinear"/> (bitsandbytes' <c>Linear4bit</c>: NF4 or FP4 codes in blocks of 64 weights with a scale
/// per block). Embeddings and LayerNorms are never quantized.
/// </remarks>
public sealed class QuantizationConfig
{
    /// <summary>The default outlier threshold of LLM.int8() and bitsandbytes.</summary>
    public const double DefaultInt8Threshold = 6.0;

    /// <summary>Quantize linear layers to int8 while loading (transformers' <c>load_in_8bit</c>).</summary>
    public bool LoadIn8Bit { get; set; }

    /// <summary>
    /// Quantize linear layers to 4 bits while loading (transformers' <c>load_in_4bit</c>): bitsandbytes' blockwise
    /// NF4 or FP4 (<see cref="Bnb4BitQuantType"/>), 64 weights per block. Cannot be combined with <see cref="LoadIn8Bit"/>.
    /// </summary>
    public bool LoadIn4Bit { get; set; }

    /// <summary>
    /// The 4-bit data type (transformers' <c>bnb_4bit_quant_type</c>): <c>"fp4"</c> (the default, as in transformers) or
    /// <c>"nf4"</c> (NormalFloat4, QLoRA's type, the usual choice for pretrained weights).
    /// </summary>
    public string Bnb4BitQuantType { get; set; } = Bnb4BitQuantization.Fp4;

    /// <summary>
    /// Quantize the per-block scales again (transformers' <c>bnb_4bit_use_double_quant</c>): 8 bits per 64-weight block
    /// plus a float32 scale per 256 blocks instead of a float32 per block, about 0.4 bit per parameter less.
    /// </summary>
    public bool Bnb4BitUseDoubleQuant { get; set; }

    /// <summary>
    /// The dtype 4-bit layers compute prompts in (transformers' <c>bnb_4bit_compute_dtype</c>, float32 by default as in
    /// transformers): the block of weights is dequantized to it and multiplied there. <see cref="TorchDtype.Auto"/> means the
    /// dtype of the layer's input. Single-token decoding accumulates in float32 whatever this says.
    /// </summary>
    public TorchDtype Bnb4BitComputeDtype { get; set; } = TorchDtype.Float32;

    /// <summary>
    /// Input feature columns whose magnitude exceeds this value anywhere in the batch are multiplied in floating point
    /// instead of int8 (mixed-precision decomposition; transformers' <c>llm_int8_threshold</c>). Zero or a negative
    /// value disables the decomposition: every column goes through int8.
    /// </summary>
    public double Int8Threshold { get; set; } = DefaultInt8Threshold;

    /// <summary>
    /// Modules kept in floating point (transformers' <c>llm_int8_skip_modules</c>). An entry matches a module whose
    /// dotted name equals it or contains it as whole dotted segments, so <c>"embed_out"</c> matches the output head
    /// and <c>"attention"</c> would match <c>gpt_neox.layers.3.attention.dense</c>. The default keeps the output head
    /// unquantized, as transformers does.
    /// </summary>
    public IReadOnlyList<string> SkipModules { get; set; } = ["embed_out"];

    /// <summary>Whether the linear layer named <paramref name="moduleName"/> is to be quantized under this configuration.</summary>
    /// <param name="moduleName">The module's dotted name, e.g. <c>gpt_neox.layers.0.mlp.dense_h_to_4h</c>.</param>
    /// <returns><c>true</c> when <see cref="LoadIn8Bit"/> or <see cref="LoadIn4Bit"/> is set and no entry of <see cref="SkipModules"/> matches.</returns>
    public bool ShouldQuantize(string moduleName)
    {
        ArgumentNullException.ThrowIfNull(moduleName);
        return (LoadIn8Bit || LoadIn4Bit) && !SkipModules.Any(skip => MatchesSegments(moduleName, skip));
    }

    /// <summary>Checks the values, so that a bad configuration fails before any weight is read.</summary>
    /// <exception cref="ArgumentException">Both <see cref="LoadIn8Bit"/> and <see cref="LoadIn4Bit"/> are set, the 4-bit
    /// type is not <c>"fp4"</c> or <c>"nf4"</c>, the compute dtype is unknown, the threshold is not a finite number, or a
    /// skip entry is empty.</exception>
    public void Validate()
    {
        // transformers refuses the pair too: a layer is quantized one way.
        if (LoadIn8Bit && LoadIn4Bit)
            throw new ArgumentException($"{nameof(LoadIn8Bit)} and {nameof(LoadIn4Bit)} are both set; choose one.", nameof(LoadIn4Bit));
        if (Bnb4BitQuantType is not (Bnb4BitQuantization.Fp4 or Bnb4BitQuantization.Nf4))
            throw new ArgumentException($"{nameof(Bnb4BitQuantType)} must be \"{Bnb4BitQuantization.Fp4}\" or \"{Bnb4BitQuantization.Nf4}\", got \"{Bnb4BitQuantType}\".", nameof(Bnb4BitQuantType));
        if (!Enum.IsDefined(Bnb4BitComputeDtype))
            throw new ArgumentException($"{nameof(Bnb4BitComputeDtype)} is not a known dtype: {Bnb4BitComputeDtype}.", nameof(Bnb4BitComputeDtype));
        if (!double.IsFinite(Int8Threshold))
            throw new ArgumentException($"{nameof(Int8Threshold)} must be a finite number, got {Int8Threshold}.", nameof(Int8Threshold));
        if (SkipModules is null)
            throw new ArgumentException($"{nameof(SkipModules)} must not be null; use an empty list to quantize every linear layer.", nameof(SkipModules));
        if (SkipModules.Any(string.IsNullOrWhiteSpace))
            throw new ArgumentException($"{nameof(SkipModules)} holds an empty or blank entry.", nameof(SkipModules));
    }

    private static bool MatchesSegments(string moduleName, string skip)
    {
        if (string.IsNullOrWhiteSpace(skip)) return false;
        var at = 0;
        while ((at = moduleName.IndexOf(skip, at, StringComparison.Ordinal)) >= 0)
        {
            var end = at + skip.Length;
            var startsOnBoundary = at == 0 || moduleName[at - 1] == '.';
            var endsOnBoundary = end == moduleName.Length || moduleName[end] == '.';
            if (startsOnBoundary && endsOnBoundary) return true;
            at++;
        }
        return false;
    }
}
