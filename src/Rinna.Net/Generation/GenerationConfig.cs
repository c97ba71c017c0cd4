using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Rinna.Net.Generation;

/// <summary>
/// How <c>Generate</c> picks tokens and when it stops: Hugging Face's <c>GenerationConfig</c> with the same fields and
/// defaults, in .NET casing. Immutable; derive a per-call variant with a <c>with</c> expression
/// (<c>config with { Temperature = 0.7 }</c>) or <see cref="MergeFrom"/>; lists are copied when assigned, so copies
/// never share mutable state and one instance can serve concurrent generations.
/// </summary>
/// <remarks>
/// Sampling-only fields (<see cref="Temperature"/>, <see cref="TopK"/>, <see cref="TopP"/>, <see cref="MinP"/>,
/// <see cref="TypicalP"/>, <see cref="EpsilonCutoff"/>, <see cref="EtaCutoff"/>) are ignored unless
/// <see cref="DoSample"/> is <c>true</c>, as in Hugging Face. Note that <see cref="TopK"/> defaults to 50, so sampling
/// with default settings keeps only the 50 most likely tokens.
/// </remarks>
public sealed record GenerationConfig
{
    // Lists are copied on assignment, so a configuration never changes behind its users' backs and `with` copies are independent.
    private readonly IReadOnlyList<IReadOnlyList<int>>? badWordsIds;
    private readonly IReadOnlyList<int>? eosTokenId;
    private readonly IReadOnlyList<string>? stopStrings;

    /// <summary>Hugging Face's <c>max_length</c> default: prompt plus new tokens.</summary>
    public const int DefaultMaxLength = 20;

    /// <summary><c>do_sample</c>: sample from the distribution (<c>true</c>) or take the most likely token (<c>false</c>).</summary>
    public bool DoSample { get; init; }

    /// <summary><c>max_length</c>: the total length (prompt plus new tokens) at which generation stops; ignored when <see cref="MaxNewTokens"/> is set.</summary>
    public int MaxLength { get; init; } = DefaultMaxLength;

    /// <summary><c>max_new_tokens</c>: how many tokens to generate at most, not counting the prompt; takes precedence over <see cref="MaxLength"/>.</summary>
    public int? MaxNewTokens { get; init; }

    /// <summary><c>min_length</c>: end-of-sequence tokens are forbidden while the sequence (prompt included) is shorter than this.</summary>
    public int MinLength { get; init; }

    /// <summary><c>min_new_tokens</c>: end-of-sequence tokens are forbidden until this many tokens have been generated.</summary>
    public int? MinNewTokens { get; init; }

    /// <summary><c>temperature</c>: logits are divided by it before sampling; must be positive when sampling.</summary>
    public double Temperature { get; init; } = 1.0;

    /// <summary><c>top_k</c>: keep only the k most likely tokens when sampling; 0 disables the filter.</summary>
    public int TopK { get; init; } = 50;

    /// <summary><c>top_p</c>: nucleus sampling, keep the most likely tokens whose probabilities add up to at least this; 1 disables it.</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary><c>min_p</c>: drop tokens less likely than this fraction of the most likely token's probability; <c>null</c> disables it.</summary>
    public double? MinP { get; init; }

    /// <summary><c>typical_p</c>: locally typical sampling mass; 1 disables it.</summary>
    public double TypicalP { get; init; } = 1.0;

    /// <summary><c>epsilon_cutoff</c>: drop tokens whose probability is below it; 0 disables it.</summary>
    public double EpsilonCutoff { get; init; }

    /// <summary><c>eta_cutoff</c>: eta sampling (entropy-dependent cutoff); 0 disables it.</summary>
    public double EtaCutoff { get; init; }

    /// <summary><c>repetition_penalty</c>: logits of every token already in the sequence (prompt included) are divided by it (multiplied when negative); 1 disables it.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;

    /// <summary><c>no_repeat_ngram_size</c>: an n-gram of this size may occur only once in the sequence (prompt included); 0 disables it.</summary>
    public int NoRepeatNgramSize { get; init; }

    /// <summary><c>bad_words_ids</c>: token sequences that must never be generated.</summary>
    public IReadOnlyList<IReadOnlyList<int>>? BadWordsIds
    {
        get => badWordsIds;
        init => badWordsIds = value?.Select(ids => (IReadOnlyList<int>)ids?.ToArray()!).ToArray();
    }

