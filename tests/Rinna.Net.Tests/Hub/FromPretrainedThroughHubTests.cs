using Rinna.Net.Hub;
using Rinna.Net.Model.Adapters;
using Rinna.Net.Tests.Model.Adapters;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Hub;

/// <summary><c>AutoModelForCausalLM.FromPretrainedAsync("org/name")</c> end to end: download, cache, load, and the same logits as HF.</summary>
public sealed class FromPretrainedThroughHubTests : IAsyncLifetime
{
    private readonly HubSandbox sandbox = new();
    private FakeHub hub = null!;

    public async ValueTask InitializeAsync() => hub = await FakeHub.StartAsync();

    // xunit v3 calls DisposeAsync alone on a class that has both, so the sandbox goes here (it leaked a directory a test).
    public async ValueTask DisposeAsync()
    {
        await hub.DisposeAsync();
        sandbox.Dispose();
    }

    [Theory(Timeout = HubSandbox.TestTimeoutMs)]
    [InlineData("tiny-neox-rinna")]
    [InlineData("tiny-neox-pythia")]
    [InlineData("tiny-neox-rinna-bin")]
    public async Task ModelIdDownloadsThenLoadsOfflineWithReferenceLogits(string fixture)
    {
        hub.AddRepo("rinna/" + fixture, Fixtures.Model(fixture));
        using var client = sandbox.CreateClient();
        var progress = new RecordingProgress();
        var online = new ModelLoadOptions { Endpoint = hub.Endpoint, CacheDir = sandbox.CacheDir, HubClient = client, DownloadProgress = progress };
        using (var model = await AutoModelForCausalLM.FromPretrainedAsync("rinna/" + fixture, online))
            AssertReferenceLogits(model, fixture);
        Assert.NotEmpty(progress.Reports);

        int requestsBefore = hub.Requests.Count;
        var offline = new ModelLoadOptions { LocalFilesOnly = true, CacheDir = sandbox.CacheDir, HubClient = client };
        using (var model = await AutoModelForCausalLM.FromPretrainedAsync("rinna/" + fixture, offline))
            AssertReferenceLogits(model, fixture);
        Assert.Equal(requestsBefore, hub.Requests.Count);
    }

    [Fact(Timeout = HubSandbox.TestTimeoutMs)]
    public async Task UnknownRepoIsAHubException()
    {
        using var client = sandbox.CreateClient();
        var options = new ModelLoadOptions { Endpoint = hub.Endpoint, CacheDir = sandbox.CacheDir, HubClient = client };
        var ex = await Assert.ThrowsAsync<HubException>(() => AutoModelForCausalLM.FromPretrainedAsync("rinna/does-not-exist", options));
        Assert.Contains("rinna/does-not-exist", ex.Message);
    }

    [Fact]
    public async Task AdapterHubIdDownloadsThenMergesAndLoadsOffline()
    {
        hub.AddRepo("rinna/tiny-neox-rinna", Fixtures.Model("tiny-neox-rinna"));
        hub.AddRepo("someone/tiny-lora", LoraAdapterTests.AdapterDir);
        using var client = sandbox.CreateClient();
        var online = new ModelLoadOptions { Endpoint = hub.Endpoint, CacheDir = sandbox.CacheDir, HubClient = client, Adapter = "someone/tiny-lora" };
        using (var model = await AutoModelForCausalLM.FromPretrainedAsync("rinna/tiny-neox-rinna", online, TestContext.Current.CancellationToken))
            LoraAdapterTests.AssertMatchesFixture(model);
        Assert.Contains(hub.Requests, r => r.Target.StartsWith("/someone/tiny-lora/resolve/", StringComparison.Ordinal) && r.Target.EndsWith("/adapter_model.safetensors", StringComparison.Ordinal));

        int requestsBefore = hub.Requests.Count;
        var offline = new ModelLoadOptions { LocalFilesOnly = true, CacheDir = sandbox.CacheDir, HubClient = client, Adapter = "someone/tiny-lora", MergeAdapter = false };
        using (var model = await AutoModelForCausalLM.FromPretrainedAsync("rinna/tiny-neox-rinna", offline, TestContext.Current.CancellationToken))
            LoraAdapterTests.AssertMatchesFixture(model);
        Assert.Equal(requestsBefore, hub.Requests.Count);
    }

    [Fact]
    public async Task RunTimeAdapterFromAHubIdEqualsTheDirectory()
    {
        hub.AddRepo("someone/tiny-lora", LoraAdapterTests.AdapterDir);
        using var client = sandbox.CreateClient();
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"),
            new ModelLoadOptions { EnableAdapters = true }, TestContext.Current.CancellationToken);
        await model.LoadAdapterAsync("hub", "someone/tiny-lora",
            new HubOptions { Endpoint = hub.Endpoint, CacheDir = sandbox.CacheDir, HubClient = client }, TestContext.Current.CancellationToken);
        model.SetAdapter("hub");
        LoraAdapterTests.AssertMatchesFixture(model);
    }

    [Fact]
    public async Task AdapterRepoWithoutWeightsIsAHubException()
    {
        hub.AddRepo("rinna/tiny-neox-rinna", Fixtures.Model("tiny-neox-rinna"));
        var repo = hub.AddRepo("someone/empty-lora", LoraAdapterTests.AdapterDir);
        repo.Files.TryRemove("adapter_model.safetensors", out _);
        using var client = sandbox.CreateClient();
        var options = new ModelLoadOptions { Endpoint = hub.Endpoint, CacheDir = sandbox.CacheDir, HubClient = client, Adapter = "someone/empty-lora" };
        var ex = await Assert.ThrowsAsync<HubException>(() => AutoModelForCausalLM.FromPretrainedAsync("rinna/tiny-neox-rinna", options, TestContext.Current.CancellationToken));
        Assert.Contains("adapter_model.safetensors", ex.Message);
        Assert.Equal("someone/empty-lora", ex.RepoId);
    }

    private static void AssertReferenceLogits(Rinna.Net.Model.GptNeoXForCausalLM model, string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        var prompt = reference.Prompts.Single(p => p.GetProperty("name").GetString() == "len17");
        using var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
        using var output = model.Forward(ids);
        TensorAssert.Close(reference.Tensor("prompts.len17.logits"), output.Logits[0], 1e-3, 1e-4, fixture);
    }
}
