using System.Collections.Concurrent;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Rinna.Net.Tokenization;
using MLSentencePieceTokenizer = Microsoft.ML.Tokenizers.SentencePieceTokenizer;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// Encode throughput on 1 MB of mixed Japanese/English text (the shared corpus), as short lines and as one long
/// document, for Rinna.Net's exact SentencePiece tokenizer beside the raw Microsoft.ML.Tokenizers 2.0.1 call on the
/// same model (whose ids are wrong for rinna-style models; it is here only as a speed reference).
/// </summary>
[Config(typeof(TokenizerBenchmarkConfig))]
public class TokenizerBenchmarks
{
    private PreTrainedTokenizer rinna = null!;
    private MLSentencePieceTokenizer ml = null!;
    private string[] texts = null!;

    [Params("bilingual-lookalike", "ja-3.6b-lookalike")]
    public string Model { get; set; } = "bilingual-lookalike";

    [Params("Lines", "Document")]
    public string Layout { get; set; } = "Lines";

    [GlobalSetup]
    public void Setup()
    {
        var directory = TokenizerBenchmarkData.TokenizerDirectory(Model);
        rinna = AutoTokenizer.FromDirectory(directory, new TokenizerOptions { UseFast = false });
        using var stream = File.OpenRead(Path.Combine(directory, "spiece.model"));
        ml = MLSentencePieceTokenizer.Create(stream, addBeginningOfSentence: false, addEndOfSentence: false);
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
        foreach (var text in texts) count += ml.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false).Count;
        return count;
    }
}

/// <summary>The 1 MB corpus sample and the tokenizer fixtures, located from the repository root.</summary>
internal static class TokenizerBenchmarkData
{
    private const int SampleChars = 1_000_000;
    private static readonly ConcurrentDictionary<string, long> TokenCounts = new();

    public static string TokenizerDirectory(string model) => Path.Combine(SharedRoot, "fixtures", "tokenizers", model);

    /// <summary>Japanese and English works interleaved line by line, cut to 1,000,000 characters.</summary>
    public static string[] Texts(string layout)
    {
        var ja = Directory.GetFiles(Path.Combine(SharedRoot, "corpus", "ja")).Order().SelectMany(File.ReadLines);
        var en = Directory.GetFiles(Path.Combine(SharedRoot, "corpus", "en")).Order().SelectMany(File.ReadLines);
        var lines = ja.Zip(en, (j, e) => new[] { j, e }).SelectMany(pair => pair).Where(l => l.Length > 0);
        var document = string.Join('\n', lines);
        document = document[..Math.Min(SampleChars, document.Length)];
        return layout == "Document" ? [document] : document.Split('\n');
    }

    /// <summary>Tokens Rinna.Net produces for a case (computed once in the host process for the Tokens/s column).</summary>
    public static long TokenCount(string model, string layout) => TokenCounts.GetOrAdd($"{model}/{layout}", _ =>
    {
        var tokenizer = AutoTokenizer.FromDirectory(TokenizerDirectory(model), new TokenizerOptions { UseFast = false });
        return Texts(layout).Sum(t => (long)tokenizer.Encode(t, addSpecialTokens: false).Length);
    });

    private static string SharedRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Rinna.Net.sln")))
                    return Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared"));
            throw new InvalidOperationException($"Rinna.Net.sln not found above {AppContext.BaseDirectory}; the tokenizer benchmark needs ../shared beside the repository.");
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
