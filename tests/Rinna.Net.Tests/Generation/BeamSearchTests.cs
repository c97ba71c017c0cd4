using System.Text.Json;
using System.Text.Json.Nodes;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>Beam search and prompt lookup against transformers' own <c>generate()</c> outputs (expected_beam.json).</summary>
public class BeamSearchTests : IAsyncLifetime
{
    private GptNeoXForCausalLM model = null!;

    public async ValueTask InitializeAsync() =>
        model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), cancellationToken: TestContext.Current.CancellationToken);

    public ValueTask DisposeAsync()
    {
        model.Dispose();
        return ValueTask.CompletedTask;
    }

    public static TheoryData<string> Cases => new(ReadCases().Select(c => c.GetProperty("name").GetString()!));

    internal static IEnumerable<JsonElement> ReadCases() =>
        JsonDocument.Parse(File.ReadAllText(Fixtures.Path("models", "tiny-neox-rinna", "expected_beam.json")))
            .RootElement.GetProperty("cases").EnumerateArray().Select(c => c.Clone()).ToList();

    /// <summary>The model's generation_config.json with the case's generate() keyword arguments laid over it, as HF merges them.</summary>
    internal static GenerationConfig ConfigFor(JsonElement testCase)
    {
        var json = JsonNode.Parse(File.ReadAllText(Fixtures.Path("models", "tiny-neox-rinna", "generation_config.json")))!.AsObject();
        foreach (var kv in testCase.GetProperty("kwargs").EnumerateObject()) json[kv.Name] = JsonNode.Parse(kv.Value.GetRawText());
        return GenerationConfig.FromJson(json.ToJsonString());
    }

    internal static Tensor Matrix(JsonElement rows) =>
        tensor(rows.EnumerateArray().SelectMany(r => r.EnumerateArray().Select(e => e.GetInt64())).ToArray(),
            [rows.GetArrayLength(), rows[0].GetArrayLength()], ScalarType.Int64);

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesTransformers(string name)
    {
        var testCase = ReadCases().Single(c => c.GetProperty("name").GetString() == name);
        var config = ConfigFor(testCase);
        using var ids = Matrix(testCase.GetProperty("input_ids"));
        using var mask = Matrix(testCase.GetProperty("attention_mask"));
        var output = model.Generate(ids, config, mask);
        using var sequences = output.Sequences;
        using var expected = Matrix(testCase.GetProperty("sequences"));
        Assert.Equal(expected.shape, sequences.shape);
        for (int row = 0; row < expected.shape[0]; row++)
            Assert.Equal(expected[row].data<long>().ToArray(), sequences[row].data<long>().ToArray());

        if (testCase.TryGetProperty("sequences_scores", out var scores) && scores.ValueKind == JsonValueKind.Array)
        {
            Assert.NotNull(output.SequencesScores);
            var want = scores.EnumerateArray().Select(e => e.GetDouble()).ToArray();
            Assert.Equal(want.Length, output.SequencesScores!.Count);
            var worst = want.Select((w, i) => Math.Abs(w - output.SequencesScores[i])).Max();
            TestContext.Current.TestOutputHelper?.WriteLine($"{name}: max |sequences_scores diff| {worst:E2}");
            for (int i = 0; i < want.Length; i++)
                Assert.True(Math.Abs(want[i] - output.SequencesScores[i]) <= 1e-4, $"row {i}: score {output.SequencesScores[i]} vs {want[i]}");
        }
    }

    [Fact]
    public void ReturnedRowsCarryTheirTokensAndFinishReasons()
    {
        var testCase = ReadCases().Single(c => c.GetProperty("name").GetString() == "beam4_hot_eos_never");
        using var ids = Matrix(testCase.GetProperty("input_ids"));
        var output = model.Generate(ids, ConfigFor(testCase));
        output.Sequences.Dispose();
        Assert.Equal(FinishReason.EndOfSequence, output.Rows[0].FinishReason);
        Assert.Equal([415, 165, 877, 96], output.Rows[0].TokenIds);
        Assert.Equal(FinishReason.EndOfSequence, output.Rows[1].FinishReason);
        Assert.Equal(13, output.Rows[1].TokenIds.Count);
    }

    [Fact]
    public void CancellationKeepsTheBeamsSoFar()
    {
        using var ids = tensor(new long[] { 587, 503, 105, 111, 747 }, [1, 5], ScalarType.Int64);
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var output = model.Generate(ids, model.GenerationConfig() with { NumBeams = 3, NumReturnSequences = 2, MaxNewTokens = 8 },
            cancellationToken: cancelled.Token);
        using var sequences = output.Sequences;
        Assert.Equal([2L, 5L], sequences.shape);
        Assert.All(output.Rows, row => Assert.Equal(FinishReason.Cancelled, row.FinishReason));
        Assert.All(output.Rows, row => Assert.Empty(row.TokenIds));
    }

    [Fact]
    public async Task ReturnedRowsDecodeWithATokenizer()
    {
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(Fixtures.Tokenizer("ja-3.6b-lookalike"), cancellationToken: TestContext.Current.CancellationToken);
        var testCase = ReadCases().Single(c => c.GetProperty("name").GetString() == "beam4_return3");
        using var ids = Matrix(testCase.GetProperty("input_ids"));
        var output = model.Generate(ids, ConfigFor(testCase), tokenizer: tokenizer);
        output.Sequences.Dispose();
        Assert.All(output.Rows, row => Assert.Equal(tokenizer.Decode(row.TokenIds, skipSpecialTokens: true), row.Text));
    }

    [Fact]
    public void BeamSearchRejectsStreamingAndSampling()
    {
        using var ids = tensor(new long[] { 587, 503 }, [1, 2], ScalarType.Int64);
        var config = model.GenerationConfig() with { NumBeams = 2, MaxNewTokens = 2 };
        Assert.Throws<ArgumentException>(() => model.Generate(ids, config, onStep: _ => { }));
        Assert.Throws<ArgumentException>(() => model.Generate(ids, config with { DoSample = true }));
        Assert.Throws<ArgumentException>(() => model.Generate(ids, config with { NumReturnSequences = 3 }));
    }
}
