using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Rinna.Net.Integration;
using TorchSharp;

namespace Rinna.Net.Benchmarks;

/// <summary>End to end on the demo model that ships in samples/models: IChatClient request → rinna prompt → tokens → text.</summary>
public class ChatBenchmarks
{
    private const int AnswerTokens = 32;
    private ServiceProvider services = null!;
    private IChatClient chat = null!;

    [Params("Float32", "BFloat16")]
    public string DType { get; set; } = "Float32";

    [GlobalSetup]
    public void Setup()
    {
        Rinna.Net.Native.TorchSharpNativeLoader.EnsureInstalled(); // before the first torch call (Debian 12 libstdc++)
        torch.set_num_threads(2);
        services = new ServiceCollection().AddRinna(o =>
        {
            o.ModelId = ModelShapes.DemoDirectory();
            o.TorchDtype = Enum.Parse<TorchDtype>(DType);
            o.DoSample = false;
            o.MaxNewTokens = AnswerTokens;
        }).BuildServiceProvider();
        chat = services.GetRequiredService<IChatClient>();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        PeakMemory.Record($"{nameof(ChatBenchmarks)}/{DType}");
        services.Dispose();
    }

    /// <summary>One greedy answer of up to 32 tokens, per token (the answer can end early at &lt;/s&gt;).</summary>
    [Benchmark(OperationsPerInvoke = AnswerTokens)]
    public async Task<string> ChatAnswerToken()
    {
        var response = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "日本の首都はどこですか?")],
            new ChatOptions { MaxOutputTokens = AnswerTokens, AdditionalProperties = new() { ["do_sample"] = false } });
        return response.Text;
    }

}
