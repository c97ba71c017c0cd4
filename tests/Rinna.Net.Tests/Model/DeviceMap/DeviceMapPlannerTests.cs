using Rinna.Net.Model.DeviceMap;
using Rinna.Net.Native;
using TorchSharp;

namespace Rinna.Net.Tests.Model.DeviceMap;

public class DeviceMapPlannerTests
{
    private const long Layer = 100;

    /// <summary>A 4-layer model: embeddings 50, layers 100 each, final norm 1, head 50 (bytes) — 502 in all.</summary>
    private static IReadOnlyList<ModuleFootprint> Model(int layers = 4)
    {
        var names = DeviceMapPlanner.GptNeoXModuleNames(layers);
        return names.Select(n => new ModuleFootprint(n, n switch
        {
            "gpt_neox.embed_in" or "embed_out" => 50,
            "gpt_neox.final_layer_norm" => 1,
            _ => Layer,
        })).ToList();
    }

    private static ComputeDevice[] Gpus(int count, long? memory = null)
        => [.. Enumerable.Range(0, count).Select(i => new ComputeDevice($"cuda:{i}", memory)), new ComputeDevice("cpu", null)];

    private static string[] Devices(IReadOnlyDictionary<string, string> plan) => [.. plan.Values];

    [Fact]
    public void ModuleNamesFollowGptNeoX()
    {
        Assert.Equal(
            ["gpt_neox.embed_in", "gpt_neox.layers.0", "gpt_neox.layers.1", "gpt_neox.final_layer_norm", "embed_out"],
            DeviceMapPlanner.GptNeoXModuleNames(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceMapPlanner.GptNeoXModuleNames(0));
    }

    [Fact]
    public void AutoWithoutGpusKeepsEverythingOnTheCpu()
    {
        var plan = DeviceMapPlanner.Plan("auto", Model(), Gpus(0));
        Assert.Equal(Model().Select(m => m.Name), plan.Keys);
        Assert.All(plan.Values, d => Assert.Equal("cpu", d));
    }

    [Theory]
    [InlineData("auto")]
    [InlineData("balanced")]
    [InlineData("sequential")]
    public void BudgetThatFitsAllPutsEverythingOnTheGpu(string spec)
    {
        var plan = DeviceMapPlanner.Plan(spec, Model(), Gpus(1, memory: 502));
        Assert.All(plan.Values, d => Assert.Equal("cuda:0", d));
    }

    [Fact]
    public void BudgetThatFitsNoneOffloadsEverything()
    {
        var maxMemory = new MaxMemory { { "cuda:0", 49 } };
        var plan = DeviceMapPlanner.Plan("auto", Model(), Gpus(1), maxMemory);
        Assert.All(plan.Values, d => Assert.Equal("cpu", d));
    }

    [Fact]
    public void BudgetThatFitsSomeFillsInOrderAndOffloadsTheRest()
    {
        // 50 + 100 + 100 = 250 fits in 300; the next layer would make 350.
        var plan = DeviceMapPlanner.Plan("sequential", Model(), Gpus(1, memory: 300));
        Assert.Equal(["cuda:0", "cuda:0", "cuda:0", "cpu", "cpu", "cpu", "cpu"], Devices(plan));
    }

    [Fact]
    public void FillingNeverReturnsToAnEarlierDevice()
    {
        // The final norm (1 byte) would still fit on cuda:0, but it runs after layers placed on the cpu.
        var plan = DeviceMapPlanner.Plan("sequential", Model(), Gpus(1), new MaxMemory { { "0", "352B" } });
        Assert.Equal(["cuda:0", "cuda:0", "cuda:0", "cuda:0", "cpu", "cpu", "cpu"], Devices(plan));
    }

    [Fact]
    public void SequentialFillsTheFirstGpuFirst()
    {
        var plan = DeviceMapPlanner.Plan(DeviceMapSpec.Sequential, Model(), Gpus(2, memory: 1000));
        Assert.All(plan.Values, d => Assert.Equal("cuda:0", d));
    }

    [Fact]
    public void BalancedSpreadsLayersOverTheGpus()
    {
        var plan = DeviceMapPlanner.Plan(DeviceMapSpec.Balanced, Model(8), Gpus(2, memory: 10_000));
        var onFirst = plan.Count(p => p.Value == "cuda:0");
        var onSecond = plan.Count(p => p.Value == "cuda:1");
        Assert.Equal(plan.Count, onFirst + onSecond);
        Assert.InRange(onFirst - onSecond, -2, 2);
        Assert.Equal(Devices(DeviceMapPlanner.Plan("auto", Model(8), Gpus(2, memory: 10_000))), Devices(plan));
        // Contiguous: once on cuda:1, never back on cuda:0.
        Assert.Equal(Devices(plan).OrderBy(d => d, StringComparer.Ordinal), Devices(plan));
    }

    [Fact]
    public void BalancedRespectsSmallBudgetsAndOffloads()
    {
        var plan = DeviceMapPlanner.Plan("balanced", Model(4), Gpus(2), new MaxMemory { { "cuda:0", 150 }, { "cuda:1", 100 } });
        Assert.Equal(["cuda:0", "cuda:0", "cuda:1", "cpu", "cpu", "cpu", "cpu"], Devices(plan));
    }

    [Fact]
    public void CpuBudgetTooSmallIsAClearError()
    {
        var error = Assert.Throws<ArgumentException>(() =>
            DeviceMapPlanner.Plan("auto", Model(), Gpus(1), new MaxMemory { { "cuda:0", "200B" }, { "cpu", "100B" } }));
        Assert.Contains("gpt_neox.layers.2", error.Message);
        Assert.Contains("disk", error.Message);
    }

    [Theory]
    [InlineData("cpu", "cpu")]
    [InlineData("cuda", "cuda:0")]
    [InlineData("cuda:1", "cuda:1")]
    [InlineData("1", "cuda:1")]
    public void SingleDevicePutsEverythingThere(string spec, string device)
    {
        var plan = DeviceMapPlanner.Plan(spec, Model(), Gpus(2, memory: 10));
        Assert.All(plan.Values, d => Assert.Equal(device, d));
    }

    [Fact]
    public void ExplicitMapUsesTheLongestMatchingKey()
    {
        var spec = DeviceMapSpec.FromAssignments(new Dictionary<string, string>
        {
            [""] = "cpu",
            ["gpt_neox.layers"] = "cuda:1",
            ["gpt_neox.layers.0"] = "0",
            ["embed_out"] = "cuda",
        });
        var plan = DeviceMapPlanner.Plan(spec, Model(), Gpus(2));
        Assert.Equal(["cpu", "cuda:0", "cuda:1", "cuda:1", "cuda:1", "cpu", "cuda:0"], Devices(plan));
    }

    [Fact]
    public void ExplicitMapMustPlaceEveryModule()
    {
        var spec = DeviceMapSpec.FromAssignments(new Dictionary<string, string> { ["gpt_neox"] = "cpu" });
        var error = Assert.Throws<ArgumentException>(() => DeviceMapPlanner.Plan(spec, Model(), Gpus(0)));
        Assert.Contains("'embed_out'", error.Message);
    }

    [Theory]
    [InlineData("gpt_neox.layers.4", "has 4 layers")]
    [InlineData("gpt_neox.layers.17.mlp", "layer 17")]
    [InlineData("gpt_neox.layers.0.attention", "part of module 'gpt_neox.layers.0'")]
    [InlineData("gpt_neox.embed", "unknown module 'gpt_neox.embed'")]
    [InlineData("lm_head", "unknown module 'lm_head'")]
    public void ExplicitMapWithBadModuleNamesIsAClearError(string key, string message)
    {
        var spec = DeviceMapSpec.FromAssignments(new Dictionary<string, string> { [""] = "cpu", [key] = "cpu" });
        var error = Assert.Throws<ArgumentException>(() => DeviceMapPlanner.Plan(spec, Model(), Gpus(0)));
        Assert.Contains(message, error.Message);
    }

    [Theory]
    [InlineData("cuda:2")]
    [InlineData("3")]
    public void UnavailableDevicesAreAClearError(string device)
    {
        var single = Assert.Throws<ArgumentException>(() => DeviceMapPlanner.Plan(device, Model(), Gpus(2)));
        Assert.Contains("not available", single.Message);
        var spec = DeviceMapSpec.FromAssignments(new Dictionary<string, string> { [""] = "cpu", ["embed_out"] = device });
        Assert.Contains("not available", Assert.Throws<ArgumentException>(() => DeviceMapPlanner.Plan(spec, Model(), Gpus(2))).Message);
        var budget = new MaxMemory { { device, 10 } };
        Assert.Contains("max_memory", Assert.Throws<ArgumentException>(() => DeviceMapPlanner.Plan("auto", Model(), Gpus(2), budget)).Message);
    }

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:x")]
    [InlineData("disk")]
    [InlineData("balanced_low_0")]
    [InlineData("")]
    [InlineData("mps")]
    public void InvalidSpecsNameTheValue(string spec)
    {
        var error = Assert.Throws<ArgumentException>(() => DeviceMapSpec.Parse(spec));
        Assert.Contains($"'{spec}'", error.Message);
    }

    [Fact]
    public void InvalidDeviceInAnExplicitMapNamesTheModule()
    {
        var error = Assert.Throws<ArgumentException>(() =>
            DeviceMapSpec.FromAssignments(new Dictionary<string, string> { ["embed_out"] = "tpu:0" }));
        Assert.Contains("embed_out", error.Message);
        Assert.Contains("'tpu:0'", error.Message);
    }

    [Fact]
    public void ParsedSpecsRoundTrip()
    {
        Assert.Same(DeviceMapSpec.Auto, DeviceMapSpec.Parse(" AUTO "));
        Assert.Equal(DeviceMapStrategy.SingleDevice, DeviceMapSpec.Parse("cuda:3").Strategy);
        Assert.Equal("cuda:3", DeviceMapSpec.Parse("3").ToString());
        Assert.Equal("sequential", DeviceMapSpec.Sequential.ToString());
        Assert.Equal("cpu", ((DeviceMapSpec)"cpu").Device);
    }

    [Fact]
    public void BadModuleListsAreRejected()
    {
        Assert.Throws<ArgumentException>(() => DeviceMapPlanner.Plan("auto", [], Gpus(0)));
        Assert.Throws<ArgumentException>(() => DeviceMapPlanner.Plan("auto", [new("a", 1), new("a", 2)], Gpus(0)));
        Assert.Throws<ArgumentException>(() => DeviceMapPlanner.Plan("auto", [new("a", -1)], Gpus(0)));
    }

    [Fact]
    public void DetectedDevicesListGpusThenTheCpuAndPlanOnThisMachine()
    {
        TorchSharpNativeLoader.EnsureInstalled();
        var devices = ComputeDevice.DetectAvailable();
        var gpus = torch.cuda.is_available() ? torch.cuda.device_count() : 0;
        Assert.Equal([.. Enumerable.Range(0, gpus).Select(i => $"cuda:{i}"), "cpu"], devices.Select(d => d.Name));
        var plan = DeviceMapPlanner.Plan("auto", Model(), devices);
        Assert.Equal(gpus == 0 ? "cpu" : "cuda:0", plan["gpt_neox.embed_in"]);
    }
}
