using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.RegularExpressions;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Microsoft.ML.Tokenizers;
using Rinna.Net.Tokenization;
using MLSentencePieceTokenizer = Microsoft.ML.Tokenizers.SentencePieceTokenizer;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// Encode throughput on 1 MB of mixed Japanese/English text (the test corpus), as short lines and as one long
/// document: Rinna.Net's fast tokenizer on GPT-NeoX's tokenizer.json and its exact SentencePiece tokenizer on the rinna
/// look-alikes, each beside the raw Microsoft.ML.Tokenizers 2.0.1 call on the same files (byte-level BPE with GPT-2's
/// pattern; SentencePiece), whose ids are not always right (docs/tokenizers.md) and which is here as a speed reference.
/// </summary>
[Config(typeof(TokenizerBenchmarkConfig))]
public class TokenizerBenchmarks
{
    private PreTrainedTokenizer rinna = null!;
    private Tokenizer ml = null!;
    private string[] texts = null!;

    [Params("gpt-neox-bpe", "bilingual-lookalike", "ja-3.6b-lookalike")]
    public string Model { get; set; } = "gpt-neox-bpe";

    [Params("Lines", "Document")]
    public string Layout { get; set; } = "Lines";

    [GlobalSetup]
    public void Setup()
    {
        rinna = TokenizerBenchmarkData.Load(Model);
        ml = TokenizerBenchmarkData.LoadMLTokenizers(Model);
        texts = TokenizerBenchmarkData.Texts(Layout);
    }

    [Benchmark(Baseline = true)]
    public long RinnaNetEncodeTokens()
    {
        long count = 0;
        foreach (var text in texts) count += rinna.Encode(text, addSpecialTokens: false).Length;
        return count;
    }

    [Benchmark]
    public long MLTokenizersRawEncodeTokens()
    {
        long count = 0;
        foreach (var text in texts) count += ml.EncodeToIds(text).Count;
        return count;
    }
}

/// <summary>The 1 MB corpus sample and the tokenizer fixtures, located from the repository root.</summary>
internal static class TokenizerBenchmarkData
{
    private const int SampleChars = 1_000_000;
    private const string FastModel = "gpt-neox-bpe";
    private static readonly ConcurrentDictionary<string, long> TokenCounts = new();

    public static string TokenizerDirectory(string model) => Path.Combine(FixtureRoot, "tokenizers", model);

    /// <summary>Rinna.Net's tokenizer: the fast one for tokenizer.json, the slow SentencePiece one for the rinna look-alikes.</summary>
    public static PreTrainedTokenizer Load(string model) =>
        AutoTokenizer.FromDirectory(TokenizerDirectory(model), new TokenizerOptions { UseFast = model == FastModel });

    /// <summary>The closest raw Microsoft.ML.Tokenizers configuration for the same files.</summary>
    public static Tokenizer LoadMLTokenizers(string model)
    {
        var directory = TokenizerDirectory(model);
        if (model != FastModel)
        {
            using var stream = File.OpenRead(Path.Combine(directory, "spiece.model"));
            return MLSentencePieceTokenizer.Create(stream, addBeginningOfSentence: false, addEndOfSentence: false);
        }

        using var document = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "tokenizer.json")));
        var bpe = document.RootElement.GetProperty("model");
        var added = document.RootElement.GetProperty("added_tokens").EnumerateArray()
            .ToDictionary(a => a.GetProperty("content").GetString()!, a => a.GetProperty("id").GetInt32());
        return BpeTokenizer.Create(new BpeOptions(bpe.GetProperty("vocab").EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value.GetInt32())))
        {
            Merges = bpe.GetProperty("merges").EnumerateArray().Select(m => m.GetString()!).ToList(),
            ByteLevel = true,
            PreTokenizer = new RegexPreTokenizer(new Regex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled), added),
            SpecialTokens = added,
        });
    }

    /// <summary>Japanese and English works interleaved line by line, repeated and cut to 1,000,000 characters.</summary>
    public static string[] Texts(string layout)
    {
        var ja = Directory.GetFiles(Path.Combine(FixtureRoot, "corpus", "ja")).Order().SelectMany(File.ReadLines).Where(l => l.Length > 0).ToList();
        var en = Directory.GetFiles(Path.Combine(FixtureRoot, "corpus", "en")).Order().SelectMany(File.ReadLines).Where(l => l.Length > 0).ToList();
        var lines = Enumerable.Range(0, Math.Max(ja.Count, en.Count)).SelectMany(i => new[] { ja[i % ja.Count], en[i % en.Count] });
        var unit = string.Join('\n', lines);
        var document = string.Concat(Enumerable.Repeat(unit + "\n", 1 + SampleChars / (unit.Length + 1)));
        document = document[..SampleChars];
        return layout == "Document" ? [document] : document.Split('\n');
    }

    /// <summary>Tokens Rinna.Net produces for a case (computed once in the host process for the Tokens/s column).</summary>
    public static long TokenCount(string model, string layout) => TokenCounts.GetOrAdd($"{model}/{layout}", _ =>
    {
        var tokenizer = Load(model);
        return Texts(layout).Sum(t => (long)tokenizer.Encode(t, addSpecialTokens: false).Length);
    });

    internal static string FixtureRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Rinna.Net.sln")))
                    return Path.Combine(dir.FullName, "tests", "fixtures");
            throw new InvalidOperationException($"Rinna.Net.sln not found above {AppContext.BaseDirectory}; the tokenizer benchmark reads tests/fixtures of the repository.");
        }
    }
}

/// <summary>Adds the encode throughput in tokens per second (Rinna.Net's token count for the case / mean time).</summary>
internal sealed class TokenizerBenchmarkConfig : ManualConfig
{
    public TokenizerBenchmarkConfig() => AddColumn(new EncodedTokensPerSecondColumn());

    private sealed class EncodedTokensPerSecondColumn : IColumn
    {
        public string Id => nameof(EncodedTokensPerSecondColumn);
        public string ColumnName => "Encoded tokens/s";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 1;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "Tokens (as Rinna.Net counts them for the input) encoded per second";

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
        {
            // The suite joins all summaries into one table, so this column also sees the other classes' cases.
            if (benchmarkCase.Descriptor.Type != typeof(TokenizerBenchmarks) || summary[benchmarkCase]?.ResultStatistics is not { } stats) return "-";
            var model = (string)benchmarkCase.Parameters[nameof(TokenizerBenchmarks.Model)];
            var layout = (string)benchmarkCase.Parameters[nameof(TokenizerBenchmarks.Layout)];
            var tokensPerSecond = TokenizerBenchmarkData.TokenCount(model, layout) / (stats.Mean / 1e9);
            return tokensPerSecond.ToString("N0", System.Globalization.CultureInfo.InvariantCulture);
        }

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
        public bool IsAvailable(Summary summary) => summary.BenchmarksCases.Any(c => c.Descriptor.Type == typeof(TokenizerBenchmarks));
    }
}
