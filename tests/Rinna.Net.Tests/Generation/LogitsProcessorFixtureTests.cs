using System.Text.Json;
using Rinna.Net.Generation;
using Rinna.Net.Native;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>Every case of tests/fixtures/logits_processors, produced by Hugging Face's own classes, to atol 1e-6 with identical -inf positions.</summary>
public class LogitsProcessorFixtureTests
{
    private static readonly Lazy<(JsonElement Root, Dictionary<string, Tensor> Tensors)> Data = new(Load);

    private static (JsonElement, Dictionary<string, Tensor>) Load()
    {
        TorchSharpNativeLoader.EnsureInstalled();
        var dir = Fixtures.Path("logits_processors");
        var root = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "cases.json"))).RootElement;
        var tensors = Safetensors.LoadStateDict(Path.Combine(dir, "cases.safetensors"));
        return (root, tensors);
    }

    public static TheoryData<string> CaseNames()
    {
        var names = new TheoryData<string>();
        var root = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("logits_processors", "cases.json"))).RootElement;
        foreach (var c in root.GetProperty("cases").EnumerateArray()) names.Add(c.GetProperty("name").GetString()!);
        return names;
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void MatchesHuggingFace(string name)
    {
        var (root, tensors) = Data.Value;
        var fixture = root.GetProperty("cases").EnumerateArray().Single(c => c.GetProperty("name").GetString() == name);
        using var scope = NewDisposeScope();
        var inputIds = tensors["input_ids"];
        var scores = tensors["scores"];
        var expected = tensors[fixture.GetProperty("output_tensor").GetString()!];
        var scoresBefore = scores.clone();

        var processor = Build(fixture);
        var actual = processor.Process(inputIds, scores);

        AssertSameScores(expected, actual, name);
        Assert.True(scores.eq(scoresBefore).all().item<bool>(), "the processor wrote into its input");
        var negInfPerRow = fixture.GetProperty("num_neg_inf_per_row").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        Assert.Equal(negInfPerRow, actual.isneginf().sum([1]).data<long>().ToArray());

        if (fixture.TryGetProperty("probs_tensor", out var probsName))
        {
            var expectedProbs = tensors[probsName.GetString()!];
            Assert.True(actual.softmax(-1).allclose(expectedProbs, rtol: 0, atol: 1e-6), $"{name}: probabilities differ");
        }
    }

    [Fact]
    public void PipelinesHaveHuggingFacesProcessorsInHuggingFacesOrder()
    {
        var (root, _) = Data.Value;
        foreach (var name in new[] { "pipeline_greedy", "pipeline_sample" })
        {
            var fixture = root.GetProperty("cases").EnumerateArray().Single(c => c.GetProperty("name").GetString() == name);
            var kwargs = fixture.GetProperty("kwargs");
            var expectedClasses = kwargs.GetProperty("processors").EnumerateArray()
                .Concat(kwargs.TryGetProperty("warpers", out var w) ? w.EnumerateArray() : Enumerable.Empty<JsonElement>())
                .Select(e => e.GetString()).ToArray();
            var pipeline = (LogitsProcessorList)Build(fixture);
            Assert.Equal(expectedClasses, pipeline.Select(p => p.GetType().Name).ToArray());
        }
    }

    internal static void AssertSameScores(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        Assert.Equal(expected.dtype, actual.dtype);
        var expectedNegInf = expected.isneginf();
        Assert.True(expectedNegInf.eq(actual.isneginf()).all().item<bool>(), $"{what}: -inf positions differ");
        var finite = expectedNegInf.logical_not();
        var maxError = (expected.masked_select(finite) - actual.masked_select(finite)).abs().max().item<float>();
        Assert.True(maxError <= 1e-6f, $"{what}: max |difference| {maxError} > 1e-6");
    }

    private static ILogitsProcessor Build(JsonElement fixture)
    {
        var kwargs = fixture.GetProperty("kwargs");
        double D(string key) => kwargs.GetProperty(key).GetDouble();
        int I(string key) => kwargs.GetProperty(key).GetInt32();
        int[] Eos() => kwargs.GetProperty("eos_token_id") is { ValueKind: JsonValueKind.Array } list
            ? list.EnumerateArray().Select(e => e.GetInt32()).ToArray()
            : [I("eos_token_id")];
        int Keep() => kwargs.TryGetProperty("min_tokens_to_keep", out var keep) ? keep.GetInt32() : 1;

        return fixture.GetProperty("class").GetString() switch
        {
            "RepetitionPenaltyLogitsProcessor" => new RepetitionPenaltyLogitsProcessor(D("penalty")),
            "TemperatureLogitsWarper" => new TemperatureLogitsWarper(D("temperature")),
            "TopKLogitsWarper" => new TopKLogitsWarper(I("top_k"), Keep()),
            "TopPLogitsWarper" => new TopPLogitsWarper(D("top_p"), Keep()),
            "NoRepeatNGramLogitsProcessor" => new NoRepeatNGramLogitsProcessor(I("ngram_size")),
            "MinLengthLogitsProcessor" => new MinLengthLogitsProcessor(I("min_length"), Eos()),
            "MinNewTokensLengthLogitsProcessor" => new MinNewTokensLengthLogitsProcessor(I("prompt_length_to_skip"), I("min_new_tokens"), Eos()),
            "TypicalLogitsWarper" => new TypicalLogitsWarper(D("mass"), Keep()),
            "EpsilonLogitsWarper" => new EpsilonLogitsWarper(D("epsilon"), Keep()),
            "EtaLogitsWarper" => new EtaLogitsWarper(D("epsilon"), Keep()),
            // The configurations the fixture's pipelines were built from (kwargs.built_by), through our own builder.
            "LogitsProcessorList" when fixture.GetProperty("name").GetString() == "pipeline_greedy" =>
                LogitsProcessorList.Create(new GenerationConfig
                {
                    RepetitionPenalty = 1.1, NoRepeatNgramSize = 2, MinNewTokens = 5, EosTokenId = [3], PadTokenId = 0,
                }, promptLength: 8),
            "LogitsProcessorList" =>
                LogitsProcessorList.Create(new GenerationConfig
                {
                    DoSample = true, Temperature = 0.7, TopK = 5, TopP = 0.85,
                    RepetitionPenalty = 1.1, NoRepeatNgramSize = 2, MinNewTokens = 5, EosTokenId = [3], PadTokenId = 0,
                }, promptLength: 8),
            var other => throw new InvalidOperationException($"no mapping for fixture class {other}"),
        };
    }
}
