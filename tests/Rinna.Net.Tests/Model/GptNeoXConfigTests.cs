using Rinna.Net.Model;

namespace Rinna.Net.Tests.Model;

public class GptNeoXConfigTests
{
    [Fact]
    public void RinnaStyleFileKeepsItsValuesAndTakesHfDefaultsForTheRest()
    {
        var config = GptNeoXConfig.FromFile(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "config.json"));
        Assert.Equal(1.0, config.RotaryPct);
        Assert.False(config.UseParallelResidual);
        Assert.True(config.AttentionBias); // absent from rinna's file: HF default
        Assert.Null(config.RopeScaling);
        Assert.Equal(16, config.HeadSize);
        Assert.Equal(16, config.RotaryNdims);
        Assert.Equal((2, 3), (config.BosTokenId, config.EosTokenId));
    }

    [Fact]
    public void MissingFieldsTakeHuggingFaceDefaultsNotRinnas()
    {
        var config = GptNeoXConfig.FromJson("{\"model_type\":\"gpt_neox\",\"hidden_size\":64,\"num_attention_heads\":4}");
        Assert.Equal(0.25, config.RotaryPct);
        Assert.True(config.UseParallelResidual);
        Assert.Equal(4, config.RotaryNdims);
        Assert.Equal("gelu", config.HiddenAct);
    }

    [Fact]
    public void RopeScalingIsParsed()
    {
        var config = GptNeoXConfig.FromJson("{\"hidden_size\":64,\"num_attention_heads\":4,\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}}");
        Assert.Equal(new RopeScaling("linear", 4.0), config.RopeScaling);
    }

    [Theory]
    [InlineData("{\"hidden_size\":65,\"num_attention_heads\":4}", "num_attention_heads", "not divisible")]
    [InlineData("{\"hidden_size\":64,\"num_attention_heads\":4,\"hidden_act\":\"mish\"}", "hidden_act", "'mish'")]
    [InlineData("{\"hidden_size\":-64,\"num_attention_heads\":4}", "hidden_size", "-64")]
    [InlineData("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4}", "model_type", "'llama'")]
    [InlineData("{\"hidden_size\":\"64\",\"num_attention_heads\":4}", "hidden_size", "expected an integer")]
    [InlineData("{\"hidden_size\":64.5,\"num_attention_heads\":4}", "hidden_size", "64.5")]
    [InlineData("{\"hidden_size\":64,\"num_attention_heads\":4,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":2}}", "rope_scaling", "'yarn'")]
    [InlineData("{\"hidden_size\":64,\"num_attention_heads\":4,\"rope_scaling\":{\"type\":\"linear\",\"factor\":0.5}}", "rope_scaling", "0.5")]
    [InlineData("{\"hidden_size\":64,\"num_attention_heads\":4,\"rotary_pct\":1.5}", "rotary_pct", "1.5")]
    [InlineData("{\"hidden_size\":64,\"num_attention_heads\":4,\"layer_norm_eps\":0}", "layer_norm_eps", "0")]
    [InlineData("{\"hidden_size\":64,\"num_attention_heads\":4,\"torch_dtype\":\"int4\"}", "torch_dtype", "'int4'")]
    [InlineData("{\"hidden_size\":64,\"num_attention_heads\":4,\"use_parallel_residual\":\"yes\"}", "use_parallel_residual", "boolean")]
    public void InvalidValuesNameTheFieldAndTheValue(string json, string field, string detail)
    {
        var ex = Assert.Throws<ModelConfigException>(() => GptNeoXConfig.FromJson(json, "config.json"));
        Assert.Equal(field, ex.Field);
        Assert.Contains(field, ex.Message);
        Assert.Contains(detail, ex.Message);
        Assert.StartsWith("config.json", ex.Message);
    }

    [Theory]
    [InlineData("")]
    [InlineData("not json")]
    [InlineData("[]")]
    [InlineData("{\"hidden_size\":")]
    public void NonObjectsAreRejected(string json) =>
        Assert.Throws<ModelConfigException>(() => GptNeoXConfig.FromJson(json, "config.json"));

    [Fact]
    public void MissingFileIsAConfigError()
    {
        var ex = Assert.Throws<ModelConfigException>(() => GptNeoXConfig.FromFile("/nonexistent/config.json"));
        Assert.Contains("/nonexistent/config.json", ex.Message);
    }
}

public class GptNeoXConfigRoundTripTests
{
    [Theory]
    [InlineData("tiny-neox-rinna")]
    [InlineData("tiny-neox-pythia")]
    public void ToJsonReadsBackEqual(string fixture)
    {
        var config = GptNeoXConfig.FromFile(Path.Combine(Fixtures.Model(fixture), "config.json"));
        Assert.Equal(config, GptNeoXConfig.FromJson(config.ToJson()));
        var scaled = config with { RopeScaling = new RopeScaling("dynamic", 2.0) };
        Assert.Equal(scaled, GptNeoXConfig.FromJson(scaled.ToJson()));
    }
}
