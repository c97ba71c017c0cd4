using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Rinna.Net.Integration;
using TorchSharp;

namespace Rinna.Net.Benchmarks;

/// <summary>End to end on the demo model that ships in samples/models: IChatClient request → rinna prompt → tokens → text.</summary>
public abstract class ChatBenchmarkBase
{
    /// <summary>The most tokens an answer has.</summary>
    protected const int AnswerTokens = 32;
    private ServiceProvider services = null!;

    /// <summary>The host's chat client, as <c>AddRinna</c> registers it.</summary>
    protected IChatClient Chat { get; private set; } = null!;

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
        Chat = services.GetRequiredService<IChatClient>();
        // Both ways of asking, until the JIT has tiered them: a host's steady state, not its first seconds.
        SteadyState.WarmUp(() =>
        {
            Ask(Questions[0]).GetAwaiter().GetResult();
            Task.WhenAll(Questions.Select(Ask)).GetAwaiter().GetResult();
        }, TimeSpan.FromSeconds(3), TimeSpan.FromSeconds(90));
    }

    /// <summary>Eight different questions: what <see cref="ConcurrentChatBenchmarks"/> asks, and the warm-up.</summary>
    protected static readonly string[] Questions =
    [
        "日本の首都はどこですか?", "富士山の高さを教えてください。", "おすすめの本はありますか?", "What is the capital of France?",
        "猫と犬、どちらが好きですか?", "今日の天気はどうですか?", "Tell me about the sea.", "春の季語をひとつ教えてください。",
    ];

    [GlobalCleanup]
    public void Cleanup()
    {
        PeakMemory.Record($"{GetType().Name}/{DType}");
        services.Dispose();
    }

    /// <summary>One greedy answer of up to <see cref="AnswerTokens"/> tokens.</summary>
    protected async Task<string> Ask(string question) =>
        (await Chat.GetResponseAsync([new ChatMessage(ChatRole.User, question)],
            new ChatOptions { MaxOutputTokens = AnswerTokens, AdditionalProperties = new() { ["do_sample"] = false } })).Text;
}

/// <summary>One answer at a time through IChatClient, per token.</summary>
public class ChatBenchmarks : ChatBenchmarkBase
{
    /// <summary>One greedy answer of up to 32 tokens, per token (the answer can end early at &lt;/s&gt;).</summary>
    [Benchmark(OperationsPerInvoke = AnswerTokens)]
    public async Task<string> ChatAnswerToken()
    {
        var response = await Chat.GetResponseAsync([new ChatMessage(ChatRole.User, "日本の首都はどこですか?")],
            new ChatOptions { MaxOutputTokens = AnswerTokens, AdditionalProperties = new() { ["do_sample"] = false } });
        return response.Text;
    }
}

/// <summary>Eight users' chats through IChatClient, one after another against all at once (continuous batching).</summary>
public class ConcurrentChatBenchmarks : ChatBenchmarkBase
{
    /// <summary>Eight different questions, answered greedily, one after another: the baseline of <see cref="EightChatsAtOnce"/>.</summary>
    [Benchmark(Baseline = true)]
    public async Task<int> EightChatsOneAfterAnother()
    {
        int characters = 0;
        foreach (var question in Questions) characters += (await Ask(question)).Length;
        return characters;
    }

    /// <summary>
    /// The same eight questions at once, as eight users of a host would send them: the continuous batching scheduler
    /// decodes them together (issue goal: at least 3× faster than one after another, with the same answers).
    /// </summary>
    [Benchmark]
    public async Task<int> EightChatsAtOnce() => (await Task.WhenAll(Questions.Select(Ask))).Sum(a => a.Length);

}
