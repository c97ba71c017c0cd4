using System.Text;
using System.Text.Json;

namespace Rinna.Net.Tokenization.Fast;

/// <summary>What a <c>tokenizer.json</c> (Hugging Face <c>tokenizers</c>' serialization) defines, read and checked.</summary>
internal sealed class FastTokenizerDefinition
{
    /// <summary>Largest <c>tokenizer.json</c> read; real ones are a few MB (GPT-NeoX: 2.5 MB, 250k-piece vocabularies: ~20 MB).</summary>
    public const long MaxFileBytes = 64L << 20;

    /// <summary>Largest token id accepted, which bounds the id-indexed tables.</summary>
    private const int MaxId = (1 << 22) - 1;

    private static readonly string[] SupportedNormalizers = ["NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Prepend", "Replace (string pattern)", "Strip", "Sequence"];

    private readonly string path;

    private FastTokenizerDefinition(string path) => this.path = path;

    public List<AddedToken> AddedTokens { get; init; } = [];

    public FastNormalizer? Normalizer { get; init; }

    public ByteLevelPreTokenizer? PreTokenizer { get; set; }

    public BpeModel Model { get; init; } = null!;

    public PostProcessor PostProcessor { get; set; } = PostProcessor.None;

    /// <summary>True for the ByteLevel decoder; false for none (tokens joined with spaces).</summary>
    public bool ByteLevelDecoder { get; init; }

