using Rinna.Net.Model;

namespace Rinna.Net.Benchmarks;

/// <summary>The architectures the benchmarks measure, with random weights (speed does not depend on the values).</summary>
public static class ModelShapes
{
    /// <summary>The trained demo model that ships in samples/models (its own weights, not random ones).</summary>
    public const string Demo = "rinna-demo";

    public static string DemoDirectory()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "samples", "models", Demo);
            if (System.IO.Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException($"samples/models/{Demo} not found above {AppContext.BaseDirectory}");
    }

    public static GptNeoXConfig Get(string name) => name switch
    {
        Demo => GptNeoXConfig.FromFile(Path.Combine(DemoDirectory(), "config.json")),
        // EleutherAI/pythia-160m: parallel residual, 25 % rotary.
        "pythia-160m" => new GptNeoXConfig
        {
            VocabSize = 50304, HiddenSize = 768, NumHiddenLayers = 12, NumAttentionHeads = 12, IntermediateSize = 3072,
            RotaryPct = 0.25, UseParallelResidual = true, MaxPositionEmbeddings = 2048, BosTokenId = 0, EosTokenId = 0,
        },
        // pythia-160m's kind of layer at a width where the weights (0.4 MB a layer in float16) stay in cache: decode time
        // is then what a layer costs besides streaming its weights, time per token / 24 (for peer-ratio's SHAPE).
        "overhead-24" => new GptNeoXConfig
        {
            VocabSize = 1024, HiddenSize = 128, NumHiddenLayers = 24, NumAttentionHeads = 2, IntermediateSize = 512,
            RotaryPct = 0.25, UseParallelResidual = true, MaxPositionEmbeddings = 2048, BosTokenId = 0, EosTokenId = 0,
        },
        // rinna/bilingual-gpt-neox-4b: sequential residual, full rotary, 65,536-token vocabulary.
        "rinna-4b" => Rinna4B(36),
        // The same layers, 4 of them: per-layer costs are identical, so short runs extrapolate (×9 layers).
        "rinna-4b-L4" => Rinna4B(4),
        _ => throw new ArgumentException($"unknown shape '{name}'", nameof(name)),
    };

    private static GptNeoXConfig Rinna4B(int layers) => new()
    {
        VocabSize = 65536, HiddenSize = 2816, NumHiddenLayers = layers, NumAttentionHeads = 22, IntermediateSize = 11264,
        RotaryPct = 1.0, UseParallelResidual = false, MaxPositionEmbeddings = 2048, BosTokenId = 2, EosTokenId = 3,
    };

    /// <summary>
    /// Weight bytes one decode step streams from memory: every layer matrix and the output head (the embedding is only
    /// indexed). With int8 the layers take one byte per weight and the head stays float16 (int8 too with Int8All); with
    /// 4-bit, half a byte and a float32 absmax per 64 (the head 4-bit too with Nf4All; an 8-bit absmax with Nf4AllDq).
    /// </summary>
    public static double DecodeBytesPerToken(GptNeoXConfig c, string dtype)
    {
        double h = c.HiddenSize, i = c.IntermediateSize;
        double perLayer = 3 * h * h + h * h + 2 * h * i;
        (double layerBytes, double headBytes) = dtype switch { "Float32" => (4.0, 4.0), "Int8" => (1.0, 2.0), "Int8All" => (1.0, 1.0),
            // 4 bits per weight and a float32 absmax per 64 (bitsandbytes without double quantization); float16 head.
            "Nf4" or "Nf4Float32" => (0.5 + 4.0 / 64, 2.0), "Nf4All" => (0.5 + 4.0 / 64, 0.5 + 4.0 / 64),
            // Double quantization: an 8-bit scale per 64 and a float32 one per 256 blocks.
            "Nf4AllDq" => (0.5 + 1.0 / 64 + 4.0 / (64 * 256), 0.5 + 1.0 / 64 + 4.0 / (64 * 256)), _ => (2.0, 2.0) };
        return c.NumHiddenLayers * perLayer * layerBytes + c.VocabSize * h * headBytes;
    }
}
