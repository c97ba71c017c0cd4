using Rinna.Net.Model.Adapters;

namespace Rinna.Net.Tests.Model.Adapters;

public class LoraConfigTests
{
    [Theory]
    [InlineData("""{"peft_type": "IA3"}""", "peft_type")]
    [InlineData("""{"peft_type": "LORA", "bias": "all"}""", "bias")]
    [InlineData("""{"peft_type": "LORA", "bias": "lora_only"}""", "bias")]
    [InlineData("""{"peft_type": "LORA", "use_dora": true}""", "use_dora")]
    [InlineData("""{"peft_type": "LORA", "r": 0}""", "r")]
    [InlineData("""{"peft_type": "LORA", "target_modules": "(unclosed"}""", "target_modules")]
    [InlineData("""{"peft_type": "LORA", "layer_replication": [[0, 1]]}""", "layer_replication")]
    public void RejectsWhatIsNotSupportedNamingTheField(string json, string field)
    {
        var error = Assert.Throws<AdapterConfigException>(() => LoraConfig.FromJson(json, "adapter_config.json"));
        Assert.Equal(field, error.Field);
        Assert.Contains(field, error.Message);
    }

    [Fact]
    public void TargetsByNameSuffixExactNameRegexAndAllLinear()
    {
        var byName = LoraConfig.FromJson("""{"peft_type": "LORA", "target_modules": ["query_key_value", "gpt_neox.layers.1.mlp.dense_h_to_4h"]}""");
        Assert.True(byName.Targets("gpt_neox.layers.0.attention.query_key_value"));
        Assert.True(byName.Targets("gpt_neox.layers.1.mlp.dense_h_to_4h"));
        Assert.False(byName.Targets("gpt_neox.layers.0.mlp.dense_h_to_4h"));
        Assert.False(byName.Targets("gpt_neox.layers.0.attention.dense"));

        var regex = LoraConfig.FromJson("""{"peft_type": "LORA", "target_modules": ".*\\.mlp\\..*"}""");
        Assert.True(regex.Targets("gpt_neox.layers.0.mlp.dense_4h_to_h"));
        Assert.False(regex.Targets("gpt_neox.layers.0.attention.dense"));

        var all = LoraConfig.FromJson("""{"peft_type": "LORA", "target_modules": "all-linear"}""");
        Assert.True(all.Targets("gpt_neox.layers.0.attention.dense"));
        Assert.False(all.Targets("embed_out", isOutputHead: true));

        var defaults = LoraConfig.FromJson("""{"peft_type": "LORA", "target_modules": null}""");
        Assert.True(defaults.Targets("gpt_neox.layers.3.attention.query_key_value"));
    }

    [Fact]
    public void LayersToTransformAndExcludes()
    {
        var config = LoraConfig.FromJson("""{"peft_type": "LORA", "target_modules": ["dense"], "layers_to_transform": 1, "layers_pattern": "layers", "exclude_modules": ["gpt_neox.layers.1.mlp.dense"]}""");
        Assert.True(config.Targets("gpt_neox.layers.1.attention.dense"));
        Assert.False(config.Targets("gpt_neox.layers.0.attention.dense"));
        Assert.False(config.Targets("gpt_neox.layers.1.mlp.dense"));
    }

    [Fact]
    public void ScalingFollowsRsLoraAndPatterns()
    {
        var config = LoraConfig.FromJson("""{"peft_type": "LORA", "r": 16, "lora_alpha": 32, "rank_pattern": {"dense": 4}, "alpha_pattern": {"dense": 8}}""");
        Assert.Equal((16, 2.0), config.RankAndScaling("gpt_neox.layers.0.attention.query_key_value"));
        Assert.Equal((4, 2.0), config.RankAndScaling("gpt_neox.layers.0.attention.dense"));
        var rs = LoraConfig.FromJson("""{"peft_type": "LORA", "r": 16, "lora_alpha": 32, "use_rslora": true}""");
        Assert.Equal((16, 8.0), rs.RankAndScaling("gpt_neox.layers.0.attention.query_key_value"));
    }
}
