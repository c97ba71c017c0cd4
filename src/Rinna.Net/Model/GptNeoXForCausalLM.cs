// GPT-NeoX for causal language modelling, laid out like Hugging Face's models/gpt_neox/modeling_gpt_neox.py (v4.38)
// so the two can be read side by side: rotary embedding → attention → MLP → layer → model → causal-LM head.
// Module and parameter names equal HF's state-dict names, so checkpoints load by name.
using System.Numerics;
using Rinna.Net.Model.Attention;
using Rinna.Net.Model.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Embedding = Rinna.Net.Model.Layers.Embedding;
using F = TorchSharp.torch.nn.functional;
using LayerNorm = Rinna.Net.Model.Layers.LayerNorm;

namespace Rinna.Net.Model;

/// <summary>What <see cref="GptNeoXForCausalLM.Forward"/> returns. Dispose it to free the tensors it holds (not the cache).</summary>
public sealed class CausalLMOutput : IDisposable
{
    internal CausalLMOutput(Tensor logits, KeyValueCache? pastKeyValues, IReadOnlyList<Tensor>? hiddenStates)
    {
        Logits = logits;
        PastKeyValues = pastKeyValues;
        HiddenStates = hiddenStates;
    }

    /// <summary>Float32 logits <c>[batch, seq, vocab]</c> (<c>seq</c> is 1 when only the last position was asked for).</summary>
    public Tensor Logits { get; }

    /// <summary>The key/value cache, updated in place with this call's tokens, when <c>useCache</c> was set.</summary>
    public KeyValueCache? PastKeyValues { get; }

    /// <summary>
    /// Float32 hidden states when asked for, as HF's <c>output_hidden_states</c>: <c>L + 1</c> tensors <c>[batch, seq, hidden]</c>,
    /// the embeddings, then each layer's output, except that the last entry is taken after the final LayerNorm.
    /// </summary>
    public IReadOnlyList<Tensor>? HiddenStates { get; }

    /// <inheritdoc />
    public void Dispose()
    {
        Logits.Dispose();
        if (HiddenStates is not null) foreach (var h in HiddenStates) h.Dispose();
    }
}

/// <summary>
/// GPT-NeoX causal language model (rinna's bilingual and Japanese models, pythia, open-calm, ...) on TorchSharp.
/// </summary>
/// <remarks>
/// Create it with <c>AutoModelForCausalLM.FromPretrainedAsync</c>. Inference runs without autograd and frees every
/// temporary tensor before returning. Thread safety: the weights are only read, so generations on separate caches may
/// run from several threads (tested with two), but they then share the cores; to serve concurrent requests, batch them
/// with <c>ContinuousBatchingScheduler</c> (what the hosting layer does) instead.
/// </remarks>
public sealed class GptNeoXForCausalLM : nn.Module
{
    private readonly GptNeoXModel gpt_neox;
    private readonly LinearLayer embed_out;

    internal GptNeoXForCausalLM(GptNeoXConfig config, ParameterSource source) : base(nameof(GptNeoXForCausalLM))
    {
        Config = config;
        gpt_neox = new GptNeoXModel(config, source.Scope("gpt_neox"));
        var head = source.Scope("embed_out");
        embed_out = config.TieWordEmbeddings
            ? new TiedLinear(gpt_neox.EmbedIn.Weight)
            : source.CreateLinear("embed_out", head.Parameter("weight", config.VocabSize, config.HiddenSize), bias: null);
        register_module("gpt_neox", gpt_neox);
        register_module("embed_out", embed_out);
        ComputeDType = source.ComputeDType;
    }

    /// <summary>The architecture.</summary>
    public GptNeoXConfig Config { get; }

    /// <summary>The directory the model was loaded from (where <c>generation_config.json</c> may live), or <c>null</c> for a model built in code.</summary>
    public string? SourceDirectory { get; internal set; }

    /// <summary>Where work on this model reports what it changed about a request (the loader's logger).</summary>
    internal Microsoft.Extensions.Logging.ILogger Logger { get; set; } = Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

    /// <summary>
    /// The element type the model computes in (float32 or bfloat16 on CPU, also float16 on GPUs). A float16 model on the
    /// CPU computes in bfloat16 while its linear weights stay float16.
    /// </summary>
    public ScalarType ComputeDType { get; }

    /// <summary>Where each top-level module lives, keyed like transformers' <c>hf_device_map</c>.</summary>
    public IReadOnlyDictionary<string, string> HfDeviceMap => gpt_neox.DeviceMap
        .Append(new KeyValuePair<string, string>("embed_out", HeadDevice.ToString()))
        .ToDictionary(kv => kv.Key, kv => kv.Value);

    /// <summary>
    /// The device of the input embedding, where token ids go in: transformers' <c>model.device</c>. Generation runs its
    /// processors here, as transformers runs them on the device of <c>input_ids</c>.
    /// </summary>
    public Device Device => gpt_neox.EmbedIn.Weight.device;

