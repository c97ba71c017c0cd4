using Rinna.Net.Generation;

namespace Rinna.Net.Integration;

/// <summary>
/// What <see cref="RinnaServiceCollectionExtensions.AddRinna(Microsoft.Extensions.DependencyInjection.IServiceCollection, Action{RinnaOptions})"/>
/// loads and how it answers; bindable from configuration (e.g. a <c>"Rinna"</c> section of appsettings.json).
/// </summary>
public sealed class RinnaOptions
{
    /// <summary>Model id (<c>rinna/bilingual-gpt-neox-4b-instruction-ppo</c>) or local directory. Required.</summary>
    public string ModelId { get; set; } = "";

    /// <summary>Tokenizer id or directory; <c>null</c> means <see cref="ModelId"/>.</summary>
    public string? TokenizerId { get; set; }

    /// <summary>Hub revision (branch, tag, commit or <c>refs/pr/N</c>).</summary>
    public string? Revision { get; set; }

    /// <summary>Hub cache directory; <c>null</c> means Python's (<c>HF_HUB_CACHE</c>, <c>HF_HOME</c>, <c>~/.cache/huggingface/hub</c>).</summary>
    public string? CacheDir { get; set; }

    /// <summary>Use only cached files.</summary>
    public bool LocalFilesOnly { get; set; }

    /// <summary>Hub access token; <c>null</c> means <c>HF_TOKEN</c>.</summary>
    public string? Token { get; set; }

    /// <summary>Hub endpoint; <c>null</c> means <c>HF_ENDPOINT</c> or huggingface.co.</summary>
    public string? Endpoint { get; set; }

    /// <summary>The weights' dtype.</summary>
    public TorchDtype TorchDtype { get; set; } = TorchDtype.Float32;

    /// <summary>Quantize the linear layers to int8 (LLM.int8()) while loading: the model card's <c>load_in_8bit=True</c>.</summary>
    public bool LoadIn8Bit { get; set; }

    /// <summary>LLM.int8()'s outlier threshold (<see cref="Model.Quantization.QuantizationConfig.Int8Threshold"/>).</summary>
    public double Int8Threshold { get; set; } = Model.Quantization.QuantizationConfig.DefaultInt8Threshold;

    /// <summary>Modules int8 (or 4-bit) leaves in floating point; <c>null</c> means the output head (<c>embed_out</c>), as transformers does.</summary>
    public string[]? Int8SkipModules { get; set; }

    /// <summary>Quantize the linear layers to 4 bits (bitsandbytes' NF4/FP4) while loading: transformers' <c>load_in_4bit=True</c>.</summary>
    public bool LoadIn4Bit { get; set; }

    /// <summary>The 4-bit type, <c>"nf4"</c> or <c>"fp4"</c> (<see cref="Model.Quantization.QuantizationConfig.Bnb4BitQuantType"/>).</summary>
    public string Bnb4BitQuantType { get; set; } = Model.Quantization.Bnb4BitQuantization.Fp4;

    /// <summary>Quantize the 4-bit block scales again (<see cref="Model.Quantization.QuantizationConfig.Bnb4BitUseDoubleQuant"/>).</summary>
    public bool Bnb4BitUseDoubleQuant { get; set; }

    /// <summary>The dtype 4-bit layers multiply prompts in (<see cref="Model.Quantization.QuantizationConfig.Bnb4BitComputeDtype"/>).</summary>
    public TorchDtype Bnb4BitComputeDtype { get; set; } = TorchDtype.Float32;

    /// <summary>The device map: <c>auto</c>, <c>balanced</c>, <c>sequential</c>, <c>cpu</c> or a device such as <c>cuda:0</c>; <c>null</c> means the CPU.</summary>
    public string? DeviceMap { get; set; }

    /// <summary>The most weight bytes per device for the device map, e.g. <c>{ "cuda:0": "10GiB", "cpu": "30GiB" }</c>.</summary>
    public Dictionary<string, string>? MaxMemory { get; set; }

    /// <summary>The conversation format; <c>null</c> detects it from <see cref="ModelId"/> (falls back to the bilingual format).</summary>
    public RinnaChatFormat? ChatFormat { get; set; }

    /// <summary>Load the model when the host starts instead of on the first request.</summary>
    public bool LoadOnStart { get; set; }

    /// <summary>Default tokens per answer (a request's <c>MaxOutputTokens</c> overrides it).</summary>
    public int MaxNewTokens { get; set; } = 128;

    /// <summary>Default sampling switch; rinna's cards sample.</summary>
    public bool DoSample { get; set; } = true;

    /// <summary>Default temperature (rinna's cards: 0.7).</summary>
    public double Temperature { get; set; } = 0.7;

    /// <summary>Default nucleus threshold.</summary>
    public double TopP { get; set; } = 1.0;

    /// <summary>Default top-k (transformers' default: 50; 0 turns it off).</summary>
    public int TopK { get; set; } = 50;

    /// <summary>
    /// The most bytes of KV cache one request may hold (<see cref="Generation.GenerationConfig.MaxCacheBytes"/>); an answer
    /// that would need more is cut short with a logged warning. <c>null</c> (the default) limits requests by the context only.
    /// </summary>
    public long? MaxCacheBytes { get; set; }

    /// <summary>Default repetition penalty (rinna's cards: 1.1).</summary>
    public double RepetitionPenalty { get; set; } = 1.1;

    /// <summary>
    /// What a request does when the conversation and its answer outgrow the model's context: drop the oldest exchanges
    /// (the default; instructions and the latest message stay, and the answer's length is clamped to what fits) or throw.
    /// </summary>
    public ContextOverflowPolicy ContextOverflow { get; set; } = ContextOverflowPolicy.DropOldestTurns;

    /// <summary>
    /// How long after a failed load the next request tries again (doubling with each failure, up to
    /// <see cref="MaxLoadRetryDelay"/>); requests in between get the failure at once.
    /// </summary>
    public TimeSpan LoadRetryDelay { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// The most requests decoded together in one batch (continuous batching); later ones wait in arrival order. Each
    /// row holds its own KV cache, so memory grows with this bound times the longest conversation. The default, 8,
    /// is the number of concurrent streams the benchmarks measure; float16 and float32 products of up to 32 rows read each
    /// weight once for all rows (above that they go to libtorch's GEMM).
    /// </summary>
    public int MaxBatchSize { get; set; } = ContinuousBatchingScheduler.DefaultMaxBatchSize;

    /// <summary>
    /// The most prompt tokens prefilled between two decode steps: short prompts arriving together join in one step, and a
    /// long prompt joining a running batch is prefilled in chunks of this size, with a decode step of the other rows
    /// between chunks, so their answers keep streaming.
    /// Smaller chunks mean steadier streams and a slower first token for the new request. Default 256.
    /// </summary>
    public int PrefillChunkTokens { get; set; } = ContinuousBatchingScheduler.DefaultPrefillChunkTokens;

    /// <summary>
    /// Bytes of finished requests' KV caches kept so that a request repeating their tokens (a chat's next turn repeats the
    /// conversation so far) prefills only what is new; the least recently used leave first. Default 1 GiB (about 1,700
    /// tokens of rinna-4b in bfloat16); 0 keeps none.
    /// </summary>
    public long PrefixCacheBytes { get; set; } = 1L << 30;

    /// <summary>The longest wait between load attempts.</summary>
    public TimeSpan MaxLoadRetryDelay { get; set; } = TimeSpan.FromMinutes(1);
}
