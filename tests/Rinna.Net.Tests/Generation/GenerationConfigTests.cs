using Rinna.Net.Generation;

namespace Rinna.Net.Tests.Generation;

public class GenerationConfigTests
{
    [Fact]
    public void DefaultsAreHuggingFaces()
    {
        var config = new GenerationConfig();
        Assert.False(config.DoSample);
        Assert.Equal(20, config.MaxLength);
        Assert.Null(config.MaxNewTokens);
        Assert.Equal(0, config.MinLength);
        Assert.Null(config.MinNewTokens);
        Assert.Equal(1.0, config.Temperature);
        Assert.Equal(50, config.TopK);
        Assert.Equal(1.0, config.TopP);
        Assert.Equal(1.0, config.TypicalP);
        Assert.Null(config.MinP);
        Assert.Equal(0.0, config.EpsilonCutoff);
        Assert.Equal(0.0, config.EtaCutoff);
        Assert.Equal(1.0, config.RepetitionPenalty);
        Assert.Equal(0, config.NoRepeatNgramSize);
        Assert.Null(config.BadWordsIds);
        Assert.Null(config.EosTokenId);
        Assert.Null(config.PadTokenId);
        Assert.Null(config.StopStrings);
        Assert.Null(config.Seed);
        Assert.True(config.UseCache);
        config.Validate();
    }

    [Theory]
    [InlineData("tiny-neox-rinna", 2, 3, 0)]
    [InlineData("tiny-neox-pythia", 0, 0, null)]
    public void ReadsTheFixturesGenerationConfig(string model, int bos, int eos, int? pad)
    {
        var config = GenerationConfig.FromFile(Path.Combine(Fixtures.Model(model), "generation_config.json"));
        Assert.Equal(bos, config.BosTokenId);
        Assert.Equal([eos], config.EosTokenId);
        Assert.Equal(pad, config.PadTokenId);
        Assert.Equal(pad ?? eos, config.ResolvePadTokenId());
        Assert.Equal(new GenerationConfig().TopK, config.TopK);
    }

    [Fact]
    public void ReadsEveryFieldUnderItsHuggingFaceName()
    {
        var config = GenerationConfig.FromJson("""
            {"do_sample": true, "max_length": 64, "max_new_tokens": 128, "min_length": 2, "min_new_tokens": 3,
             "temperature": 0.7, "top_k": 0, "top_p": 0.85, "min_p": 0.05, "typical_p": 0.95, "epsilon_cutoff": 3e-4,
             "eta_cutoff": 4e-4, "repetition_penalty": 1.1, "no_repeat_ngram_size": 3, "bad_words_ids": [[5], [6, 7]],
             "renormalize_logits": true, "eos_token_id": [3, 7], "pad_token_id": 0, "bos_token_id": 2,
             "stop_strings": ["ユーザー:", "\n\n"], "use_cache": false,
             "num_beams": 1, "transformers_version": "4.38.0", "_from_model_config": true, "some_future_key": {"a": [1]}}
            """);
        Assert.True(config.DoSample);
        Assert.Equal(64, config.MaxLength);
        Assert.Equal(128, config.MaxNewTokens);
        Assert.Equal(2, config.MinLength);
        Assert.Equal(3, config.MinNewTokens);
        Assert.Equal(0.7, config.Temperature);
        Assert.Equal(0, config.TopK);
        Assert.Equal(0.85, config.TopP);
        Assert.Equal(0.05, config.MinP);
        Assert.Equal(0.95, config.TypicalP);
        Assert.Equal(3e-4, config.EpsilonCutoff);
        Assert.Equal(4e-4, config.EtaCutoff);
        Assert.Equal(1.1, config.RepetitionPenalty);
        Assert.Equal(3, config.NoRepeatNgramSize);
        Assert.Equal([[5], [6, 7]], config.BadWordsIds!.Select(ids => ids.ToArray()).ToArray());
        Assert.True(config.RenormalizeLogits);
        Assert.Equal([3, 7], config.EosTokenId);
        Assert.Equal(0, config.PadTokenId);
        Assert.Equal(2, config.BosTokenId);
        Assert.Equal(["ユーザー:", "\n\n"], config.StopStrings);
        Assert.False(config.UseCache);
    }

