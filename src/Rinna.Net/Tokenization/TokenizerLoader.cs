using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Rinna.Net.Tokenization.Fast;
using Rinna.Net.Tokenization.SentencePiece;

namespace Rinna.Net.Tokenization;

/// <summary>Builds a tokenizer from a Hugging Face tokenizer directory on disk.</summary>
internal static class TokenizerLoader
{
    private const string TokenizerConfigFile = "tokenizer_config.json";
    private const string SpecialTokensMapFile = "special_tokens_map.json";
    private const string TokenizerJsonFile = "tokenizer.json";
    private static readonly string[] SentencePieceFiles = ["spiece.model", "tokenizer.model"];

    public static PreTrainedTokenizer Load(string directory, TokenizerOptions options, CancellationToken cancellationToken)
    {
        if (!Directory.Exists(directory))
            throw new TokenizerException(directory, null, "tokenizer directory not found");
        var logger = (options.LoggerFactory ?? NullLoggerFactory.Instance).CreateLogger(typeof(AutoTokenizer).FullName!);
        cancellationToken.ThrowIfCancellationRequested();

        var config = ReadJsonObject(Path.Combine(directory, TokenizerConfigFile));
        var specialTokensMap = ReadJsonObject(Path.Combine(directory, SpecialTokensMapFile));
        var sentencePieceFile = SentencePieceFiles.Select(f => Path.Combine(directory, f)).FirstOrDefault(File.Exists);
        var tokenizerJson = Path.Combine(directory, TokenizerJsonFile);
        if (!File.Exists(tokenizerJson)) tokenizerJson = null;

        if (sentencePieceFile is null && tokenizerJson is null)
            throw new TokenizerException(directory, null, $"no tokenizer found: neither {string.Join(" nor ", SentencePieceFiles.Append(TokenizerJsonFile))} exists");

        PreTrainedTokenizer tokenizer;
        if (tokenizerJson is not null && (options.UseFast || sentencePieceFile is null))
        {
            // transformers uses the fast class when the model has no slow tokenizer, whatever use_fast says.
            if (!options.UseFast)
                logger.LogWarning("{Directory}: no SentencePiece model; using the fast tokenizer from tokenizer.json (as use_fast=True).", directory);
            try
            {
                tokenizer = LoadFast(tokenizerJson, config, specialTokensMap, cancellationToken);
            }
            catch (TokenizerException e) when (e.IsUnsupported && sentencePieceFile is not null)
            {
                // rinna's repositories ship a SentencePiece model; a tokenizer.json beside it that this library cannot
                // run (e.g. a converted Unigram model) should not stop the slow tokenizer that its model cards ask for.
                logger.LogWarning("{Directory}: tokenizer.json is not supported ({Reason}); using the slow SentencePiece tokenizer (as use_fast=False).", directory, e.Message);
                tokenizer = LoadSentencePiece(sentencePieceFile, config, specialTokensMap, logger);
            }
        }
        else
        {
            if (options.UseFast)
                logger.LogWarning("{Directory}: no tokenizer.json; using the slow SentencePiece tokenizer (as use_fast=False).", directory);
            tokenizer = LoadSentencePiece(sentencePieceFile!, config, specialTokensMap, logger);
        }

        ApplyCommonSettings(tokenizer, config, options);
        return tokenizer;
    }