    /// <summary>
    /// The bytes the model's weights take as loaded, after dtype and quantization: every parameter and buffer (4-bit
    /// codes and scales, int8 weights and scales included), a tensor shared by two modules (tied embeddings) counted once.
    /// transformers' <c>get_memory_footprint()</c>; a KV cache is not part of it.
    /// </summary>
    public long GetMemoryFootprint() => parameters().Concat(buffers())
        .DistinctBy(t => t.Handle)
        .Sum(t => t.numel() * t.ElementSize);

    private Device HeadDevice => embed_out is TiedLinear ? Device : DeviceOf(embed_out);

    private static Device DeviceOf(nn.Module module) =>
        module.parameters().Select(p => p.device).Concat(module.buffers().Select(b => b.device)).FirstOrDefault() ?? CPU;

    /// <summary>Every parameter name and shape a checkpoint for <paramref name="config"/> must hold.</summary>
    public static IReadOnlyDictionary<string, long[]> ExpectedParameterShapes(GptNeoXConfig config) =>
        GptNeoXWeightLayout.For(config).ToDictionary(w => w.Name, w => w.Shape, StringComparer.Ordinal);

    /// <summary>
    /// Checkpoint entries that are buffers in Hugging Face's code, not parameters (causal-mask caches and rotary
    /// frequencies saved by older transformers versions); they are recomputed, never loaded.
    /// </summary>
    public static bool IsIgnoredCheckpointKey(string name) => GptNeoXWeightLayout.IsIgnoredCheckpointKey(name);

    /// <summary>Creates a model with randomly initialised weights (normal, std <c>initializer_range</c>; LayerNorms 1/0), e.g. for training.</summary>
    public static GptNeoXForCausalLM CreateRandom(GptNeoXConfig config, long seed, ScalarType dtype = ScalarType.Float32)
    {
        config.Validate();
        var generator = new Generator((ulong)seed);
        return new GptNeoXForCausalLM(config, ParameterSource.Random(config, generator, dtype));
    }

    /// <summary>
    /// Runs the model: HF's <c>GPTNeoXForCausalLM.forward</c>.
    /// </summary>
    /// <param name="inputIds">Token ids <c>[batch, seq]</c> (int64).</param>
    /// <param name="attentionMask">1 for real tokens, 0 for padding, <c>[batch, past + seq]</c>; <c>null</c> means all ones.</param>
    /// <param name="positionIds">Positions <c>[batch, seq]</c>; <c>null</c> means <c>past .. past + seq - 1</c>.</param>
    /// <param name="pastKeyValues">A cache from an earlier call; this call's keys and values are appended to it in place.</param>
    /// <param name="useCache">Return a cache (a new one when <paramref name="pastKeyValues"/> is <c>null</c>).</param>
    /// <param name="outputHiddenStates">Also return every layer's hidden state.</param>
    /// <param name="lastPositionOnly">Compute logits only for the last position (what generation needs; saves the head's cost).</param>
    /// <exception cref="ArgumentException">Shapes or ids that do not fit the model.</exception>
    public CausalLMOutput Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null,
        KeyValueCache? pastKeyValues = null, bool useCache = false, bool outputHiddenStates = false, bool lastPositionOnly = false)
    {
        using var grad = training ? null : torch.no_grad();
        using var scope = NewDisposeScope();
        var cache = pastKeyValues ?? (useCache ? new KeyValueCache(Config.NumHiddenLayers) : null);
        var (hidden, states) = gpt_neox.Forward(inputIds, attentionMask, positionIds, cache, outputHiddenStates);
        if (lastPositionOnly) hidden = hidden.narrow(1, hidden.size(1) - 1, 1);
        var logits = embed_out.call(hidden.to(HeadDevice)).to(ScalarType.Float32);
        var result = new CausalLMOutput(logits.MoveToOuterDisposeScope(), cache,
            states?.Select(s => s.to(ScalarType.Float32).MoveToOuterDisposeScope()).ToList());
        return result;
    }

    /// <summary>
    /// One decode step for rows that each have their own cache (continuous batching): the linear layers run once over
    /// all rows, attention runs row by row against each row's cache exactly as <see cref="Forward"/> would for that row
    /// alone. Every cache gets its row's token appended.
    /// </summary>
    /// <param name="inputIds">One new token per row, <c>[rows, 1]</c> (int64).</param>
    /// <param name="caches">Each row's cache (one sequence each), in row order.</param>
    /// <param name="attentionMasks">Each row's mask <c>[1, past + 1]</c>, or <c>null</c> for none (as <see cref="Forward"/>'s argument).</param>
    /// <param name="positionIds">Each row's position, <c>[rows, 1]</c>.</param>
    /// <returns>Float32 logits of the new tokens, <c>[rows, vocab]</c>.</returns>
    /// <exception cref="ArgumentException">Shapes that do not fit the model or each other.</exception>
    internal Tensor ForwardRows(Tensor inputIds, IReadOnlyList<KeyValueCache> caches, IReadOnlyList<Tensor?> attentionMasks, Tensor positionIds)
    {
        using var grad = training ? null : torch.no_grad();
        using var scope = NewDisposeScope();
        var hidden = gpt_neox.ForwardRows(inputIds, caches, attentionMasks, positionIds);
        return embed_out.call(hidden.to(HeadDevice)).to(ScalarType.Float32).select(1, 0).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Several rows' next tokens in one pass, each row with its own cache and any number of tokens (continuous batching's
    /// prefill of several prompts, or chunks of them): the linear layers run once over all the rows' tokens side by side,
    /// and each row's attention is what <see cref="Forward"/> computes for that row alone. Every cache gets its row's
    /// tokens appended.
    /// </summary>
    /// <param name="inputIds">Each row's new tokens, <c>[1, n]</c> (int64), in row order.</param>
    /// <param name="caches">Each row's cache (one sequence each, without padding), in row order.</param>
    /// <returns>Float32 logits of each row's last token, <c>[rows, vocab]</c>.</returns>
    /// <exception cref="ArgumentException">Shapes that do not fit the model or each other.</exception>
    internal Tensor ForwardPacked(IReadOnlyList<Tensor> inputIds, IReadOnlyList<KeyValueCache> caches)
    {
        using var grad = training ? null : torch.no_grad();
        using var scope = NewDisposeScope();
        var last = gpt_neox.ForwardPacked(inputIds, caches);
        return embed_out.call(last.to(HeadDevice)).to(ScalarType.Float32).select(0, 0).MoveToOuterDisposeScope();
    }

    /// <summary>Whether decode steps may run each layer as one managed pass where it applies (on by default); tests switch it off to compare.</summary>
    internal bool UsesDecodePass
    {
        get => gpt_neox.Layers.All(l => l.UsesDecodePass);
        set { foreach (var layer in gpt_neox.Layers) layer.UsesDecodePass = value; }
    }

    /// <summary>Each layer's decode pass, where its parts allow one (for tests).</summary>
    internal IReadOnlyList<DecodeLayerPass> DecodePasses => gpt_neox.Layers.Select(l => l.DecodePass).OfType<DecodeLayerPass>().ToArray();

    /// <summary>Builds the additive attention bias HF uses for a 2-D padding mask: 0 where attended, the dtype's minimum where masked.</summary>
    internal static Tensor PaddingBias(Tensor attentionMask) =>
        (1.0f - attentionMask.to(ScalarType.Float32)).mul_(float.MinValue).unsqueeze(1).unsqueeze(1);
}

