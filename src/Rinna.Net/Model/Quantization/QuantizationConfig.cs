namespace Rinna.Net.Model.Quantization;

/// <summary>
/// How linear layers are quantized while loading, shaped like transformers' <c>BitsAndBytesConfig</c>
/// (<c>load_in_8bit</c>, <c>llm_int8_threshold</c>, <c>llm_int8_skip_modules</c>).
/// </summary>
/// <remarks>
/// With <see cref="LoadIn8Bit"/> every linear layer whose name is not matched by <see cref="SkipModules"/> becomes an
/// <see cref="Int8Linear"/> (LLM.int8(): int8 weights with one scale per output row, activations quantized per token,
/// outlier feature columns computed in floating point). Embeddings and LayerNorms are never quantized.
/// </remarks>
public sealed class QuantizationConfig
{
    /// <summary>The default outlier threshold of LLM.int8() and bitsandbytes.</summary>
    public const double DefaultInt8Threshold = 6.0;

    /// <summary>Quantize linear layers to int8 while loading (transformers' <c>load_in_8bit</c>).</summary>
    public bool LoadIn8Bit { get; set; }

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
    /// <returns><c>true</c> when <see cref="LoadIn8Bit"/> is set and no entry of <see cref="SkipModules"/> matches.</returns>
    public bool ShouldQuantize(string moduleName)
    {
        ArgumentNullException.ThrowIfNull(moduleName);
        return LoadIn8Bit && !SkipModules.Any(skip => MatchesSegments(moduleName, skip));
    }

    /// <summary>Checks the values, so that a bad configuration fails before any weight is read.</summary>
    /// <exception cref="ArgumentException">The threshold is not a finite number, or a skip entry is empty.</exception>
    public void Validate()
    {
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