    private static PreTrainedTokenizerFast LoadFast(string path, JsonFile? config, JsonFile? specialTokensMap, CancellationToken cancellationToken)
    {
        var definition = FastTokenizerDefinition.Load(path, cancellationToken);
        var className = config?.GetString("tokenizer_class");
        var postProcessor = definition.PostProcessor;

        // GPT2/GPT-NeoX fast classes rewrite the ByteLevel pre-tokenizer with the configuration's add_prefix_space.
        if (className is "GPTNeoXTokenizer" or "GPTNeoXTokenizerFast" or "GPT2Tokenizer" or "GPT2TokenizerFast"
            && config?.GetBool("add_prefix_space") is { } addPrefixSpace && definition.PreTokenizer is { } preTokenizer)
            definition.PreTokenizer = new ByteLevelPreTokenizer(addPrefixSpace, preTokenizer.UseRegex);

        var (contents, additional) = SpecialTokenContents(config, specialTokensMap);
        var nextId = definition.AddedTokens.Select(t => t.Id).DefaultIfEmpty(-1).Max() is var maxAdded && maxAdded >= definition.Model.Size
            ? maxAdded + 1
            : definition.Model.Size;
        int? ResolveId(string content)
        {
            // transformers registers every configured special token with the backend as a special added token.
            var index = definition.AddedTokens.FindIndex(t => t.Content == content);
            if (index >= 0)
            {
                definition.AddedTokens[index] = definition.AddedTokens[index] with { Special = true };
                return definition.AddedTokens[index].Id;
            }

            var id = definition.Model.TryGetId(content, out var vocabularyId) ? vocabularyId : nextId++;
            definition.AddedTokens.Add(new AddedToken(id, content, Special: true, SingleWord: false, LStrip: false, RStrip: false, Normalized: false));
            return id;
        }

        var special = new SpecialTokens(contents, additional, ResolveId, definition.Model.IdLimit);

        // GPT-NeoX and LLaMA fast classes rebuild the post-processor from add_bos_token / add_eos_token when set.
        if (className is "GPTNeoXTokenizer" or "GPTNeoXTokenizerFast" or "LlamaTokenizer" or "LlamaTokenizerFast"
            && (config?.GetBool("add_bos_token") is not null || config?.GetBool("add_eos_token") is not null))
        {
            var isLlama = className.StartsWith("Llama", StringComparison.Ordinal);
            var addBos = config!.GetBool("add_bos_token") ?? isLlama;
            var addEos = config.GetBool("add_eos_token") ?? false;
            if (addBos && special.Bos is null) throw new TokenizerException(config.Path, "add_bos_token", "is true but no bos_token is set");
            if (addEos && special.Eos is null) throw new TokenizerException(config.Path, "add_eos_token", "is true but no eos_token is set");
            postProcessor = new PostProcessor(addBos ? [special.Bos!.Id] : [], addEos ? [special.Eos!.Id] : []);
        }

        // transformers 4.36's default for clean_up_tokenization_spaces (the one the slow tokenizers follow too).
        var cleanUp = config?.GetBool("clean_up_tokenization_spaces") ?? true;
        return new PreTrainedTokenizerFast(definition, special, postProcessor, cleanUp);
    }

    private static SlowSentencePieceTokenizer LoadSentencePiece(string modelFile, JsonFile? config, JsonFile? specialTokensMap, ILogger logger)
    {
        var className = config?.GetString("tokenizer_class")
            ?? throw new TokenizerException(Path.Combine(Path.GetDirectoryName(modelFile)!, TokenizerConfigFile), "tokenizer_class",
                "missing; cannot tell whether the SentencePiece model is used as T5Tokenizer or LlamaTokenizer");
        var isT5 = className is "T5Tokenizer" or "T5TokenizerFast";
        var isLlama = className is "LlamaTokenizer" or "LlamaTokenizerFast";
        if (!isT5 && !isLlama)
            throw new TokenizerException(config.Path, "tokenizer_class", $"'{className}' is not supported with a SentencePiece model (supported: T5Tokenizer, LlamaTokenizer)");
        if (config.GetBool("legacy") == false)
            throw new TokenizerException(config.Path, "legacy", "legacy=false tokenization is not supported; only the legacy behaviour rinna's models use");
        if (isT5 && config.GetInt("extra_ids") is > 0 and var extraIds)
            throw new TokenizerException(config.Path, "extra_ids", $"{extraIds} T5 sentinel tokens (<extra_id_N>) are not supported");

        byte[] bytes;
        try
        {
            bytes = BoundedFile.ReadAllBytes(modelFile, SentencePieceModel.MaxFileBytes);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new TokenizerException(modelFile, null, $"cannot read the SentencePiece model: {e.Message}", e);
        }

        var model = SentencePieceModel.Load(bytes, modelFile);
        var special = ResolveSpecialTokens(model, config, specialTokensMap, logger);
        var cleanUp = config.GetBool("clean_up_tokenization_spaces") ?? isT5;
        return isT5
            ? new T5Tokenizer(model, special, cleanUp)
            : new LlamaTokenizer(model, special, cleanUp, config.GetBool("add_bos_token") ?? true, config.GetBool("add_eos_token") ?? false);
    }

