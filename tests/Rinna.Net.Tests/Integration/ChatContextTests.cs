using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Rinna.Net.Generation;
using Rinna.Net.Integration;
using Rinna.Net.Model;

namespace Rinna.Net.Tests.Integration;

/// <summary>Conversations longer than the demo model's 256-token context, through DI's <see cref="IChatClient"/>.</summary>
public sealed class ChatContextTests
{
    private static ServiceProvider Services(Action<RinnaOptions>? configure = null)
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddRinna(o =>
        {
            o.ModelId = Fixtures.DemoModel;
            o.DoSample = false;
            o.MaxNewTokens = 24;
            configure?.Invoke(o);
        });
        return services.BuildServiceProvider();
    }

    [Fact]
    public async Task FortyScriptedTurnsAllAnswerAndStopBeforeTheNextUtterance()
    {
        await using var provider = Services();
        var chat = provider.GetRequiredService<IChatClient>();
        var context = provider.GetRequiredService<GptNeoXForCausalLM>().Config.MaxPositionEmbeddings;
        var conversation = new List<ChatMessage> { new(ChatRole.System, "あなたは親切なアシスタントです。") };
        string[] questions = ["日本のおすすめの観光地を教えてください。", "What is your favourite book?", "猫について教えて。", "Tell me about the sea."];
        int longest = 0;
        for (int turn = 0; turn < 40; turn++)
        {
            conversation.Add(new ChatMessage(ChatRole.User, questions[turn % questions.Length]));
            var response = await chat.GetResponseAsync(conversation);
            var usage = response.Usage!;
            Assert.True(usage.InputTokenCount + usage.OutputTokenCount <= context,
                $"turn {turn}: {usage.InputTokenCount} prompt + {usage.OutputTokenCount} new tokens exceed the context of {context}");
            Assert.DoesNotContain("ユーザー:", response.Text);
            Assert.DoesNotContain("システム:", response.Text);
            longest = Math.Max(longest, (int)usage.InputTokenCount!.Value);
            conversation.Add(new ChatMessage(ChatRole.Assistant, response.Text));
        }
        // The history did outgrow the window: later prompts were fitted, not merely short.
        Assert.True(longest > context / 2, $"the longest prompt had {longest} tokens");
    }

    [Fact]
    public async Task ThrowPolicyRefusesAConversationThatDoesNotFit()
    {
        await using var provider = Services(o => o.ContextOverflow = ContextOverflowPolicy.Throw);
        var chat = provider.GetRequiredService<IChatClient>();
        var conversation = new List<ChatMessage>();
        for (int i = 0; i < 30; i++)
        {
            conversation.Add(new ChatMessage(ChatRole.User, "日本のおすすめの観光地を教えてください。"));
            conversation.Add(new ChatMessage(ChatRole.Assistant, "京都、奈良、北海道などが人気です。"));
        }
        conversation.Add(new ChatMessage(ChatRole.User, "ありがとう。"));
        await Assert.ThrowsAsync<ArgumentException>(() => chat.GetResponseAsync(conversation));
    }

    [Fact]
    public async Task AHugeMaxOutputTokensIsClampedToTheContext()
    {
        await using var provider = Services();
        var chat = provider.GetRequiredService<IChatClient>();
        var context = provider.GetRequiredService<GptNeoXForCausalLM>().Config.MaxPositionEmbeddings;
        var response = await chat.GetResponseAsync([new ChatMessage(ChatRole.User, "What is your favourite book?")],
            new ChatOptions { MaxOutputTokens = 1_000_000, Temperature = 0 });
        Assert.True(response.Usage!.InputTokenCount + response.Usage.OutputTokenCount <= context);
    }
}
