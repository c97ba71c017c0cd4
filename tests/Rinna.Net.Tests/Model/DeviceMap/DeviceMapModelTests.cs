using Rinna.Net.Model;
using Rinna.Net.Model.DeviceMap;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.DeviceMap;

/// <summary>device_map on a real model: placement is reported like hf_device_map and a split model computes the same logits.</summary>
public class DeviceMapModelTests
{
    [Fact]
    public async Task ExplicitMapIsReportedAndLogitsAreUnchanged()
    {
        var map = DeviceMapSpec.FromAssignments(new Dictionary<string, string>
        {
            ["gpt_neox.embed_in"] = "cpu", ["gpt_neox.layers.0"] = "cpu", ["gpt_neox.layers.1"] = "cpu", ["gpt_neox.layers.2"] = "cpu",
            ["gpt_neox.final_layer_norm"] = "cpu", ["embed_out"] = "cpu",
        });
        using var split = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-pythia"), new ModelLoadOptions { DeviceMap = map });
        using var whole = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-pythia"));
        Assert.Equal(["gpt_neox.embed_in", "gpt_neox.layers.0", "gpt_neox.layers.1", "gpt_neox.layers.2", "gpt_neox.final_layer_norm", "embed_out"],
            split.HfDeviceMap.Keys);
        Assert.All(split.HfDeviceMap.Values, d => Assert.Equal("cpu", d));
        using var ids = tensor(new long[] { 5, 99, 300, 7, 512 }).unsqueeze(0);
        using var a = split.Forward(ids);
        using var b = whole.Forward(ids);
        Assert.True(a.Logits.equal(b.Logits).all().item<bool>());
    }

    [Theory]
    [InlineData("auto")]
    [InlineData("balanced")]
    [InlineData("sequential")]
    [InlineData("cpu")]
    public async Task StrategiesPlaceEverythingOnTheCpuWithoutAGpu(string spec)
    {
        if (ComputeDevice.DetectAvailable().Any(d => d.Name.StartsWith("cuda", StringComparison.Ordinal)))
            Assert.Skip("a GPU is present, so these strategies place modules on it.");
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), new ModelLoadOptions { DeviceMap = spec });
        Assert.All(model.HfDeviceMap.Values, d => Assert.Equal("cpu", d));
    }

    [Theory]
    [InlineData("cuda:7")]
    [InlineData("tpu")]
    public async Task UnavailableDevicesAreClearErrors(string device)
    {
        var ex = await Assert.ThrowsAsync<ArgumentException>(() =>
            AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), new ModelLoadOptions { DeviceMap = device }));
        Assert.Contains(device, ex.Message);
    }

    [Fact]
    public async Task ACpuBudgetTooSmallForTheModelIsAClearError()
    {
        var ex = await Assert.ThrowsAsync<ArgumentException>(() => AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"),
            new ModelLoadOptions { DeviceMap = "auto", MaxMemory = new MaxMemory { { "cpu", 1000 } } }));
        Assert.Contains("cpu", ex.Message);
    }
}