    /// <summary>Special-token contents per attribute and <c>additional_special_tokens</c>, from both configuration files.</summary>
    private static (string?[] Contents, List<string> Additional) SpecialTokenContents(JsonFile? config, JsonFile? specialTokensMap)
    {
        var contents = new string?[SpecialTokens.AttributeNames.Length];
        for (var i = 0; i < contents.Length; i++)
        {
            var name = SpecialTokens.AttributeNames[i];
            var fromConfig = config?.GetTokenContent(name);
            var fromMap = specialTokensMap?.GetTokenContent(name);
            if (fromConfig is not null && fromMap is not null && fromConfig != fromMap)
                throw new TokenizerException(config!.Path, name,
                    $"'{fromConfig}' disagrees with '{fromMap}' in {SpecialTokensMapFile}");
            contents[i] = fromMap ?? fromConfig;
        }

        var additional = (specialTokensMap?.GetTokenList("additional_special_tokens") ?? [])
            .Concat(config?.GetTokenList("additional_special_tokens") ?? [])
            .Distinct(StringComparer.Ordinal)
            .ToList();
        return (contents, additional);
    }

    private static SpecialTokens ResolveSpecialTokens(SentencePieceModel model, JsonFile config, JsonFile? specialTokensMap, ILogger logger)
    {
        var (contents, additional) = SpecialTokenContents(config, specialTokensMap);

        var fixedIds = config.GetAddedTokensDecoder();
        int? ResolveId(string content)
        {
            var vocabularyId = model.TryGetId(content, out var id) ? id : (int?)null;
            if (fixedIds.TryGetValue(content, out var fixedId))
            {
                if (vocabularyId is { } v && v != fixedId)
                    throw new TokenizerException(config.Path, "added_tokens_decoder",
                        $"'{content}' has id {fixedId} but the SentencePiece model has it at id {v}");
                return fixedId;
            }

            if (vocabularyId is null)
                logger.LogWarning("Special token '{Token}' is not in the SentencePiece vocabulary; it gets an id after the vocabulary, as Hugging Face does.", content);
            return vocabularyId;
        }

        return new SpecialTokens(contents, additional, ResolveId, model.PieceCount);
    }

    private static void ApplyCommonSettings(PreTrainedTokenizer tokenizer, JsonFile? config, TokenizerOptions options)
    {
        var side = config?.GetString("padding_side");
        tokenizer.PaddingSide = options.PaddingSide ?? side switch
        {
            null or "right" => PaddingSide.Right,
            "left" => PaddingSide.Left,
            _ => throw new TokenizerException(config!.Path, "padding_side", $"'{side}' is neither 'left' nor 'right'"),
        };

        var maxLength = options.ModelMaxLength ?? config?.GetLong("model_max_length") switch
        {
            null => null,
            <= 0 and var bad => throw new TokenizerException(config!.Path, "model_max_length", $"{bad} is not a positive length"),
            var value => (int?)Math.Min(value.Value, int.MaxValue),
        };
        if (maxLength is { } length) tokenizer.ModelMaxLength = length;
    }

