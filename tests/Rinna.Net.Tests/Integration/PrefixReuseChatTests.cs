using Microsoft.Extensions.AI;
using Microsoft.Extensions.Options;
using Rinna.Net.Integration;

namespace Rinna.Net.Tests.Integration;

/// <summary>A chat through <see cref="IChatClient"/> reuses each turn's KV cache for the next turn and answers as without it.</summary>
public sealed class PrefixReuseChatTests
{
    [Fact]
    public async Task EachTurnReusesTheConversationSoFarAndAnswersAsAColdHost()
    {
        RinnaModelHost Host(long prefixBytes) => new(Options.Create(new RinnaOptions
        {
            ModelId = Fixtures.DemoModel, TorchDtype = TorchDtype.Float32, MaxNewTokens = 12, PrefixCacheBytes = prefixBytes,
        }));
        await using var warmHost = Host(256L << 20);
        await using var coldHost = Host(0);
        using var warm = new RinnaChatClient(warmHost);
        using var cold = new RinnaChatClient(coldHost);
        var history = new List<ChatMessage>();
        string[] questions = ["日本の首都はどこですか?", "What is your favourite book?", "おすすめの観光地を教えてください。", "Thank you!", "猫について教えて。", "Good morning."];
        foreach (var question in questions)
        {
            history.Add(new ChatMessage(ChatRole.User, question));
            var options = new ChatOptions { Temperature = 0 };
            var warmAnswer = await warm.GetResponseAsync(history, options, TestContext.Current.CancellationToken);
            var coldAnswer = await cold.GetResponseAsync(history, options, TestContext.Current.CancellationToken);
            Assert.Equal(coldAnswer.Text, warmAnswer.Text);
            history.Add(new ChatMessage(ChatRole.Assistant, warmAnswer.Text));
        }
        var scheduler = await warmHost.GetSchedulerAsync(TestContext.Current.CancellationToken);
        Assert.True(scheduler.ReusedPromptTokens > scheduler.PrefilledPromptTokens,
            $"{scheduler.ReusedPromptTokens} prompt tokens reused, {scheduler.PrefilledPromptTokens} prefilled");
        Assert.Equal(0, (await coldHost.GetSchedulerAsync(TestContext.Current.CancellationToken)).ReusedPromptTokens);
    }
}