    /// <summary><c>renormalize_logits</c>: apply log-softmax after the processors (and again after the warpers when sampling).</summary>
    public bool RenormalizeLogits { get; init; }

    /// <summary><c>eos_token_id</c>: one or several end-of-sequence ids; generating any of them finishes the sequence.</summary>
    public IReadOnlyList<int>? EosTokenId { get => eosTokenId; init => eosTokenId = value?.ToArray(); }

    /// <summary><c>pad_token_id</c>: appended to rows of a batch that have finished; when <c>null</c>, the first <see cref="EosTokenId"/> is used, as in Hugging Face.</summary>
    public int? PadTokenId { get; init; }

    /// <summary><c>bos_token_id</c>.</summary>
    public int? BosTokenId { get; init; }

    /// <summary><c>stop_strings</c>: texts that finish a sequence as soon as the decoded output contains one, even when it spans several tokens.</summary>
    public IReadOnlyList<string>? StopStrings { get => stopStrings; init => stopStrings = value?.ToArray(); }

    /// <summary>Seed of the sampling random generator; the same seed, prompt and settings give the same tokens. <c>null</c> draws a random seed.</summary>
    public long? Seed { get; init; }

    /// <summary><c>use_cache</c>: reuse the attention key/value cache between steps.</summary>
    public bool UseCache { get; init; } = true;

    /// <summary>
    /// <c>num_beams</c>: beam search with this many beams when above 1 (Hugging Face's <c>BeamSearchScorer</c>); 1 means
    /// greedy decoding or sampling. Beam search ranks hypotheses by their summed log-probabilities (after the logits
    /// processors) divided by <c>generated_length ^ </c><see cref="LengthPenalty"/>.
    /// </summary>
    /// <remarks>
    /// Beam search is deterministic: it cannot be combined with <see cref="DoSample"/> (Hugging Face's beam sampling),
    /// <see cref="StopStrings"/> or <see cref="PromptLookupNumTokens"/>. Diverse beam search (<c>num_beam_groups</c>,
    /// <c>diversity_penalty</c>) and constrained beam search (<c>constraints</c>, <c>force_words_ids</c>) are not
    /// implemented; a <c>generation_config.json</c> asking for them is rejected.
    /// </remarks>
    public int NumBeams { get; init; } = 1;

    /// <summary>
    /// <c>num_return_sequences</c>: how many sequences to return per prompt: the best hypotheses of beam search (at most
    /// <see cref="NumBeams"/>), or independent samples when <see cref="DoSample"/> is set. Output rows of one prompt
    /// are consecutive.
    /// </summary>
    public int NumReturnSequences { get; init; } = 1;

    /// <summary>
    /// <c>length_penalty</c>: the exponent of the generated length that beam hypotheses' summed log-probabilities are
    /// divided by. Above 0 favours longer sequences (scores are negative), below 0 shorter ones.
    /// </summary>
    public double LengthPenalty { get; init; } = 1.0;

    /// <summary><c>early_stopping</c>: when beam search stops (see <see cref="Generation.EarlyStopping"/>).</summary>
    public EarlyStopping EarlyStopping { get; init; } = EarlyStopping.False;

    /// <summary>
    /// <c>prompt_lookup_num_tokens</c>: prompt lookup decoding (Hugging Face's <c>PromptLookupCandidateGenerator</c>):
    /// up to this many tokens that followed the last 2 (else 1) tokens elsewhere in the sequence are proposed and
    /// verified in one forward pass. Greedy output is token for token that of plain greedy decoding; with
    /// <see cref="DoSample"/> each position is sampled from the model and proposals are kept while they equal the draw.
    /// Proposals pause (4 steps, doubling to 64) while they keep being rejected, so text that does not repeat its
    /// context runs at the speed of plain decoding. Needs a batch of one prompt; <c>null</c> disables it.
    /// </summary>
    public int? PromptLookupNumTokens { get; init; }

    /// <summary>
    /// The most bytes one generation's KV cache may hold, over all layers and rows (keys in float32, values in the
    /// model's dtype); <c>null</c> sets no limit beyond the model's context. Not a Hugging Face setting: a server sets it
    /// so that no request can take more memory than its share. A request whose prompt and new tokens would need more
    /// generates as many tokens as fit, with a logged warning; a prompt that alone needs more is refused.
    /// </summary>
    public long? MaxCacheBytes { get; init; }

