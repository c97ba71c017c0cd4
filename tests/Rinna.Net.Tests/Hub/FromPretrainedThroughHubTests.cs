using Rinna.Net.Hub;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Hub;

/// <summary><c>AutoModelForCausalLM.FromPretrainedAsync("org/name")</c> end to end: download, cache, load, and the same logits as HF.</summary>
public sealed class FromPretrainedThroughHubTests : IAsyncLifetime, IDisposable
{
    private readonly HubSandbox sandbox = new();
    private FakeHub hub = null!;

    public async ValueTask InitializeAsync() => hub = await FakeHub.StartAsync();

    public async ValueTask DisposeAsync() => await hub.DisposeAsync();

    public void Dispose() => sandbox.Dispose();

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

    private static void AssertReferenceLogits(Rinna.Net.Model.GptNeoXForCausalLM model, string fixture)
    {
        using var reference = new ReferenceModel(fixture);
        var prompt = reference.Prompts.Single(p => p.GetProperty("name").GetString() == "len17");
        using var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
        using var output = model.Forward(ids);
        TensorAssert.Close(reference.Tensor("prompts.len17.logits"), output.Logits[0], 1e-3, 1e-4, fixture);
    }
}
