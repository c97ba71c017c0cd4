using Rinna.Net.Generation;

namespace Rinna.Net.Tests.Generation;

/// <summary>The beam-search and speculation fields of <see cref="GenerationConfig"/>, as generation_config.json spells them.</summary>
public class BeamSearchConfigTests
{
    [Theory]
    [InlineData("true", EarlyStopping.True)]
    [InlineData("false", EarlyStopping.False)]
    [InlineData("\"never\"", EarlyStopping.Never)]
    public void EarlyStoppingReadsHuggingFacesValues(string json, EarlyStopping expected)
    {
        var config = GenerationConfig.FromJson($$"""{"num_beams": 4, "early_stopping": {{json}}}""");
        Assert.Equal(expected, config.EarlyStopping);
        Assert.Equal(4, config.NumBeams);
    }

    [Fact]
    public void ReadsBeamAndLookupFields()
    {
        var config = GenerationConfig.FromJson("""{"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.5, "prompt_lookup_num_tokens": null}""");
        Assert.Equal(2, config.NumReturnSequences);
        Assert.Equal(0.5, config.LengthPenalty);
        Assert.Null(config.PromptLookupNumTokens);
        Assert.Equal(1, new GenerationConfig().NumBeams);
        Assert.Equal(EarlyStopping.False, new GenerationConfig().EarlyStopping);
    }

    [Theory]
    [InlineData("""{"early_stopping": "always"}""", "early_stopping")]
    [InlineData("""{"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0}""", "num_beam_groups")]
    [InlineData("""{"num_beams": 4, "diversity_penalty": 0.5}""", "diversity_penalty")]
    [InlineData("""{"num_beams": 4, "force_words_ids": [[5]]}""", "force_words_ids")]
    [InlineData("""{"num_beams": 2, "num_return_sequences": 3}""", "num_return_sequences")]
    [InlineData("""{"num_beams": 0}""", "num_beams")]
    [InlineData("""{"prompt_lookup_num_tokens": 0}""", "prompt_lookup_num_tokens")]
    public void RejectsWhatIsNotImplementedOrInvalid(string json, string field)
    {
        var error = Assert.Throws<ModelConfigException>(() => GenerationConfig.FromJson(json, "generation_config.json"));
        Assert.Equal(field, error.Field);
    }

    [Fact]
    public void ReadsAssistedDecodingFields()
    {
        var config = GenerationConfig.FromJson("""{"num_assistant_tokens": 3, "num_assistant_tokens_schedule": "constant"}""");
        Assert.Equal((3, AssistantTokensSchedule.Constant), (config.NumAssistantTokens, config.NumAssistantTokensSchedule));
        Assert.Equal((5, AssistantTokensSchedule.Heuristic), (new GenerationConfig().NumAssistantTokens, new GenerationConfig().NumAssistantTokensSchedule));
        Assert.Equal("num_assistant_tokens_schedule", Assert.Throws<ModelConfigException>(
            () => GenerationConfig.FromJson("""{"num_assistant_tokens_schedule": "sometimes"}""")).Field);
    }

    [Fact]
    public void AcceptsHarmlessDefaultsOfUnsupportedFeatures()
    {
        var config = GenerationConfig.FromJson("""{"num_beams": 2, "num_beam_groups": 1, "diversity_penalty": 0.0, "constraints": null}""");
        Assert.Equal(2, config.NumBeams);
    }

    [Fact]
    public void MergeFromCarriesTheNewFields()
    {
        var merged = new GenerationConfig { NumBeams = 2 }.MergeFrom(new GenerationConfig
        {
            NumReturnSequences = 2, LengthPenalty = 2, EarlyStopping = EarlyStopping.Never, PromptLookupNumTokens = 3,
        });
        Assert.Equal((2, 2, 2.0, EarlyStopping.Never, (int?)3),
            (merged.NumBeams, merged.NumReturnSequences, merged.LengthPenalty, merged.EarlyStopping, merged.PromptLookupNumTokens));
    }
}