/// <summary>The decoder stack: <c>gpt_neox</c> in HF's state dict.</summary>
internal sealed class GptNeoXModel : nn.Module
{
    private readonly Embedding embed_in;
    private readonly ModuleList<GptNeoXLayer> layers;
    private readonly LayerNorm final_layer_norm;
    private readonly RotaryEmbedding rotary;
    private readonly GptNeoXConfig config;

    public GptNeoXModel(GptNeoXConfig config, ParameterSource source) : base("gpt_neox")
    {
        this.config = config;
        embed_in = new Embedding(source.Scope("embed_in").Parameter("weight", config.VocabSize, config.HiddenSize));
        layers = new ModuleList<GptNeoXLayer>(
            Enumerable.Range(0, config.NumHiddenLayers).Select(i => new GptNeoXLayer(config, source.Scope($"layers.{i}"))).ToArray());
        final_layer_norm = new LayerNorm(source.Scope("final_layer_norm"), config.HiddenSize, config.LayerNormEps);
        rotary = new RotaryEmbedding(config);
        register_module("embed_in", embed_in);
        register_module("layers", layers);
        register_module("final_layer_norm", final_layer_norm);
    }

    public Embedding EmbedIn => embed_in;

    public IEnumerable<GptNeoXLayer> Layers => layers;

    public IEnumerable<KeyValuePair<string, string>> DeviceMap =>
        new[] { new KeyValuePair<string, string>("gpt_neox.embed_in", embed_in.Weight.device.ToString()) }
            .Concat(layers.Select((l, i) => new KeyValuePair<string, string>($"gpt_neox.layers.{i}", l.Device.ToString())))
            .Append(new("gpt_neox.final_layer_norm", final_layer_norm.Weight.device.ToString()));

