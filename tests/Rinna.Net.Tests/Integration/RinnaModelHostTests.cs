using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Rinna.Net.Integration;
using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;

namespace Rinna.Net.Tests.Integration;

/// <summary>What a host configures through <c>AddRinna</c>, and how a failed load recovers.</summary>
public sealed class RinnaModelHostTests : IDisposable
{
    private readonly TinyChatModel tiny = new();

    public void Dispose() => tiny.Dispose();

    [Fact]
    public async Task ConfigurationSaysTheModelCardsSwitches()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Rinna:ModelId"] = tiny.Directory,
            ["Rinna:LoadIn8Bit"] = "true",
            ["Rinna:Int8Threshold"] = "0",
            ["Rinna:DeviceMap"] = "auto",
            ["Rinna:MaxMemory:cpu"] = "1GiB",
            ["Rinna:TopK"] = "5",
        }).Build();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddRinna(configuration.GetSection("Rinna"));
        await using var provider = services.BuildServiceProvider();

        var model = provider.GetRequiredService<GptNeoXForCausalLM>();
        var int8 = model.modules().OfType<Int8Linear>().ToList();
        Assert.Equal(4 * model.Config.NumHiddenLayers, int8.Count); // every linear layer but the head
        Assert.All(int8, layer => Assert.Equal(0, layer.Threshold));
        Assert.All(model.HfDeviceMap.Values, device => Assert.Equal("cpu", device));
        var client = (RinnaChatClient)provider.GetRequiredService<IChatClient>();
        Assert.Equal(5, client.ToGenerationConfig(null, 3, 0).TopK);
    }

    [Fact]
    public async Task ConfigurationSaysLoadIn4Bit()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Rinna:ModelId"] = tiny.Directory,
            ["Rinna:LoadIn4Bit"] = "true",
            ["Rinna:Bnb4BitQuantType"] = "nf4",
            ["Rinna:Bnb4BitUseDoubleQuant"] = "true",
        }).Build();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddRinna(configuration.GetSection("Rinna"));
        await using var provider = services.BuildServiceProvider();

        var model = provider.GetRequiredService<GptNeoXForCausalLM>();
        var layers = model.modules().OfType<Bnb4BitLinear>().ToList();
        Assert.Equal(4 * model.Config.NumHiddenLayers, layers.Count);
        Assert.All(layers, layer => Assert.True(layer.QuantType == "nf4" && layer.UsesDoubleQuant));
    }

    [Fact]
    public async Task AFailedLoadIsTriedAgainAfterItsDelay()
    {
        var directory = Path.Combine(tiny.Directory, "later");
        var host = new RinnaModelHost(Microsoft.Extensions.Options.Options.Create(new RinnaOptions
        {
            ModelId = directory, ChatFormat = Rinna.Net.Generation.RinnaChatFormat.Bilingual, LoadRetryDelay = TimeSpan.FromMilliseconds(200),
        }));
        await using (host)
        {
            var first = await Assert.ThrowsAnyAsync<Exception>(() => host.GetAsync());
            Assert.Same(first.GetType(), host.LoadState.Failure?.GetType());
            Assert.False(host.LoadState.Loaded);

            // The model appears; within the delay the failure stands, after it the next request loads.
            Directory.CreateDirectory(directory);
            foreach (var file in Directory.GetFiles(tiny.Directory)) File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
            await Task.Delay(300);
            var (model, _) = await host.GetAsync();
            Assert.NotNull(model);
            Assert.True(host.LoadState.Loaded);
            Assert.Null(host.LoadState.Failure);
        }
    }
}
