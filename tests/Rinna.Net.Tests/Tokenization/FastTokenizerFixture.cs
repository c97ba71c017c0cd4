using System.Text.Json;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>The <c>gpt-neox-bpe</c> fixture (GPT-NeoX-20B's tokenizer.json) and its reference cases, loaded once.</summary>
internal static class FastTokenizerFixture
{
    public const string Name = "gpt-neox-bpe";

    private static readonly Lazy<PreTrainedTokenizerFast> Loaded = new(() => (PreTrainedTokenizerFast)AutoTokenizer.FromDirectory(Directory));

    private static readonly Lazy<IReadOnlyList<Case>> LoadedCases = new(() => File.ReadLines(Path.Combine(Directory, "cases.jsonl"))
        .Where(l => l.Length > 0)
        .Select(l =>
        {
            using var document = JsonDocument.Parse(l);
            var e = document.RootElement;
            return new Case(e.GetProperty("id").GetString()!, e.GetProperty("text").GetString()!, TokenizerFixtureCases.Ints(e.GetProperty("ids")),
                TokenizerFixtureCases.Strings(e.GetProperty("tokens")), e.GetProperty("decode").GetString()!,
                e.GetProperty("decode_skip_special").GetString()!, e.GetProperty("decode_clean_up").GetString()!);
        })
        .ToList());

    public static string Directory => Fixtures.Tokenizer(Name);

    public static PreTrainedTokenizerFast Tokenizer => Loaded.Value;

    public static IReadOnlyList<Case> Cases => LoadedCases.Value;

    /// <summary>A copy of the fixture directory to modify, deleted on dispose.</summary>
    public static TempDirectory Copy()
    {
        var copy = new TempDirectory();
        foreach (var file in System.IO.Directory.GetFiles(Directory))
            File.Copy(file, Path.Combine(copy.Path, Path.GetFileName(file)));
        return copy;
    }

    public sealed record Case(string Id, string Text, int[] Ids, string[] Tokens, string Decode, string DecodeSkipSpecial, string DecodeCleanUp);

    public sealed class TempDirectory : IDisposable
    {
        public string Path { get; } = System.IO.Directory.CreateTempSubdirectory("rinna-fast-").FullName;

        public string File(string name) => System.IO.Path.Combine(Path, name);

        public void Dispose() => System.IO.Directory.Delete(Path, recursive: true);
    }
}