    [Fact]
    public void NullMeansTheDefaultAndAStopStringMayBeASingleString()
    {
        var config = GenerationConfig.FromJson("""{"temperature": null, "top_k": null, "eos_token_id": null, "stop_strings": "</s>", "max_length": 3.0}""");
        Assert.Equal(1.0, config.Temperature);
        Assert.Equal(50, config.TopK);
        Assert.Null(config.EosTokenId);
        Assert.Equal(["</s>"], config.StopStrings);
        Assert.Equal(3, config.MaxLength);
    }

    [Theory]
    [InlineData("""{"temperature": "hot"}""", "temperature", "\"hot\"")]
    [InlineData("""{"top_k": 5.5}""", "top_k", "5.5")]
    [InlineData("""{"do_sample": 1}""", "do_sample", "1")]
    [InlineData("""{"eos_token_id": [3, "x"]}""", "eos_token_id", "\"x\"")]
    [InlineData("""{"bad_words_ids": [5, 6]}""", "bad_words_ids", "5")]
    [InlineData("""{"stop_strings": [1]}""", "stop_strings", "1")]
    [InlineData("""{"max_new_tokens": 0}""", "max_new_tokens", "0")]
    [InlineData("""{"do_sample": true, "temperature": 0}""", "temperature", "0")]
    [InlineData("""{"do_sample": true, "top_p": 1.5}""", "top_p", "1.5")]
    [InlineData("""{"repetition_penalty": -1}""", "repetition_penalty", "-1")]
    public void AWrongValueNamesTheFileTheFieldAndTheValue(string json, string field, string value)
    {
        var ex = Assert.Throws<ModelConfigException>(() => GenerationConfig.FromJson(json, "generation_config.json"));
        Assert.Equal("generation_config.json", ex.File);
        Assert.Equal(field, ex.Field);
        Assert.Contains(value, ex.Message);
    }

    [Theory]
    [InlineData("[1, 2]")]
    [InlineData("{")]
    public void NotAJsonObjectIsAConfigError(string json)
    {
        var ex = Assert.Throws<ModelConfigException>(() => GenerationConfig.FromJson(json, "g.json"));
        Assert.Equal("g.json", ex.File);
    }

    [Fact]
    public void AMissingFileIsAConfigErrorNamingIt()
    {
        var path = Path.Combine(Path.GetTempPath(), $"missing-{Guid.NewGuid():N}", "generation_config.json");
        var ex = Assert.Throws<ModelConfigException>(() => GenerationConfig.FromFile(path));
        Assert.Equal(path, ex.File);
    }

    public static TheoryData<GenerationConfig, string> InvalidConfigs() => new()
    {
        { new GenerationConfig { DoSample = true, Temperature = 0 }, nameof(GenerationConfig.Temperature) },
        { new GenerationConfig { DoSample = true, Temperature = -0.5 }, nameof(GenerationConfig.Temperature) },
        { new GenerationConfig { DoSample = true, Temperature = double.NaN }, nameof(GenerationConfig.Temperature) },
        { new GenerationConfig { DoSample = true, TopK = -1 }, nameof(GenerationConfig.TopK) },
        { new GenerationConfig { DoSample = true, TopP = -0.1 }, nameof(GenerationConfig.TopP) },
        { new GenerationConfig { DoSample = true, TopP = 1.01 }, nameof(GenerationConfig.TopP) },
        { new GenerationConfig { DoSample = true, TypicalP = 0 }, nameof(GenerationConfig.TypicalP) },
        { new GenerationConfig { DoSample = true, MinP = 2 }, nameof(GenerationConfig.MinP) },
        { new GenerationConfig { DoSample = true, EpsilonCutoff = 1 }, nameof(GenerationConfig.EpsilonCutoff) },
        { new GenerationConfig { DoSample = true, EtaCutoff = -1e-3 }, nameof(GenerationConfig.EtaCutoff) },
        { new GenerationConfig { MaxNewTokens = 0 }, nameof(GenerationConfig.MaxNewTokens) },
        { new GenerationConfig { MaxLength = 0 }, nameof(GenerationConfig.MaxLength) },
        { new GenerationConfig { MinNewTokens = -1 }, nameof(GenerationConfig.MinNewTokens) },
        { new GenerationConfig { RepetitionPenalty = 0 }, nameof(GenerationConfig.RepetitionPenalty) },
        { new GenerationConfig { NoRepeatNgramSize = -2 }, nameof(GenerationConfig.NoRepeatNgramSize) },
        { new GenerationConfig { EosTokenId = [] }, nameof(GenerationConfig.EosTokenId) },
        { new GenerationConfig { EosTokenId = [3, -1] }, nameof(GenerationConfig.EosTokenId) },
        { new GenerationConfig { PadTokenId = -1 }, nameof(GenerationConfig.PadTokenId) },
        { new GenerationConfig { BadWordsIds = [[]] }, nameof(GenerationConfig.BadWordsIds) },
        { new GenerationConfig { StopStrings = [""] }, nameof(GenerationConfig.StopStrings) },
    };