    /// <summary>
    /// <c>num_assistant_tokens</c>: how many tokens an assistant model proposes per round at first (assisted decoding,
    /// <c>Generate(..., assistantModel: ...)</c>); <see cref="NumAssistantTokensSchedule"/> then adjusts it.
    /// </summary>
    public int NumAssistantTokens { get; init; } = 5;

    /// <summary><c>num_assistant_tokens_schedule</c>: how the number of proposals changes from round to round.</summary>
    public AssistantTokensSchedule NumAssistantTokensSchedule { get; init; } = AssistantTokensSchedule.Heuristic;

    /// <summary>The number of new tokens the generation may produce after a prompt of <paramref name="promptLength"/> tokens.</summary>
    /// <remarks>
    /// <see cref="MaxNewTokens"/> when set, else <see cref="MaxLength"/> minus the prompt. Like Hugging Face, at least one
    /// token is generated even when the prompt already reaches <see cref="MaxLength"/>.
    /// </remarks>
    public int ResolveMaxNewTokens(int promptLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(promptLength);
        return MaxNewTokens ?? Math.Max(1, MaxLength - promptLength);
    }

    /// <summary>The id written into finished rows: <see cref="PadTokenId"/>, else the first <see cref="EosTokenId"/>, else <c>null</c>.</summary>
    public int? ResolvePadTokenId() => PadTokenId ?? (EosTokenId is { Count: > 0 } eos ? eos[0] : null);

    /// <summary>
    /// A copy of this configuration where every field that <paramref name="overrides"/> sets to something other than
    /// the default of <c>new GenerationConfig()</c> replaces this one's: how Hugging Face merges <c>generate(**kwargs)</c>
    /// into a model's <c>generation_config.json</c>.
    /// </summary>
    /// <remarks>Because defaults are not distinguishable from "unset", an override cannot reset a field to its default; use a <c>with</c> expression for that.</remarks>
    public GenerationConfig MergeFrom(GenerationConfig overrides)
    {
        ArgumentNullException.ThrowIfNull(overrides);
        var d = new GenerationConfig();
        T Pick<T>(T mine, T theirs, T defaultValue) => EqualityComparer<T>.Default.Equals(theirs, defaultValue) ? mine : theirs;
        return new GenerationConfig
        {
            DoSample = Pick(DoSample, overrides.DoSample, d.DoSample),
            MaxLength = Pick(MaxLength, overrides.MaxLength, d.MaxLength),
            MaxNewTokens = Pick(MaxNewTokens, overrides.MaxNewTokens, d.MaxNewTokens),
            MinLength = Pick(MinLength, overrides.MinLength, d.MinLength),
            MinNewTokens = Pick(MinNewTokens, overrides.MinNewTokens, d.MinNewTokens),
            Temperature = Pick(Temperature, overrides.Temperature, d.Temperature),
            TopK = Pick(TopK, overrides.TopK, d.TopK),
            TopP = Pick(TopP, overrides.TopP, d.TopP),
            MinP = Pick(MinP, overrides.MinP, d.MinP),
            TypicalP = Pick(TypicalP, overrides.TypicalP, d.TypicalP),
            EpsilonCutoff = Pick(EpsilonCutoff, overrides.EpsilonCutoff, d.EpsilonCutoff),
            EtaCutoff = Pick(EtaCutoff, overrides.EtaCutoff, d.EtaCutoff),
            RepetitionPenalty = Pick(RepetitionPenalty, overrides.RepetitionPenalty, d.RepetitionPenalty),
            NoRepeatNgramSize = Pick(NoRepeatNgramSize, overrides.NoRepeatNgramSize, d.NoRepeatNgramSize),
            BadWordsIds = overrides.BadWordsIds ?? BadWordsIds,
            RenormalizeLogits = Pick(RenormalizeLogits, overrides.RenormalizeLogits, d.RenormalizeLogits),
            EosTokenId = overrides.EosTokenId ?? EosTokenId,
            PadTokenId = overrides.PadTokenId ?? PadTokenId,
            BosTokenId = overrides.BosTokenId ?? BosTokenId,
            StopStrings = overrides.StopStrings ?? StopStrings,
            Seed = overrides.Seed ?? Seed,
            UseCache = Pick(UseCache, overrides.UseCache, d.UseCache),
            NumBeams = Pick(NumBeams, overrides.NumBeams, d.NumBeams),
            NumReturnSequences = Pick(NumReturnSequences, overrides.NumReturnSequences, d.NumReturnSequences),
            LengthPenalty = Pick(LengthPenalty, overrides.LengthPenalty, d.LengthPenalty),
            EarlyStopping = Pick(EarlyStopping, overrides.EarlyStopping, d.EarlyStopping),
            PromptLookupNumTokens = overrides.PromptLookupNumTokens ?? PromptLookupNumTokens,
            MaxCacheBytes = overrides.MaxCacheBytes ?? MaxCacheBytes,
            NumAssistantTokens = Pick(NumAssistantTokens, overrides.NumAssistantTokens, d.NumAssistantTokens),
            NumAssistantTokensSchedule = Pick(NumAssistantTokensSchedule, overrides.NumAssistantTokensSchedule, d.NumAssistantTokensSchedule),
        };
    }