    public static FastTokenizerDefinition Load(string path, CancellationToken cancellationToken)
    {
        var bytes = ReadBounded(path);
        cancellationToken.ThrowIfCancellationRequested();
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw new TokenizerException(path, null, $"invalid JSON: {e.Message}", e);
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new TokenizerException(path, null, $"expected a JSON object, found {root.ValueKind}");
            if (JsonStrings.FindUnreadable(root) is { } unreadable)
                throw new TokenizerException(path, null, $"{unreadable} is not valid Unicode text (an escaped lone surrogate)");
            var reader = new FastTokenizerDefinition(path);
            var normalizer = reader.ReadNormalizer(Optional(root, "normalizer"), "normalizer");
            var model = reader.ReadModel(Optional(root, "model") ?? throw new TokenizerException(path, "model", "missing"));
            cancellationToken.ThrowIfCancellationRequested();
            var definition = new FastTokenizerDefinition(path)
            {
                AddedTokens = reader.ReadAddedTokens(Optional(root, "added_tokens"), model),
                Normalizer = normalizer,
                PreTokenizer = reader.ReadPreTokenizer(Optional(root, "pre_tokenizer"), "pre_tokenizer"),
                Model = model,
                ByteLevelDecoder = reader.ReadDecoder(Optional(root, "decoder")),
            };
            definition.PostProcessor = reader.ReadPostProcessor(Optional(root, "post_processor"), "post_processor", definition);
            return definition;
        }
    }

    /// <summary>The id of a token string: an added token first, then the model's vocabulary.</summary>
    public int? TokenToId(string token)
    {
        foreach (var added in AddedTokens)
            if (added.Content == token) return added.Id;
        return Model.TryGetId(token, out var id) ? id : null;
    }

    private static byte[] ReadBounded(string path)
    {
        try
        {
            // Devices and pipes are refused unopened by BoundedFile; an empty file cannot be a tokenizer either.
            var (handle, length) = BoundedFile.OpenRegular(path);
            using (handle)
            {
                if (length == 0) throw new TokenizerException(path, null, "the file is empty or not a regular file");
                if (length > MaxFileBytes) throw new TokenizerException(path, null, $"{length} bytes is above the {MaxFileBytes >> 20} MiB limit for a tokenizer.json");
                return BoundedFile.ReadAll(handle, length, (int)MaxFileBytes);
            }
        }
        catch (IOException e)
        {
            throw new TokenizerException(path, null, $"cannot read: {e.Message}", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new TokenizerException(path, null, $"cannot read: {e.Message}", e);
        }
    }

    private static JsonElement? Optional(JsonElement parent, string name) =>
        parent.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null ? value : null;

    private TokenizerException Error(string field, string message) => new(path, field, message);

    /// <summary>A component this library does not implement (the loader may then fall back to a SentencePiece model).</summary>
    private TokenizerException Unsupported(string field, string message) => new(path, field, message) { IsUnsupported = true };

    private string TypeOf(JsonElement element, string field)
    {
        if (element.ValueKind != JsonValueKind.Object) throw Error(field, $"expected an object, found {element.ValueKind}");
        var type = Optional(element, "type") ?? throw Error(field, "has no 'type'");
        return type.ValueKind == JsonValueKind.String ? type.GetString()! : throw Error($"{field}.type", $"expected a string, found {type.GetRawText()}");
    }

    private string String(JsonElement parent, string name, string field) => Optional(parent, name) switch
    {
        { ValueKind: JsonValueKind.String } value => value.GetString()!,
        null => throw Error($"{field}.{name}", "missing"),
        var value => throw Error($"{field}.{name}", $"expected a string, found {value.Value.GetRawText()}"),
    };

    private string? OptionalString(JsonElement parent, string name, string field) =>
        Optional(parent, name) is null ? null : String(parent, name, field);

    private bool Bool(JsonElement parent, string name, string field, bool fallback) => Optional(parent, name) switch
    {
        null => fallback,
        { ValueKind: JsonValueKind.True } => true,
        { ValueKind: JsonValueKind.False } => false,
        var value => throw Error($"{field}.{name}", $"expected true or false, found {value.Value.GetRawText()}"),
    };

    private int Id(JsonElement value, string field) =>
        value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out var id) && id is >= 0 and <= MaxId
            ? id
            : throw Error(field, $"{value.GetRawText()} is not a token id (an integer from 0 to {MaxId})");

    private JsonElement.ArrayEnumerator Array(JsonElement parent, string name, string field) => Optional(parent, name) switch
    {
        { ValueKind: JsonValueKind.Array } value => value.EnumerateArray(),
        null => throw Error($"{field}.{name}", "missing"),
        var value => throw Error($"{field}.{name}", $"expected a list, found {value.Value.ValueKind}"),
    };

    private FastNormalizer? ReadNormalizer(JsonElement? element, string field)
    {
        if (element is not { } e) return null;
        var type = TypeOf(e, field);
        return type switch
        {
            "NFC" => new FastNormalizer.UnicodeForm(NormalizationForm.FormC),
            "NFD" => new FastNormalizer.UnicodeForm(NormalizationForm.FormD),
            "NFKC" => new FastNormalizer.UnicodeForm(NormalizationForm.FormKC),
            "NFKD" => new FastNormalizer.UnicodeForm(NormalizationForm.FormKD),
            "Lowercase" => new FastNormalizer.Lowercase(),
            "Prepend" => new FastNormalizer.Prepend(String(e, "prepend", field)),
            "Strip" => new FastNormalizer.Strip(Bool(e, "strip_left", field, true), Bool(e, "strip_right", field, true)),
            "Replace" => ReadReplace(e, field),
            "Sequence" => new FastNormalizer.Sequence(Array(e, "normalizers", field)
                .Select((n, i) => ReadNormalizer(n, $"{field}.normalizers[{i}]") ?? throw Error($"{field}.normalizers[{i}]", "is null"))
                .ToList()),
            _ => throw Unsupported(field, $"normalizer type '{type}' is not supported (supported: {string.Join(", ", SupportedNormalizers)})"),
        };
    }

    private FastNormalizer.Replace ReadReplace(JsonElement e, string field)
    {
        var pattern = Optional(e, "pattern") ?? throw Error($"{field}.pattern", "missing");
        if (pattern.ValueKind != JsonValueKind.Object || !pattern.TryGetProperty("String", out var literal) || literal.ValueKind != JsonValueKind.String)
            throw Unsupported($"{field}.pattern", $"Replace with pattern {pattern.GetRawText()} is not supported (only {{\"String\": ...}})");
        return new FastNormalizer.Replace(literal.GetString()!, String(e, "content", field));
    }

    private ByteLevelPreTokenizer? ReadPreTokenizer(JsonElement? element, string field)
    {
        if (element is not { } e) return null;
        var type = TypeOf(e, field);
        if (type == "Sequence")
        {
            var members = Array(e, "pretokenizers", field).ToList();
            if (members.Count == 1) return ReadPreTokenizer(members[0], $"{field}.pretokenizers[0]");
            throw Unsupported(field, $"a Sequence of {members.Count} pre-tokenizers ({string.Join(", ", members.Select((m, i) => TypeOf(m, $"{field}.pretokenizers[{i}]")))}) is not supported; only ByteLevel");
        }

        if (type != "ByteLevel") throw Unsupported(field, $"pre-tokenizer type '{type}' is not supported (supported: ByteLevel)");
        return new ByteLevelPreTokenizer(Bool(e, "add_prefix_space", field, true), Bool(e, "use_regex", field, true));
    }

    private bool ReadDecoder(JsonElement? element)
    {
        const string field = "decoder";
        if (element is not { } e) return false;
        var type = TypeOf(e, field);
        return type == "ByteLevel" ? true : throw Unsupported(field, $"decoder type '{type}' is not supported (supported: ByteLevel)");
    }

    private BpeModel ReadModel(JsonElement e)
    {
        const string field = "model";
        if (e.ValueKind != JsonValueKind.Object) throw Error(field, $"expected an object, found {e.ValueKind}");
        var type = Optional(e, "type") is { ValueKind: JsonValueKind.String } t ? t.GetString()! : Optional(e, "merges") is not null ? "BPE" : null;
        if (type is null) throw Error($"{field}.type", "missing");
        if (type != "BPE") throw Unsupported($"{field}.type", $"model type '{type}' is not supported (supported: BPE)");
        if (Optional(e, "dropout") is { } dropout && !(dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() == 0))
            throw Unsupported($"{field}.dropout", $"BPE dropout {dropout.GetRawText()} is not supported (encoding is deterministic here)");
        foreach (var affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (OptionalString(e, affix, field) is { Length: > 0 } value)
                throw Unsupported($"{field}.{affix}", $"'{value}' is not supported (only byte-level BPE without word affixes)");
        if (Bool(e, "byte_fallback", field, false))
            throw Unsupported($"{field}.byte_fallback", "byte_fallback BPE (SentencePiece-converted models) is not supported; load the SentencePiece model with UseFast = false");

        var vocabElement = Optional(e, "vocab") ?? throw Error($"{field}.vocab", "missing");
        if (vocabElement.ValueKind != JsonValueKind.Object) throw Error($"{field}.vocab", $"expected an object of token: id, found {vocabElement.ValueKind}");
        var vocabulary = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in vocabElement.EnumerateObject())
        {
            if (entry.Name.Length == 0) throw Error($"{field}.vocab", "contains an empty token");
            if (!vocabulary.TryAdd(entry.Name, Id(entry.Value, $"{field}.vocab['{entry.Name}']")))
                throw Error($"{field}.vocab", $"'{entry.Name}' is listed twice");
        }

        var merges = new List<(string, string)>();
        var index = 0;
        foreach (var merge in Array(e, "merges", field))
        {
            var itemField = $"{field}.merges[{index++}]";
            if (merge.ValueKind == JsonValueKind.String)
            {
                var parts = merge.GetString()!.Split(' ');
                if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                    throw Error(itemField, $"'{merge.GetString()}' is not two pieces separated by one space");
                merges.Add((parts[0], parts[1]));
            }
            else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2 && merge.EnumerateArray().All(p => p.ValueKind == JsonValueKind.String))
            {
                merges.Add((merge[0].GetString()!, merge[1].GetString()!));
            }
            else
            {
                throw Error(itemField, $"expected \"left right\" or [\"left\", \"right\"], found {merge.GetRawText()}");
            }
        }

        return new BpeModel(vocabulary, merges, OptionalString(e, "unk_token", field), Bool(e, "fuse_unk", field, false), Bool(e, "ignore_merges", field, false), Error);
    }

    private List<AddedToken> ReadAddedTokens(JsonElement? element, BpeModel model)
    {
        const string field = "added_tokens";
        var tokens = new List<AddedToken>();
        if (element is not { } e) return tokens;
        if (e.ValueKind != JsonValueKind.Array) throw Error(field, $"expected a list, found {e.ValueKind}");
        var ids = new HashSet<int>();
        var contents = new HashSet<string>(StringComparer.Ordinal);
        var index = 0;
        foreach (var item in e.EnumerateArray())
        {
            var itemField = $"{field}[{index++}]";
            if (item.ValueKind != JsonValueKind.Object) throw Error(itemField, $"expected an object, found {item.ValueKind}");
            var id = Id(Optional(item, "id") ?? throw Error($"{itemField}.id", "missing"), $"{itemField}.id");
            var content = String(item, "content", itemField);
            if (content.Length == 0) throw Error($"{itemField}.content", "is empty");
            if (!ids.Add(id)) throw Error($"{itemField}.id", $"id {id} is used by two added tokens");
            if (!contents.Add(content)) throw Error($"{itemField}.content", $"'{content}' is listed twice");
            if (model.TryGetId(content, out var vocabularyId) && vocabularyId != id)
                throw Error($"{itemField}.id", $"'{content}' has id {id} but the model's vocabulary has it at {vocabularyId}");
            if (model.IdToToken(id) is { } other && other != content)
                throw Error($"{itemField}.id", $"id {id} ('{content}') is the vocabulary's '{other}'");
            var special = Bool(item, "special", itemField, false);
            tokens.Add(new AddedToken(id, content, special, Bool(item, "single_word", itemField, false), Bool(item, "lstrip", itemField, false),
                Bool(item, "rstrip", itemField, false), Bool(item, "normalized", itemField, !special)));
        }

        return tokens;
    }

    private PostProcessor ReadPostProcessor(JsonElement? element, string field, FastTokenizerDefinition definition)
    {
        if (element is not { } e) return PostProcessor.None;
        var type = TypeOf(e, field);
        switch (type)
        {
            case "ByteLevel":
                return PostProcessor.None;
            case "Sequence":
            {
                var result = PostProcessor.None;
                var i = 0;
                foreach (var member in Array(e, "processors", field)) result = result.Then(ReadPostProcessor(member, $"{field}.processors[{i++}]", definition));
                return result;
            }
            case "BertProcessing" or "RobertaProcessing":
                return new PostProcessor([ReadPairToken(e, "cls", field, definition)], [ReadPairToken(e, "sep", field, definition)]);
            case "TemplateProcessing":
                return ReadTemplate(e, field, definition);
            default:
                throw Unsupported(field, $"post-processor type '{type}' is not supported (supported: ByteLevel, TemplateProcessing, BertProcessing, RobertaProcessing, Sequence)");
        }
    }

    private int ReadPairToken(JsonElement e, string name, string field, FastTokenizerDefinition definition)
    {
        var pair = Optional(e, name) ?? throw Error($"{field}.{name}", "missing");
        if (pair.ValueKind != JsonValueKind.Array || pair.GetArrayLength() != 2 || pair[0].ValueKind != JsonValueKind.String)
            throw Error($"{field}.{name}", $"expected [token, id], found {pair.GetRawText()}");
        return CheckKnownId(Id(pair[1], $"{field}.{name}"), $"{field}.{name}", definition);
    }

    private PostProcessor ReadTemplate(JsonElement e, string field, FastTokenizerDefinition definition)
    {
        var specialTokens = new Dictionary<string, int[]>(StringComparer.Ordinal);
        if (Optional(e, "special_tokens") is { } map)
        {
            if (map.ValueKind != JsonValueKind.Object) throw Error($"{field}.special_tokens", $"expected an object, found {map.ValueKind}");
            foreach (var entry in map.EnumerateObject())
            {
                var entryField = $"{field}.special_tokens['{entry.Name}']";
                if (entry.Value.ValueKind != JsonValueKind.Object) throw Error(entryField, $"expected an object, found {entry.Value.ValueKind}");
                specialTokens[entry.Name] = Array(entry.Value, "ids", entryField).Select((id, i) => CheckKnownId(Id(id, $"{entryField}.ids[{i}]"), entryField, definition)).ToArray();
            }
        }

        var prefix = new List<int>();
        var suffix = new List<int>();
        var sawSequence = false;
        var index = 0;
        foreach (var piece in Array(e, "single", field))
        {
            var pieceField = $"{field}.single[{index++}]";
            if (piece.ValueKind == JsonValueKind.Object && piece.TryGetProperty("Sequence", out var sequence))
            {
                var id = sequence.ValueKind == JsonValueKind.Object ? OptionalString(sequence, "id", pieceField) : null;
                if (id != "A") throw Error(pieceField, $"the single-sequence template may only name sequence A, found {sequence.GetRawText()}");
                if (sawSequence) throw Error(pieceField, "sequence A appears twice");
                sawSequence = true;
            }
            else if (piece.ValueKind == JsonValueKind.Object && piece.TryGetProperty("SpecialToken", out var special) && special.ValueKind == JsonValueKind.Object)
            {
                var name = String(special, "id", pieceField);
                if (!specialTokens.TryGetValue(name, out var ids)) throw Error(pieceField, $"'{name}' is not defined in special_tokens");
                (sawSequence ? suffix : prefix).AddRange(ids);
            }
            else
            {
                throw Error(pieceField, $"expected {{\"Sequence\": ...}} or {{\"SpecialToken\": ...}}, found {piece.GetRawText()}");
            }
        }

        if (!sawSequence) throw Error($"{field}.single", "does not contain the sequence $A");
        return new PostProcessor([.. prefix], [.. suffix]);
    }

    private int CheckKnownId(int id, string field, FastTokenizerDefinition definition) =>
        definition.Model.IdToToken(id) is not null || definition.AddedTokens.Any(t => t.Id == id)
            ? id
            : throw Error(field, $"id {id} is neither in the vocabulary nor an added token");
}