    public (Tensor Hidden, List<Tensor>? States) Forward(Tensor inputIds, Tensor? attentionMask, Tensor? positionIds,
        KeyValueCache? cache, bool outputHiddenStates)
    {
        if (inputIds.dim() != 2 || inputIds.size(1) == 0)
            throw new ArgumentException($"input ids must be [batch, seq] with seq > 0; got [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        long batch = inputIds.size(0), length = inputIds.size(1);
        int past = cache?.Length ?? 0;
        if (cache is not null && past > 0 && cache.BatchSize != batch)
            throw new ArgumentException($"the cache holds {cache.BatchSize} rows but the input has {batch}.", nameof(inputIds));
        if (attentionMask is not null && (attentionMask.dim() != 2 || attentionMask.size(0) != batch || attentionMask.size(1) != past + length))
            throw new ArgumentException(
                $"attention mask must be [batch, past + seq] = [{batch}, {past + length}]; got [{string.Join(", ", attentionMask.shape)}].",
                nameof(attentionMask));
        if (positionIds is not null && (positionIds.dim() != 2 || positionIds.size(1) != length))
            throw new ArgumentException($"position ids must be [batch, seq]; got [{string.Join(", ", positionIds.shape)}].", nameof(positionIds));

        var device = embed_in.Weight.device;
        var ids = inputIds.to(device);
        var (min, max) = (ids.min().item<long>(), ids.max().item<long>());
        if (min < 0 || max >= config.VocabSize)
            throw new ArgumentException($"token id {(min < 0 ? min : max)} is outside the vocabulary [0, {config.VocabSize}).", nameof(inputIds));

        positionIds ??= arange(past, past + length, ScalarType.Int64, device).unsqueeze(0).expand(batch, length);
        var (cos, sin) = rotary.Tables(positionIds, past + length);
        var paddingBias = attentionMask is null ? null : GptNeoXForCausalLM.PaddingBias(attentionMask.to(device));

        var hidden = embed_in.call(ids);
        var states = outputHiddenStates ? new List<Tensor>() : null;
        for (int i = 0; i < layers.Count; i++)
        {
            states?.Add(hidden);
            // A layer's temporaries are freed when it returns, as Python frees them when their last reference drops;
            // keeping them to the end of the pass made a 512-token prompt on rinna-4b hold about 100 MB more per layer.
            using var layerScope = NewDisposeScope();
            hidden = layers[i].Forward(hidden, cos, sin, paddingBias, cache, i, past).MoveToOuterDisposeScope();
        }
        hidden = final_layer_norm.call(hidden.to(final_layer_norm.Weight.device));
        states?.Add(hidden);
        cache?.Advance((int)length, (int)batch);
        return (hidden, states);
    }

    /// <summary>One new token per row, each row with its own cache, mask and position (see <see cref="GptNeoXForCausalLM.ForwardRows"/>).</summary>
    public Tensor ForwardRows(Tensor inputIds, IReadOnlyList<KeyValueCache> caches, IReadOnlyList<Tensor?> attentionMasks, Tensor positionIds)
    {
        int rows = caches.Count;
        if (inputIds.dim() != 2 || inputIds.size(0) != rows || inputIds.size(1) != 1 || rows == 0)
            throw new ArgumentException($"input ids must be [rows, 1] with one row per cache ({rows}); got [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        if (attentionMasks.Count != rows || !positionIds.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"every row needs a mask (or null) and a position; got {attentionMasks.Count} masks and positions [{string.Join(", ", positionIds.shape)}].", nameof(attentionMasks));
        var device = embed_in.Weight.device;
        var ids = inputIds.to(device);
        var (min, max) = (ids.min().item<long>(), ids.max().item<long>());
        if (min < 0 || max >= config.VocabSize)
            throw new ArgumentException($"token id {(min < 0 ? min : max)} is outside the vocabulary [0, {config.VocabSize}).", nameof(inputIds));

        // Each row's rotary rows and padding bias are what a call for that row alone computes. A position's rotary row
        // depends on nothing else, so one lookup serves all rows, except with dynamic NTK scaling, whose base follows
        // each row's own length.
        var positions = positionIds.to(device);
        bool dynamic = config.RopeScaling is { Type: "dynamic" };
        var (sharedCos, sharedSin) = dynamic ? (null, null) : rotary.Tables(positions, caches.Max(c => c.Length) + 1);
        var attentionRows = new AttentionRow[rows];
        for (int row = 0; row < rows; row++)
        {
            var cache = caches[row];
            if (cache.Length > 0 && cache.BatchSize != 1)
                throw new ArgumentException($"row {row}: a cache of {cache.BatchSize} sequences; each row needs its own.", nameof(caches));
            var mask = attentionMasks[row];
            if (mask is not null && (mask.dim() != 2 || mask.size(0) != 1 || mask.size(1) != cache.Length + 1))
                throw new ArgumentException($"row {row}: the mask must be [1, past + 1] = [1, {cache.Length + 1}]; got [{string.Join(", ", mask.shape)}].", nameof(attentionMasks));
            var (cos, sin) = dynamic ? rotary.Tables(positions.narrow(0, row, 1), cache.Length + 1)
                : (sharedCos!.narrow(0, row, 1), sharedSin!.narrow(0, row, 1));
            attentionRows[row] = new AttentionRow(cos, sin, mask is null ? null : GptNeoXForCausalLM.PaddingBias(mask.to(device)), cache);
        }
        // All rows' rotary rows side by side, for attention backends that take every row in one call.
        var batch = new AttentionBatch(attentionRows,
            sharedCos ?? cat(attentionRows.Select(r => r.Cos).ToArray(), 0), sharedSin ?? cat(attentionRows.Select(r => r.Sin).ToArray(), 0));

        var hidden = embed_in.call(ids);
        for (int i = 0; i < layers.Count; i++)
        {
            using var layerScope = NewDisposeScope();
            hidden = layers[i].ForwardRows(hidden, batch, i).MoveToOuterDisposeScope();
        }
        hidden = final_layer_norm.call(hidden.to(final_layer_norm.Weight.device));
        foreach (var cache in caches) cache.Advance(1, 1);
        return hidden;
    }

    /// <summary>
    /// Rows of any number of new tokens, each with its own cache, side by side in one sequence <c>[1, Σn]</c> (see
    /// <see cref="GptNeoXForCausalLM.ForwardPacked"/>); returns the final hidden state of each row's last token, <c>[1, rows, hidden]</c>.
    /// </summary>
    public Tensor ForwardPacked(IReadOnlyList<Tensor> inputIds, IReadOnlyList<KeyValueCache> caches)
    {
        int rows = caches.Count;
        if (rows == 0 || inputIds.Count != rows)
            throw new ArgumentException($"every row needs its tokens and a cache; got {inputIds.Count} token rows and {rows} caches.", nameof(inputIds));
        var device = embed_in.Weight.device;
        var packedRows = new PackedRow[rows];
        var positions = new Tensor[rows];
        int offset = 0;
        for (int row = 0; row < rows; row++)
        {
            var (ids, cache) = (inputIds[row], caches[row]);
            if (ids.dim() != 2 || ids.size(0) != 1 || ids.size(1) == 0)
                throw new ArgumentException($"row {row}: tokens must be [1, n] with n > 0; got [{string.Join(", ", ids.shape)}].", nameof(inputIds));
            if (cache.Length > 0 && cache.BatchSize != 1)
                throw new ArgumentException($"row {row}: a cache of {cache.BatchSize} sequences; each row needs its own.", nameof(caches));
            int tokens = (int)ids.size(1);
            positions[row] = arange(cache.Length, cache.Length + tokens, ScalarType.Int64, device);
            packedRows[row] = new PackedRow(offset, tokens, null!, null!, cache);
            offset = checked(offset + tokens);
        }
        var packed = cat(inputIds.Select(ids => ids.to(device)).ToArray(), 1);
        var (min, max) = (packed.min().item<long>(), packed.max().item<long>());
        if (min < 0 || max >= config.VocabSize)
            throw new ArgumentException($"token id {(min < 0 ? min : max)} is outside the vocabulary [0, {config.VocabSize}).", nameof(inputIds));

        // As in ForwardRows: one table lookup serves every row, except with dynamic NTK scaling, whose base follows each row's length.
        bool dynamic = config.RopeScaling is { Type: "dynamic" };
        var (sharedCos, sharedSin) = dynamic ? (null, null)
            : rotary.Tables(cat(positions, 0).unsqueeze(0), caches.Max(c => c.Length) + packedRows.Max(r => r.Tokens));
        for (int row = 0; row < rows; row++)
        {
            var (cos, sin) = dynamic ? rotary.Tables(positions[row].unsqueeze(0), caches[row].Length + packedRows[row].Tokens)
                : (sharedCos!.narrow(2, packedRows[row].Offset, packedRows[row].Tokens), sharedSin!.narrow(2, packedRows[row].Offset, packedRows[row].Tokens));
            packedRows[row] = packedRows[row] with { Cos = cos, Sin = sin };
        }

        var hidden = embed_in.call(packed);
        for (int i = 0; i < layers.Count; i++)
        {
            using var layerScope = NewDisposeScope();
            hidden = layers[i].ForwardPacked(hidden, packedRows, i).MoveToOuterDisposeScope();
        }
        var lastTokens = tensor(packedRows.Select(r => (long)(r.Offset + r.Tokens - 1)).ToArray(), ScalarType.Int64, hidden.device);
        hidden = final_layer_norm.call(hidden.index_select(1, lastTokens).to(final_layer_norm.Weight.device));
        foreach (var row in packedRows) row.Cache.Advance(row.Tokens, 1);
        return hidden;
    }
}

/// <summary>One row of a packed pass: where its tokens sit in the pass, its rotary rows and its cache.</summary>
internal readonly record struct PackedRow(int Offset, int Tokens, Tensor Cos, Tensor Sin, KeyValueCache Cache);

/// <summary>One row of a step over rows with their own caches: its rotary rows, padding bias and cache.</summary>
internal readonly record struct AttentionRow(Tensor Cos, Tensor Sin, Tensor? PaddingBias, KeyValueCache Cache);

/// <summary>A step's rows, and all their rotary rows in one tensor each (<c>[rows, ..., rotary_dims]</c>).</summary>
internal sealed record AttentionBatch(IReadOnlyList<AttentionRow> Rows, Tensor Cos, Tensor Sin);

/// <summary>One transformer block: <c>gpt_neox.layers.N</c>.</summary>
internal sealed class GptNeoXLayer : nn.Module
{
    private readonly LayerNorm input_layernorm;
    private readonly LayerNorm post_attention_layernorm;
    private readonly GptNeoXAttention attention;
    private readonly GptNeoXMlp mlp;
    private readonly bool useParallelResidual;
    private readonly DecodeLayerPass? decodePass;

    public GptNeoXLayer(GptNeoXConfig config, ParameterSource source) : base("layer")
    {
        useParallelResidual = config.UseParallelResidual;
        input_layernorm = new LayerNorm(source.Scope("input_layernorm"), config.HiddenSize, config.LayerNormEps);
        post_attention_layernorm = new LayerNorm(source.Scope("post_attention_layernorm"), config.HiddenSize, config.LayerNormEps);
        attention = new GptNeoXAttention(config, source.Scope("attention"));
        mlp = new GptNeoXMlp(config, source.Scope("mlp"));
        register_module("input_layernorm", input_layernorm);
        register_module("post_attention_layernorm", post_attention_layernorm);
        register_module("attention", attention);
        register_module("mlp", mlp);
        decodePass = DecodeLayerPass.For(config, input_layernorm, post_attention_layernorm, attention.QueryKeyValue, attention.Dense,
            mlp.Up, mlp.Down, mlp.Activation);
    }

    public Device Device => input_layernorm.Weight.device;

    /// <summary>Whether a decode step may run as one managed pass (<see cref="DecodeLayerPass"/>) where it applies; tests switch it off.</summary>
    public bool UsesDecodePass { get; set; } = true;

    /// <summary>The layer's decode pass, or <c>null</c> where its parts rule one out.</summary>
    public DecodeLayerPass? DecodePass => decodePass;

    public Tensor Forward(Tensor hidden, Tensor cos, Tensor sin, Tensor? paddingBias, KeyValueCache? cache, int index, int past)
    {
        // One sequence's next token on the CPU: the whole layer in one pass where it qualifies; the math below is the reference.
        if (paddingBias is null && cache is not null && UsesDecodePass && decodePass is not null
            && decodePass.TryForward(hidden, cos, sin, cache, index, past, out var decoded))
            return decoded;
        var device = Device;
        return Forward(hidden, (x, residual) =>
            attention.Forward(x, cos.to(device), sin.to(device), paddingBias?.to(device), cache, index, past, residual));
    }

    /// <summary>The block for rows with their own caches: the same math, attention row by row.</summary>
    public Tensor ForwardRows(Tensor hidden, AttentionBatch rows, int index)
    {
        // A lone row (one request being served) is a decode step of one sequence.
        if (rows.Rows is [{ PaddingBias: null } row] && UsesDecodePass && decodePass is not null
            && decodePass.TryForward(hidden, row.Cos, row.Sin, row.Cache, index, row.Cache.Length, out var decoded))
            return decoded;
        return Forward(hidden, (x, residual) => attention.ForwardRows(x, rows, index, residual));
    }

    /// <summary>The block for rows packed side by side: the same math, attention row by row over each row's own tokens.</summary>
    public Tensor ForwardPacked(Tensor hidden, IReadOnlyList<PackedRow> rows, int index) =>
        Forward(hidden, (x, residual) => attention.ForwardPacked(x, rows, index, residual));

    /// <param name="hidden">The block's input.</param>
    /// <param name="attend">Attention over its argument, plus the residual when given.</param>
    private Tensor Forward(Tensor hidden, Func<Tensor, Tensor?, Tensor> attend)
    {
        hidden = hidden.to(Device);
        if (useParallelResidual)
        {
            // x = x + attn(ln1(x)) + mlp(ln2(x))
            var attentionOutput = attend(input_layernorm.call(hidden), null);
            return mlp.Forward(post_attention_layernorm.call(hidden), residual: attentionOutput).add_(hidden);
        }
        // x = x + attn(ln1(x)); x = x + mlp(ln2(x))
        var afterAttention = attend(input_layernorm.call(hidden), hidden);
        return mlp.Forward(post_attention_layernorm.call(afterAttention), residual: afterAttention);
    }
}

/// <summary>Multi-head self-attention with a fused, per-head interleaved query/key/value projection.</summary>
internal sealed class GptNeoXAttention : nn.Module
{
    private readonly LinearLayer query_key_value;
    private readonly LinearLayer dense;
    private readonly int heads, headSize, rotaryNdims;
    private readonly double normFactor;

    public GptNeoXAttention(GptNeoXConfig config, ParameterSource source) : base("attention")
    {
        heads = config.NumAttentionHeads;
        headSize = config.HeadSize;
        rotaryNdims = config.RotaryNdims;
        normFactor = 1.0 / Math.Sqrt(headSize);
        long h = config.HiddenSize;
        query_key_value = source.CreateLinear("query_key_value", source.Scope("query_key_value").Parameter("weight", 3 * h, h),
            config.AttentionBias ? source.Scope("query_key_value").Parameter("bias", 3 * h) : null);
        dense = source.CreateLinear("dense", source.Scope("dense").Parameter("weight", h, h),
            config.AttentionBias ? source.Scope("dense").Parameter("bias", h) : null);
        register_module("query_key_value", query_key_value);
        register_module("dense", dense);
    }

    public LinearLayer QueryKeyValue => query_key_value;

    public LinearLayer Dense => dense;

    /// <summary>Attention over <paramref name="hidden"/>, plus <paramref name="residual"/> when given.</summary>
    public Tensor Forward(Tensor hidden, Tensor cos, Tensor sin, Tensor? paddingBias, KeyValueCache? cache, int layerIndex, int past,
        Tensor? residual) =>
        dense.Forward(Attend(query_key_value.call(hidden), cos, sin, paddingBias, cache, layerIndex, past), Activation.Identity, residual);

    /// <summary>
    /// Attention for rows with their own caches: the projections run once over all rows (one product, not one per
    /// row), and each row attends to its own cache as it would alone: all rows in one backend call where a backend
    /// takes them, else row by row.
    /// </summary>
    public Tensor ForwardRows(Tensor hidden, AttentionBatch batch, int layerIndex, Tensor? residual)
    {
        var projected = query_key_value.call(hidden);
        var device = projected.device;
        var rows = batch.Rows;
        if (rows.All(r => r.PaddingBias is null) && AttentionBackends.TryAttendRows(new AttentionRowsCall(projected, batch.Cos.to(device),
                batch.Sin.to(device), rows.Select(r => r.Cache).ToArray(), layerIndex, headSize, rotaryNdims), out var together))
            return dense.Forward(together, Activation.Identity, residual);
        var contexts = rows.Select((row, i) => Attend(projected.narrow(0, i, 1), row.Cos.to(device), row.Sin.to(device),
            row.PaddingBias?.to(device), row.Cache, layerIndex, row.Cache.Length)).ToArray();
        return dense.Forward(cat(contexts, 0), Activation.Identity, residual);
    }

    /// <summary>
    /// Attention for rows packed side by side in <paramref name="hidden"/> <c>[1, Σn, hidden]</c>: the projections run once
    /// over all rows' tokens, and each row attends over its own cache and tokens as a call for it alone would.
    /// </summary>
    public Tensor ForwardPacked(Tensor hidden, IReadOnlyList<PackedRow> rows, int layerIndex, Tensor? residual)
    {
        var projected = query_key_value.call(hidden);
        var device = projected.device;
        var contexts = rows.Select(row => Attend(projected.narrow(1, row.Offset, row.Tokens), row.Cos.to(device), row.Sin.to(device),
            null, row.Cache, layerIndex, row.Cache.Length)).ToArray();
        return dense.Forward(cat(contexts, 1), Activation.Identity, residual);
    }

    /// <summary>Rotary embedding, cache write and attention from the fused projection <c>[batch, seq, 3·hidden]</c> to the context <c>[batch, seq, hidden]</c>.</summary>
    private Tensor Attend(Tensor projected, Tensor cos, Tensor sin, Tensor? paddingBias, KeyValueCache? cache, int layerIndex, int past)
    {
        long batch = projected.size(0), length = projected.size(1);
        // A backend with a kernel for this device and phase may take the whole call; the math below is the reference.
        if (AttentionBackends.TryAttend(new AttentionCall(projected, cos, sin, paddingBias, cache, layerIndex, past, headSize, rotaryNdims), out var fused))
            return fused;

        // [batch, seq, 3*hidden] → [batch, heads, seq, 3*head_size]; each head holds its own q, k, v side by side.
        var qkv = projected.view(batch, length, heads, 3 * headSize).permute(0, 2, 1, 3);
        var value = qkv.narrow(-1, 2 * headSize, headSize).contiguous();

        // HF keeps the rotary tables in float32, so q and k leave RoPE (and enter the cache) in float32 whatever the weights' dtype.
        // q and k sit side by side in each head, so one rotation over [..., 2, head_size] does both: half the calls, which
        // is most of RoPE's cost for one token.
        var queryKey = ApplyRotary(qkv.narrow(-1, 0, 2 * headSize).view(batch, heads, length, 2, headSize),
            cos.unsqueeze(-2), sin.unsqueeze(-2));
        var query = queryKey.select(3, 0);
        var key = queryKey.select(3, 1);

        if (cache is not null) (key, value) = cache.Write(layerIndex, key, value, past);

        // [batch, heads, seq, head_size] → [batch, seq, hidden]
        return Attend(query, key, value, paddingBias, past).permute(0, 2, 1, 3).reshape(batch, length, heads * headSize);
    }

    private Tensor ApplyRotary(Tensor x, Tensor cos, Tensor sin)
    {
        var x32 = x.to(ScalarType.Float32);
        if (rotaryNdims == 0) return x32.contiguous();
        var rotated = x32.narrow(-1, 0, rotaryNdims);
        int half = rotaryNdims / 2;
        // rotate_half([x1, x2]) = [-x2, x1] over the two halves (not GPT-J's interleaved pairs)
        var rotatedHalf = cat([rotated.narrow(-1, half, half).neg(), rotated.narrow(-1, 0, half)], -1);
        var embedded = rotated.mul(cos).add_(rotatedHalf.mul_(sin));
        return rotaryNdims == headSize ? embedded : cat([embedded, x32.narrow(-1, rotaryNdims, headSize - rotaryNdims)], -1);
    }

    private Tensor Attend(Tensor query, Tensor key, Tensor value, Tensor? paddingBias, int past)
    {
        long queries = query.size(2), keys = key.size(2);
        if (paddingBias is null && past == 0 && queries > 1)
        {
            // Causal prefill without padding: the fused kernel is several times faster than the explicit form and equal within float32 noise.
            var output = F.scaled_dot_product_attention(query, key, value.to(ScalarType.Float32), is_casual: true);
            return output.to(value.dtype);
        }

        if (queries == 1)
        {
            // One new token: one fused float32 call instead of the five of the explicit form below, and equal to it within float32 noise.
            var output = F.scaled_dot_product_attention(query, key, value.to(ScalarType.Float32), paddingBias);
            return output.to(value.dtype);
        }

        // Several new tokens after a cache or with padding: query i sits at absolute position past + i and may see keys 0 .. past + i.
        var scores = matmul(query, key.transpose(-1, -2)).mul_(normFactor);
        var allowed = ones(queries, keys, ScalarType.Bool, scores.device).tril(past);
        scores = scores.masked_fill_(allowed.logical_not(), float.MinValue);
        if (paddingBias is not null) scores = scores.add_(paddingBias);
        var probabilities = scores.softmax(-1).to(value.dtype);
        return matmul(probabilities, value);
    }
}

/// <summary>The feed-forward block: <c>dense_4h_to_h(act(dense_h_to_4h(x)))</c>.</summary>
internal sealed class GptNeoXMlp : nn.Module
{
    private readonly LinearLayer dense_h_to_4h;
    private readonly LinearLayer dense_4h_to_h;
    private readonly Activation activation;

    public GptNeoXMlp(GptNeoXConfig config, ParameterSource source) : base("mlp")
    {
        activation = Activations.FromHiddenAct(config.HiddenAct);
        dense_h_to_4h = source.CreateLinear("dense_h_to_4h", source.Scope("dense_h_to_4h").Parameter("weight", config.IntermediateSize, config.HiddenSize),
            source.Scope("dense_h_to_4h").Parameter("bias", config.IntermediateSize));
        dense_4h_to_h = source.CreateLinear("dense_4h_to_h", source.Scope("dense_4h_to_h").Parameter("weight", config.HiddenSize, config.IntermediateSize),
            source.Scope("dense_4h_to_h").Parameter("bias", config.HiddenSize));
        register_module("dense_h_to_4h", dense_h_to_4h);
        register_module("dense_4h_to_h", dense_4h_to_h);
    }

    public LinearLayer Up => dense_h_to_4h;

    public LinearLayer Down => dense_4h_to_h;

    public Activation Activation => activation;

    /// <summary>The block's output for <paramref name="x"/>, plus <paramref name="residual"/> when given.</summary>
    public Tensor Forward(Tensor x, Tensor? residual) =>
        dense_4h_to_h.Forward(dense_h_to_4h.Forward(x, activation), Activation.Identity, residual);
}

/// <summary>Rotary position tables (HF's GPTNeoXRotaryEmbedding and its linear / dynamic-NTK scaling variants).</summary>
internal sealed class RotaryEmbedding
{
    private readonly GptNeoXConfig config;
    private readonly int dim;
    private readonly object gate = new();
    private Tensor? cosTable, sinTable;
    private double tableBase;

    public RotaryEmbedding(GptNeoXConfig config)
    {
        this.config = config;
        dim = config.RotaryNdims;
    }

    /// <summary>cos and sin rows for each position id, <c>[batch, 1, seq, rotary_ndims]</c>, float32.</summary>
    public (Tensor Cos, Tensor Sin) Tables(Tensor positionIds, long totalLength)
    {
        long needed = Math.Max(totalLength, positionIds.max().item<long>() + 1);
        // Rows are selected under the (reentrant) lock too: a thread needing other tables disposes these ones.
        lock (gate)
        {
            var (cos, sin) = EnsureTables(needed);
            var flat = positionIds.to(cos.device).reshape(-1);
            var shape = new long[] { positionIds.size(0), 1, positionIds.size(1), dim };
            return (cos.index_select(0, flat).view(shape), sin.index_select(0, flat).view(shape));
        }
    }

    private (Tensor, Tensor) EnsureTables(long neededLength)
    {
        lock (gate)
        {
            double rotaryBase = config.RotaryEmbBase;
            // Sized by the positions actually used (doubling as they grow), not by max_position_embeddings: a config may
            // claim billions of positions, and every row depends only on its own position, so the values are the same.
            long length = Math.Max(256, (long)BitOperations.RoundUpToPowerOf2((ulong)neededLength));
            if (config.RopeScaling is { Type: "dynamic" } dynamic && neededLength > config.MaxPositionEmbeddings)
                // NTK-aware growth of the base, recomputed for the current total length as HF does.
                rotaryBase *= Math.Pow(dynamic.Factor * neededLength / config.MaxPositionEmbeddings - (dynamic.Factor - 1), dim / (dim - 2.0));
            if (cosTable is not null && cosTable.size(0) >= length && tableBase == rotaryBase) return (cosTable, sinTable!);

            cosTable?.Dispose();
            sinTable?.Dispose();
            using var scope = NewDisposeScope();
            var exponent = arange(0, dim, 2, ScalarType.Int64).to(ScalarType.Float32).div_(dim);
            var invFreq = pow(tensor((float)rotaryBase), exponent).reciprocal_();
            var t = arange(length, ScalarType.Int64).to(ScalarType.Float32);
            if (config.RopeScaling is { Type: "linear" } linear) t = t.div_(linear.Factor);
            var freqs = outer(t, invFreq);
            var emb = cat([freqs, freqs], -1);
            cosTable = emb.cos().DetachFromDisposeScope();
            sinTable = emb.sin().DetachFromDisposeScope();
            tableBase = rotaryBase;
            return (cosTable, sinTable);
        }
    }
}