    /// <summary>
    /// Rejects contradictory or out-of-range settings the way Hugging Face's <c>GenerationConfig.validate</c> and the
    /// logits processors' constructors do (where Hugging Face raises <c>ValueError</c>, this throws
    /// <see cref="ArgumentException"/>).
    /// </summary>
    /// <remarks>
    /// Sampling-only fields are checked only when <see cref="DoSample"/> is set (Hugging Face merely warns about them in
    /// greedy mode, so <c>Temperature = 0</c> with greedy decoding is accepted). <see cref="TopP"/> = 0 is valid, as in
    /// Hugging Face: it keeps only the most likely token. Values Hugging Face would silently skip because they are out
    /// of range (a negative <c>no_repeat_ngram_size</c>, <c>top_p</c> above 1, cutoffs of 1 or more) are rejected here.
    /// </remarks>
    /// <exception cref="ArgumentException">A field is invalid; <see cref="ArgumentException.ParamName"/> names it.</exception>
    public void Validate()
    {
        static void Fail(string name, object? value, string why) =>
            throw new ArgumentException($"{name} = {FormatValue(value)} is invalid: {why}", name);

        if (MaxNewTokens is <= 0) Fail(nameof(MaxNewTokens), MaxNewTokens, "it must be greater than 0.");
        if (MaxLength <= 0) Fail(nameof(MaxLength), MaxLength, "it must be greater than 0.");
        if (MinLength < 0) Fail(nameof(MinLength), MinLength, "it must not be negative.");
        if (MinNewTokens is < 0) Fail(nameof(MinNewTokens), MinNewTokens, "it must not be negative.");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty))
            Fail(nameof(RepetitionPenalty), RepetitionPenalty, "it must be a strictly positive number (1 disables it).");
        if (NoRepeatNgramSize < 0) Fail(nameof(NoRepeatNgramSize), NoRepeatNgramSize, "it must not be negative (0 disables it).");
        if (EosTokenId is { } eos)
        {
            if (eos.Count == 0) Fail(nameof(EosTokenId), "[]", "give at least one id or leave it null.");
            foreach (var id in eos)
                if (id < 0) Fail(nameof(EosTokenId), id, "token ids must not be negative.");
        }
        if (PadTokenId is < 0) Fail(nameof(PadTokenId), PadTokenId, "token ids must not be negative.");
        if (BosTokenId is < 0) Fail(nameof(BosTokenId), BosTokenId, "token ids must not be negative.");
        if (BadWordsIds is { } badWords)
        {
            if (badWords.Count == 0) Fail(nameof(BadWordsIds), "[]", "give at least one token sequence or leave it null.");
            foreach (var sequence in badWords)
            {
                if (sequence is null || sequence.Count == 0)
                    Fail(nameof(BadWordsIds), "[]", "every entry must be a non-empty list of token ids.");
                foreach (var id in sequence!)
                    if (id < 0) Fail(nameof(BadWordsIds), id, "token ids must not be negative.");
            }
        }
        if (StopStrings is { } stops)
        {
            if (stops.Count == 0) Fail(nameof(StopStrings), "[]", "give at least one string or leave it null.");
            foreach (var stop in stops)
                if (string.IsNullOrEmpty(stop)) Fail(nameof(StopStrings), stop, "stop strings must not be empty.");
        }

        if (NumBeams < 1) Fail(nameof(NumBeams), NumBeams, "it must be at least 1 (1 disables beam search).");
        if (NumReturnSequences < 1) Fail(nameof(NumReturnSequences), NumReturnSequences, "it must be at least 1.");
        if (!double.IsFinite(LengthPenalty)) Fail(nameof(LengthPenalty), LengthPenalty, "it must be a finite number.");
        if (!Enum.IsDefined(EarlyStopping)) Fail(nameof(EarlyStopping), EarlyStopping, "it must be False, True or Never.");
        if (NumAssistantTokens < 1) Fail(nameof(NumAssistantTokens), NumAssistantTokens, "it must be at least 1.");
        if (!Enum.IsDefined(NumAssistantTokensSchedule))
            Fail(nameof(NumAssistantTokensSchedule), NumAssistantTokensSchedule, "it must be Heuristic, HeuristicTransient or Constant.");
        if (PromptLookupNumTokens is < 1) Fail(nameof(PromptLookupNumTokens), PromptLookupNumTokens, "it must be at least 1 (null disables it).");
        if (MaxCacheBytes is < 1) Fail(nameof(MaxCacheBytes), MaxCacheBytes, "it must be positive (null sets no limit).");
        if (NumBeams > 1)
        {
            if (NumReturnSequences > NumBeams)
                Fail(nameof(NumReturnSequences), NumReturnSequences, $"beam search returns at most NumBeams ({NumBeams}) sequences per prompt.");
            if (DoSample) Fail(nameof(NumBeams), NumBeams, "beam sampling (DoSample with NumBeams > 1) is not supported; use beam search or sampling.");
            if (StopStrings is not null) Fail(nameof(StopStrings), "[...]", "stop strings are not supported with beam search.");
            if (PromptLookupNumTokens is not null)
                Fail(nameof(PromptLookupNumTokens), PromptLookupNumTokens, "prompt lookup decoding works with greedy decoding or sampling, not beam search.");
        }
        else if (NumReturnSequences > 1 && !DoSample)
            Fail(nameof(NumReturnSequences), NumReturnSequences, "greedy decoding returns one sequence per prompt; set NumBeams or DoSample.");

        if (!DoSample) return;
        if (!(Temperature > 0) || double.IsInfinity(Temperature))
            Fail(nameof(Temperature), Temperature,
                "it has to be a strictly positive number when sampling, otherwise the next-token scores are invalid."
                + (Temperature == 0 ? " For greedy decoding set DoSample = false." : ""));
        if (TopK < 0) Fail(nameof(TopK), TopK, "it must be a positive number of tokens (0 disables it).");
        if (!(TopP >= 0 && TopP <= 1)) Fail(nameof(TopP), TopP, "it must be between 0 and 1 (1 disables it).");
        if (MinP is { } minP && !(minP >= 0 && minP <= 1)) Fail(nameof(MinP), minP, "it must be between 0 and 1.");
        if (!(TypicalP > 0 && TypicalP <= 1)) Fail(nameof(TypicalP), TypicalP, "it must be greater than 0 and at most 1 (1 disables it).");
        if (!(EpsilonCutoff >= 0 && EpsilonCutoff < 1)) Fail(nameof(EpsilonCutoff), EpsilonCutoff, "it must be at least 0 and below 1 (0 disables it).");
        if (!(EtaCutoff >= 0 && EtaCutoff < 1)) Fail(nameof(EtaCutoff), EtaCutoff, "it must be at least 0 and below 1 (0 disables it).");
    }

    /// <summary>Reads a model's <c>generation_config.json</c>.</summary>
    /// <exception cref="ModelConfigException">The file is missing, is not JSON, or a field has the wrong type or an invalid value.</exception>
    public static GenerationConfig FromFile(string path) => FromJson(ConfigJson.ReadText(path), path);

    /// <summary>
    /// Parses the text of a <c>generation_config.json</c>. Unknown keys (<c>transformers_version</c>,
    /// <c>_from_model_config</c>, ...) are ignored like Hugging Face does; <c>null</c> values mean the default;
    /// <c>eos_token_id</c> may be one id or a list; <c>early_stopping</c> is <c>true</c>, <c>false</c> or <c>"never"</c>.
    /// Settings for what is not implemented (diverse beam search's <c>num_beam_groups</c> above 1 or a
    /// <c>diversity_penalty</c>, constrained beam search's <c>constraints</c> or <c>force_words_ids</c>) are rejected
    /// rather than ignored, so a configuration never silently decodes differently.
    /// </summary>
    /// <param name="json">The JSON text.</param>
    /// <param name="sourceName">Named in error messages (usually the file path).</param>
    /// <exception cref="ModelConfigException">The text is not a JSON object, or a field has the wrong type or an invalid value.</exception>
    public static GenerationConfig FromJson(string json, string? sourceName = null)
    {
        var root = ConfigJson.ParseObject(json, sourceName);

        var r = new FieldReader(root, sourceName);
        var d = new GenerationConfig();
        var config = new GenerationConfig
        {
            DoSample = r.Bool("do_sample") ?? d.DoSample,
            MaxLength = r.Int("max_length") ?? d.MaxLength,
            MaxNewTokens = r.Int("max_new_tokens"),
            MinLength = r.Int("min_length") ?? d.MinLength,
            MinNewTokens = r.Int("min_new_tokens"),
            Temperature = r.Double("temperature") ?? d.Temperature,
            TopK = r.Int("top_k") ?? d.TopK,
            TopP = r.Double("top_p") ?? d.TopP,
            MinP = r.Double("min_p"),
            TypicalP = r.Double("typical_p") ?? d.TypicalP,
            EpsilonCutoff = r.Double("epsilon_cutoff") ?? d.EpsilonCutoff,
            EtaCutoff = r.Double("eta_cutoff") ?? d.EtaCutoff,
            RepetitionPenalty = r.Double("repetition_penalty") ?? d.RepetitionPenalty,
            NoRepeatNgramSize = r.Int("no_repeat_ngram_size") ?? d.NoRepeatNgramSize,
            BadWordsIds = r.IntListList("bad_words_ids"),
            RenormalizeLogits = r.Bool("renormalize_logits") ?? d.RenormalizeLogits,
            EosTokenId = r.IntOrIntList("eos_token_id"),
            PadTokenId = r.Int("pad_token_id"),
            BosTokenId = r.Int("bos_token_id"),
            StopStrings = r.StringOrStringList("stop_strings"),
            UseCache = r.Bool("use_cache") ?? d.UseCache,
            NumBeams = r.Int("num_beams") ?? d.NumBeams,
            NumReturnSequences = r.Int("num_return_sequences") ?? d.NumReturnSequences,
            LengthPenalty = r.Double("length_penalty") ?? d.LengthPenalty,
            EarlyStopping = r.EarlyStopping("early_stopping") ?? d.EarlyStopping,
            PromptLookupNumTokens = r.Int("prompt_lookup_num_tokens"),
            NumAssistantTokens = r.Int("num_assistant_tokens") ?? d.NumAssistantTokens,
            NumAssistantTokensSchedule = r.Schedule("num_assistant_tokens_schedule") ?? d.NumAssistantTokensSchedule,
        };
        r.RejectUnsupported("num_beam_groups", n => n.GetValueKind() == JsonValueKind.Number && n.GetValue<double>() == 1,
            "diverse beam search (num_beam_groups > 1) is not supported.");
        r.RejectUnsupported("diversity_penalty", n => n.GetValueKind() == JsonValueKind.Number && n.GetValue<double>() == 0,
            "diverse beam search (diversity_penalty) is not supported.");
        r.RejectUnsupported("constraints", _ => false, "constrained beam search (constraints) is not supported.");
        r.RejectUnsupported("force_words_ids", _ => false, "constrained beam search (force_words_ids) is not supported.");
        try
        {
            config.Validate();
        }
        catch (ArgumentException ex)
        {
            throw new ModelConfigException(sourceName, JsonName(ex.ParamName), ex.Message, ex);
        }
        return config;
    }

    // Property names map to Hugging Face's keys by snake-casing (TopP → top_p, EosTokenId → eos_token_id).
    private static string? JsonName(string? propertyName) => propertyName is null
        ? null
        : string.Concat(propertyName.Select((c, i) =>
            char.IsUpper(c) && i > 0 ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));

    private static string FormatValue(object? value) => value switch
    {
        null => "null",
        string s => $"'{s}'",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        _ => Convert.ToString(value, CultureInfo.InvariantCulture) ?? "?",
    };

    private sealed class FieldReader(JsonObject root, string? source)
    {
        public bool? Bool(string field)
        {
            var node = root[field];
            if (node is null) return null;
            return node.GetValueKind() switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Wrong(field, node, "true or false"),
            };
        }

        /// <summary>Hugging Face's <c>early_stopping</c>: <c>true</c>, <c>false</c> or <c>"never"</c>.</summary>
        public EarlyStopping? EarlyStopping(string field)
        {
            var node = root[field];
            if (node is null) return null;
            return node.GetValueKind() switch
            {
                JsonValueKind.True => Generation.EarlyStopping.True,
                JsonValueKind.False => Generation.EarlyStopping.False,
                JsonValueKind.String when node.GetValue<string>() == "never" => Generation.EarlyStopping.Never,
                _ => throw Wrong(field, node, "true, false or \"never\""),
            };
        }

        /// <summary>Hugging Face's <c>num_assistant_tokens_schedule</c>: "heuristic", "heuristic_transient" or "constant".</summary>
        public AssistantTokensSchedule? Schedule(string field)
        {
            var node = root[field];
            if (node is null) return null;
            return node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() switch
            {
                "heuristic" => AssistantTokensSchedule.Heuristic,
                "heuristic_transient" => AssistantTokensSchedule.HeuristicTransient,
                "constant" => AssistantTokensSchedule.Constant,
                _ => throw Wrong(field, node, "\"heuristic\", \"heuristic_transient\" or \"constant\""),
            } : throw Wrong(field, node, "\"heuristic\", \"heuristic_transient\" or \"constant\"");
        }

        /// <summary>Throws when <paramref name="field"/> is present, not null, and not the harmless value <paramref name="isDefault"/> accepts.</summary>
        public void RejectUnsupported(string field, Func<JsonNode, bool> isDefault, string why)
        {
            var node = root[field];
            if (node is null || isDefault(node)) return;
            throw new ModelConfigException(source, field, why);
        }

        public int? Int(string field)
        {
            var node = root[field];
            return node is null ? null : AsInt(field, node, "an integer");
        }

        public double? Double(string field)
        {
            var node = root[field];
            if (node is null) return null;
            if (node.GetValueKind() != JsonValueKind.Number) throw Wrong(field, node, "a number");
            return node.GetValue<double>();
        }

        public IReadOnlyList<int>? IntOrIntList(string field)
        {
            var node = root[field];
            if (node is null) return null;
            if (node is JsonArray array) return array.Select(item => AsInt(field, item, "an integer or a list of integers")).ToArray();
            return [AsInt(field, node, "an integer or a list of integers")];
        }

        public IReadOnlyList<IReadOnlyList<int>>? IntListList(string field)
        {
            var node = root[field];
            if (node is null) return null;
            const string expected = "a list of lists of integers";
            if (node is not JsonArray outer) throw Wrong(field, node, expected);
            return outer.Select(inner => inner is JsonArray ids
                    ? (IReadOnlyList<int>)ids.Select(id => AsInt(field, id, expected)).ToArray()
                    : throw Wrong(field, inner, expected))
                .ToArray();
        }

        public IReadOnlyList<string>? StringOrStringList(string field)
        {
            var node = root[field];
            if (node is null) return null;
            const string expected = "a string or a list of strings";
            string AsString(JsonNode? item) =>
                item is not null && item.GetValueKind() == JsonValueKind.String ? item.GetValue<string>() : throw Wrong(field, item, expected);
            return node is JsonArray array ? array.Select(AsString).ToArray() : [AsString(node)];
        }

        private int AsInt(string field, JsonNode? node, string expected)
        {
            if (node is null || node.GetValueKind() != JsonValueKind.Number) throw Wrong(field, node, expected);
            var value = node.GetValue<JsonElement>();
            if (value.TryGetInt32(out var i)) return i;
            // JSON writers may emit 3.0 for 3; anything with a fraction or out of range is an error.
            if (value.TryGetDouble(out var d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue) return (int)d;
            throw Wrong(field, node, expected);
        }

        private ModelConfigException Wrong(string field, JsonNode? node, string expected) =>
            new(source, field, $"expected {expected}, got {node?.ToJsonString() ?? "null"}.");
    }
}