    [Theory]
    [MemberData(nameof(InvalidConfigs))]
    public void ContradictoryOrOutOfRangeSettingsAreRejected(GenerationConfig config, string field)
    {
        var ex = Assert.Throws<ArgumentException>(config.Validate);
        Assert.Equal(field, ex.ParamName);
    }

    [Fact]
    public void TemperatureZeroPointsToGreedyDecoding()
    {
        var ex = Assert.Throws<ArgumentException>(new GenerationConfig { DoSample = true, Temperature = 0 }.Validate);
        Assert.Contains("DoSample = false", ex.Message);
    }

    [Fact]
    public void SamplingOnlySettingsAreIgnoredByGreedyDecodingAndTopPZeroIsValid()
    {
        // Hugging Face only warns about these when do_sample is off.
        new GenerationConfig { Temperature = 0, TopP = 0, TopK = -1 }.Validate();
        // top_p = 0 keeps only the most likely token, as Hugging Face's TopPLogitsWarper does.
        new GenerationConfig { DoSample = true, TopP = 0 }.Validate();
    }

    [Theory]
    [InlineData(null, 20, 5, 15)]
    [InlineData(null, 20, 25, 1)] // Hugging Face still generates one token when the prompt reaches max_length
    [InlineData(8, 20, 25, 8)]
    public void TheTokenBudgetFollowsMaxNewTokensThenMaxLength(int? maxNewTokens, int maxLength, int promptLength, int expected)
    {
        var config = new GenerationConfig { MaxNewTokens = maxNewTokens, MaxLength = maxLength };
        Assert.Equal(expected, config.ResolveMaxNewTokens(promptLength));
    }

    [Fact]
    public void MergeTakesEveryNonDefaultOverride()
    {
        var model = new GenerationConfig { EosTokenId = [3], PadTokenId = 0, BosTokenId = 2, TopK = 40 };
        var merged = model.MergeFrom(new GenerationConfig { DoSample = true, MaxNewTokens = 128, Temperature = 0.7, RepetitionPenalty = 1.1, Seed = 7 });
        Assert.True(merged.DoSample);
        Assert.Equal(128, merged.MaxNewTokens);
        Assert.Equal(0.7, merged.Temperature);
        Assert.Equal(1.1, merged.RepetitionPenalty);
        Assert.Equal(7, merged.Seed);
        Assert.Equal(40, merged.TopK);
        Assert.Equal([3], merged.EosTokenId);
        Assert.Equal(0, merged.PadTokenId);
        Assert.Equal(2, merged.BosTokenId);
        Assert.False(model.DoSample); // the original is untouched
    }

    [Fact]
    public void ListsAreCopiedSoACallerCannotChangeAConfigurationLater()
    {
        var eos = new List<int> { 3 };
        var stops = new[] { "a" };
        var config = new GenerationConfig { EosTokenId = eos, StopStrings = stops };
        eos.Add(7);
        stops[0] = "b";
        Assert.Equal([3], config.EosTokenId);
        Assert.Equal(["a"], config.StopStrings);

        var copy = config with { Temperature = 0.5 };
        Assert.Equal(config.EosTokenId, copy.EosTokenId);
        Assert.Equal(0.5, copy.Temperature);
        Assert.Equal(1.0, config.Temperature);
    }
}
