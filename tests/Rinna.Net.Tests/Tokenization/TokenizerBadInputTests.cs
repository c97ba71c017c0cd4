using Microsoft.Extensions.Logging;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Tests.Tokenization;

/// <summary>Missing, corrupt or inconsistent tokenizer files and out-of-vocabulary ids give clear exceptions.</summary>
public sealed class TokenizerBadInputTests : IDisposable
{
    private static readonly TokenizerOptions Slow = new() { UseFast = false };
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-tokenizer-").FullName;

    public TokenizerBadInputTests()
    {
        foreach (var file in Directory.GetFiles(Fixtures.Tokenizer("bilingual-lookalike")))
            File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
        foreach (var file in Directory.GetFiles(directory)) File.SetAttributes(file, FileAttributes.Normal);
    }

    public void Dispose() => Directory.Delete(directory, recursive: true);

    private string ModelFile => Path.Combine(directory, "spiece.model");

    private string ConfigFile => Path.Combine(directory, "tokenizer_config.json");

    private TokenizerException LoadFails() =>
        Assert.Throws<TokenizerException>(() => AutoTokenizer.FromDirectory(directory, Slow));

    [Fact]
    public void TheCopiedDirectoryLoads() => Assert.Equal(1000, AutoTokenizer.FromDirectory(directory, Slow).VocabSize);

    [Fact]
    public async Task NonExistentPathIsRejected()
    {
        var missing = Path.Combine(directory, "no-such-model");
        // A path that is not a directory is not a hub id either: the argument is rejected before any network access.
        var e = await Assert.ThrowsAsync<ArgumentException>(() => AutoTokenizer.FromPretrainedAsync(missing, Slow));
        Assert.Contains(missing, e.Message);
    }

    [Fact]
    public void UnsupportedFastTokenizerOnlyDirectoryIsRejectedNamingTheComponent()
    {
        File.Delete(ModelFile);
        var json = Path.Combine(directory, "tokenizer.json");
        File.WriteAllText(json, "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
        var e = Assert.Throws<TokenizerException>(() => AutoTokenizer.FromDirectory(directory));
        Assert.Equal(json, e.File);
        Assert.Contains("Unigram", e.Message);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void UseFastFallsBackToTheSlowTokenizerWithAWarning(bool withTokenizerJson)
    {
        // A tokenizer.json this library cannot run (rinna's would be a converted Unigram model) does not stop the slow one.
        if (withTokenizerJson) File.WriteAllText(Path.Combine(directory, "tokenizer.json"), "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
        var logs = new CollectingLoggerFactory();
        var tokenizer = AutoTokenizer.FromDirectory(directory, new TokenizerOptions { LoggerFactory = logs });
        Assert.IsType<T5Tokenizer>(tokenizer);
        Assert.Contains(logs.Messages, m => m.Level == LogLevel.Warning && m.Text.Contains("slow SentencePiece tokenizer"));
        AutoTokenizer.FromDirectory(directory, new TokenizerOptions { UseFast = false, LoggerFactory = logs = new CollectingLoggerFactory() });
        Assert.Empty(logs.Messages);
    }

    [Fact]
    public void MissingSentencePieceModelIsNamed()
    {
        File.Delete(ModelFile);
        Assert.Contains("spiece.model", LoadFails().Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    [InlineData(100_003)]
    public void TruncatedModelIsRejected(int length)
    {
        var bytes = File.ReadAllBytes(ModelFile);
        File.WriteAllBytes(ModelFile, bytes[..length]);
        var e = LoadFails();
        Assert.Equal(ModelFile, e.File);
    }

    [Fact]
    public void GarbageModelIsRejected()
    {
        File.WriteAllBytes(ModelFile, System.Text.Encoding.UTF8.GetBytes("this is not a protobuf model at all"));
        Assert.Equal(ModelFile, LoadFails().File);
    }

    [Fact]
    public void InvalidJsonNamesTheFile()
    {
        File.WriteAllText(ConfigFile, "{\"tokenizer_class\": ");
        Assert.Equal(ConfigFile, LoadFails().File);
    }

    [Fact]
    public void UnsupportedTokenizerClassIsNamed()
    {
        RewriteConfig("\"T5Tokenizer\"", "\"BertTokenizer\"");
        var e = LoadFails();
        Assert.Equal("tokenizer_class", e.Field);
        Assert.Contains("BertTokenizer", e.Message);
    }

    [Fact]
    public void SpecialTokenDisagreeingWithTheMapIsNamed()
    {
        RewriteConfig("\"eos_token\": \"</s>\"", "\"eos_token\": \"<eos>\"");
        var e = LoadFails();
        Assert.Equal("eos_token", e.Field);
        Assert.Contains("<eos>", e.Message);
    }

    [Fact]
    public void SpecialTokenOfTheWrongTypeIsNamed()
    {
        RewriteConfig("\"pad_token\": \"[PAD]\"", "\"pad_token\": 5");
        Assert.Equal("pad_token", LoadFails().Field);
    }

    [Fact]
    public void AddedTokenIdContradictingTheModelIsNamed()
    {
        RewriteConfig("\"extra_ids\": 0", "\"extra_ids\": 0, \"added_tokens_decoder\": {\"7\": {\"content\": \"</s>\", \"special\": true}}");
        var e = LoadFails();
        Assert.Equal("added_tokens_decoder", e.Field);
        Assert.Contains("id 3", e.Message);
    }

    [Fact]
    public void UnsupportedSentinelTokensAreNamed()
    {
        RewriteConfig("\"extra_ids\": 0", "\"extra_ids\": 100");
        Assert.Equal("extra_ids", LoadFails().Field);
    }

    [Fact]
    public void InvalidPaddingSideIsNamed()
    {
        RewriteConfig("\"extra_ids\": 0", "\"extra_ids\": 0, \"padding_side\": \"middle\"");
        Assert.Equal("padding_side", LoadFails().Field);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(1000)]
    [InlineData(int.MaxValue)]
    public void IdsOutsideTheVocabularyAreRejected(int id)
    {
        var tokenizer = TokenizerFixtureCases.Tokenizer("bilingual-lookalike");
        Assert.Contains(id.ToString(), Assert.Throws<TokenizerException>(() => tokenizer.Decode([5, id])).Message);
        Assert.Throws<TokenizerException>(() => tokenizer.ConvertIdsToTokens([id]));
        Assert.Throws<TokenizerException>(() => tokenizer.CreateStreamingDecoder().Append(id));
    }

    private void RewriteConfig(string from, string to)
    {
        var text = File.ReadAllText(ConfigFile);
        Assert.Contains(from, text);
        File.WriteAllText(ConfigFile, text.Replace(from, to));
    }
}

internal sealed class CollectingLoggerFactory : ILoggerFactory, ILogger
{
    public List<(LogLevel Level, string Text)> Messages { get; } = [];

    public ILogger CreateLogger(string categoryName) => this;

    public void AddProvider(ILoggerProvider provider) { }

    public void Dispose() { }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Messages.Add((logLevel, formatter(state, exception)));
}