    private static JsonFile? ReadJsonObject(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var document = JsonDocument.Parse(BoundedFile.ReadAllBytes(path));
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new TokenizerException(path, null, $"expected a JSON object, found {document.RootElement.ValueKind}");
            if (JsonStrings.FindUnreadable(document.RootElement) is { } unreadable)
                throw new TokenizerException(path, null, $"{unreadable} is not valid Unicode text (an escaped lone surrogate)");
            return new JsonFile(path, document.RootElement.Clone());
        }
        catch (JsonException e)
        {
            throw new TokenizerException(path, null, $"invalid JSON: {e.Message}", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new TokenizerException(path, null, $"cannot read: {e.Message}", e);
        }
    }

    /// <summary>Typed access to a JSON configuration file with errors that name the file and field.</summary>
    private sealed record JsonFile(string Path, JsonElement Root)
    {
        public string? GetString(string field) => Get(field) switch
        {
            null => null,
            { ValueKind: JsonValueKind.String } value => value.GetString(),
            var value => throw WrongType(field, "a string", value.Value),
        };

        public bool? GetBool(string field) => Get(field) switch
        {
            null => null,
            { ValueKind: JsonValueKind.True } => true,
            { ValueKind: JsonValueKind.False } => false,
            var value => throw WrongType(field, "true or false", value.Value),
        };

        public long? GetLong(string field) => Get(field) switch
        {
            null => null,
            { ValueKind: JsonValueKind.Number } value when value.TryGetInt64(out var n) => n,
            // Hugging Face writes 1e30 (VERY_LARGE_INTEGER) for "no limit".
            { ValueKind: JsonValueKind.Number } value when value.TryGetDouble(out var d) && d >= long.MaxValue => long.MaxValue,
            var value => throw WrongType(field, "an integer", value.Value),
        };

        public int? GetInt(string field) => GetLong(field) is { } n
            ? n is >= int.MinValue and <= int.MaxValue ? (int)n : throw new TokenizerException(Path, field, $"{n} is out of range")
            : null;

        /// <summary>A special token given as a string or as an AddedToken object <c>{"content": ...}</c>.</summary>
        public string? GetTokenContent(string field) => Get(field) is { } value ? TokenContent(field, value) : null;

        public IReadOnlyList<string>? GetTokenList(string field) => Get(field) switch
        {
            null => null,
            { ValueKind: JsonValueKind.Array } value => value.EnumerateArray().Select(v => TokenContent(field, v)).ToList(),
            var value => throw WrongType(field, "a list of tokens", value.Value),
        };

        /// <summary><c>added_tokens_decoder</c> (transformers ≥ 4.34): content → id; only special tokens are supported.</summary>
        public IReadOnlyDictionary<string, int> GetAddedTokensDecoder()
        {
            const string field = "added_tokens_decoder";
            var result = new Dictionary<string, int>(StringComparer.Ordinal);
            if (Get(field) is not { } value) return result;
            if (value.ValueKind != JsonValueKind.Object) throw WrongType(field, "an object", value);
            foreach (var entry in value.EnumerateObject())
            {
                if (!int.TryParse(entry.Name, out var id) || id < 0)
                    throw new TokenizerException(Path, field, $"key '{entry.Name}' is not a token id");
                var content = TokenContent(field, entry.Value);
                if (entry.Value.ValueKind == JsonValueKind.Object
                    && entry.Value.TryGetProperty("special", out var special) && special.ValueKind == JsonValueKind.False)
                    throw new TokenizerException(Path, field, $"non-special added token '{content}' (id {id}) is not supported");
                result[content] = id;
            }

            return result;
        }

        private JsonElement? Get(string field) =>
            Root.TryGetProperty(field, out var value) && value.ValueKind != JsonValueKind.Null ? value : null;

        private string TokenContent(string field, JsonElement value)
        {
            var content = value.ValueKind switch
            {
                JsonValueKind.String => value.GetString(),
                JsonValueKind.Object when value.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
                _ => throw WrongType(field, "a token string or {\"content\": ...}", value),
            };
            return string.IsNullOrEmpty(content) ? throw new TokenizerException(Path, field, "token is empty") : content;
        }

        private TokenizerException WrongType(string field, string expected, JsonElement value) =>
            new(Path, field, $"expected {expected}, found {value.GetRawText()}");
    }
}
