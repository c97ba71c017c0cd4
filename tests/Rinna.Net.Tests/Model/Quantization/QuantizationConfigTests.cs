using Rinna.Net.Model.Quantization;

namespace Rinna.Net.Tests.Model.Quantization;

public class QuantizationConfigTests
{
    [Fact]
    public void DefaultsFollowBitsAndBytesConfig()
    {
        var config = new QuantizationConfig();
        Assert.False(config.LoadIn8Bit);
        Assert.Equal(6.0, config.Int8Threshold);
        Assert.Equal(["embed_out"], config.SkipModules);
        Assert.False(config.ShouldQuantize("gpt_neox.layers.0.mlp.dense_h_to_4h"));
    }

    [Theory]
    [InlineData("gpt_neox.layers.0.attention.query_key_value", true)]
    [InlineData("gpt_neox.layers.35.mlp.dense_4h_to_h", true)]
    [InlineData("embed_out", false)]
    [InlineData("model.embed_out", false)]
    [InlineData("embed_outer", true)]
    [InlineData("my_embed_out", true)]
    public void SkipModulesMatchWholeDottedSegments(string module, bool quantized)
    {
        var config = new QuantizationConfig { LoadIn8Bit = true };
        Assert.Equal(quantized, config.ShouldQuantize(module));
    }

    [Fact]
    public void MultiSegmentSkipEntriesMatchInside()
    {
        var config = new QuantizationConfig { LoadIn8Bit = true, SkipModules = ["embed_out", "layers.3.attention"] };
        Assert.False(config.ShouldQuantize("gpt_neox.layers.3.attention.dense"));
        Assert.True(config.ShouldQuantize("gpt_neox.layers.31.attention.dense"));
        Assert.True(config.ShouldQuantize("gpt_neox.layers.3.mlp.dense_h_to_4h"));
    }

    [Fact]
    public void ValidateNamesTheBadValue()
    {
        Assert.Contains("NaN", Assert.Throws<ArgumentException>(() => new QuantizationConfig { Int8Threshold = double.NaN }.Validate()).Message);
        Assert.Throws<ArgumentException>(() => new QuantizationConfig { SkipModules = ["embed_out", " "] }.Validate());
        new QuantizationConfig { Int8Threshold = 0, SkipModules = [] }.Validate();
    }

    [Fact]
    public void FourBitDefaultsFollowBitsAndBytesConfig()
    {
        var config = new QuantizationConfig();
        Assert.False(config.LoadIn4Bit);
        Assert.Equal("fp4", config.Bnb4BitQuantType);
        Assert.False(config.Bnb4BitUseDoubleQuant);
        Assert.Equal(TorchDtype.Float32, config.Bnb4BitComputeDtype);
        config.LoadIn4Bit = true;
        Assert.True(config.ShouldQuantize("gpt_neox.layers.0.mlp.dense_h_to_4h"));
        Assert.False(config.ShouldQuantize("embed_out"));
    }

    [Fact]
    public void EightAndFourBitTogetherAreRefusedNamingBoth()
    {
        var error = Assert.Throws<ArgumentException>(() => new QuantizationConfig { LoadIn8Bit = true, LoadIn4Bit = true }.Validate());
        Assert.Contains("LoadIn8Bit", error.Message);
        Assert.Contains("LoadIn4Bit", error.Message);
    }

    [Theory]
    [InlineData("int4")]
    [InlineData("NF4")]
    [InlineData("")]
    public void AnUnknownFourBitTypeIsRefusedByName(string type)
    {
        var error = Assert.Throws<ArgumentException>(() => new QuantizationConfig { LoadIn4Bit = true, Bnb4BitQuantType = type }.Validate());
        Assert.Contains($"\"{type}\"", error.Message);
        Assert.Equal("Bnb4BitQuantType", error.ParamName);
    }
}
