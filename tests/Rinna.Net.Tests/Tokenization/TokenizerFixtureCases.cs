using System.Collections.Concurrent;
using System.Text.Json;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>Reads the reference cases of <c>tests/fixtures/tokenizers/*/</c> and caches one tokenizer per model.</summary>
internal static class TokenizerFixtureCases
{
    public static readonly string[] Models = ["bilingual-lookalike", "ja-3.6b-lookalike", "llama-style-bpe"];

    private static readonly ConcurrentDictionary<string, SlowSentencePieceTokenizer> Tokenizers = new();
    private static readonly ConcurrentDictionary<string, IReadOnlyDictionary<string, JsonElement>> EncodeCaseFiles = new();
    private static readonly ConcurrentDictionary<string, IReadOnlyDictionary<string, JsonElement>> DecodeCaseFiles = new();

    public static SlowSentencePieceTokenizer Tokenizer(string model) =>
        Tokenizers.GetOrAdd(model, m => (SlowSentencePieceTokenizer)AutoTokenizer.FromDirectory(Fixtures.Tokenizer(m), new TokenizerOptions { UseFast = false }));

    public static JsonElement EncodeCase(string model, string id) => EncodeCaseFiles.GetOrAdd(model, m => ReadCases(m, "cases.jsonl"))[id];

    public static JsonElement DecodeCase(string model, string id) => DecodeCaseFiles.GetOrAdd(model, m => ReadCases(m, "decode_cases.jsonl"))[id];

    public static TheoryData<string, string> EncodeCaseIds() => CaseIds("cases.jsonl");

    public static TheoryData<string, string> DecodeCaseIds() => CaseIds("decode_cases.jsonl");

    public static int[] Ints(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();

    public static string[] Strings(JsonElement array) => array.EnumerateArray().Select(e => e.GetString()!).ToArray();

    private static TheoryData<string, string> CaseIds(string file)
    {
        var data = new TheoryData<string, string>();
        foreach (var model in Models)
            foreach (var line in File.ReadLines(Path.Combine(Fixtures.Tokenizer(model), file)).Where(l => l.Length > 0))
            {
                using var document = JsonDocument.Parse(line);
                data.Add(model, document.RootElement.GetProperty("id").GetString()!);
            }

        return data;
    }

    private static IReadOnlyDictionary<string, JsonElement> ReadCases(string model, string file) =>
        File.ReadLines(Path.Combine(Fixtures.Tokenizer(model), file))
            .Where(l => l.Length > 0)
            .Select(l => JsonDocument.Parse(l).RootElement.Clone())
            .ToDictionary(e => e.GetProperty("id").GetString()!);
}
