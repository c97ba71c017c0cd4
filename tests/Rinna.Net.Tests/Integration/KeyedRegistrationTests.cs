using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Caching.Distributed;
using Microsoft.Extensions.Caching.Memory;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Rinna.Net.AspNetCore;
using Rinna.Net.Integration;

namespace Rinna.Net.Tests.Integration;

/// <summary>Two models side by side under keys, a Microsoft.Extensions.AI pipeline over the model, and the endpoint routing by model name.</summary>
public sealed class KeyedRegistrationTests
{
    private static readonly ChatMessage[] Question = [new(ChatRole.User, "What is your favourite book?")];

    private static ChatOptions Greedy => new() { Temperature = 0 };

    [Fact]
    public async Task KeyedModelsAnswerWithTheirOwnOptionsBesideTheDefaultOne()
    {
        await using var services = new ServiceCollection()
            .AddRinna(o => { o.ModelId = Fixtures.DemoModel; o.MaxNewTokens = 6; })
            .AddKeyedRinna("short", o => { o.ModelId = Fixtures.DemoModel; o.MaxNewTokens = 2; })
            .AddKeyedRinna("long", o => { o.ModelId = Fixtures.DemoModel; o.MaxNewTokens = 12; })
            .BuildServiceProvider();
        var plain = await services.GetRequiredService<IChatClient>().GetResponseAsync(Question, Greedy, TestContext.Current.CancellationToken);
        var shortAnswer = await services.GetRequiredKeyedService<IChatClient>("short").GetResponseAsync(Question, Greedy, TestContext.Current.CancellationToken);
        var longAnswer = await services.GetRequiredKeyedService<IChatClient>("long").GetResponseAsync(Question, Greedy, TestContext.Current.CancellationToken);
        Assert.Equal(6, plain.Usage!.OutputTokenCount);
        Assert.Equal(2, shortAnswer.Usage!.OutputTokenCount);
        Assert.InRange(longAnswer.Usage!.OutputTokenCount!.Value, 7, 12);
        // The same greedy answer, cut at different lengths.
        Assert.StartsWith(shortAnswer.Text, plain.Text, StringComparison.Ordinal);
        Assert.StartsWith(plain.Text, longAnswer.Text, StringComparison.Ordinal);
        Assert.NotSame(services.GetRequiredKeyedService<RinnaModelHost>("short"), services.GetRequiredKeyedService<RinnaModelHost>("long"));
        Assert.Same(services.GetRequiredKeyedService<RinnaModelHost>("long"), services.GetRequiredKeyedService<RinnaModelHost>("long"));
    }

    [Fact]
    public void AKeyRegisteredTwiceIsRefused()
    {
        var services = new ServiceCollection().AddKeyedRinna("a", o => o.ModelId = Fixtures.DemoModel);
        var ex = Assert.Throws<ArgumentException>(() => services.AddKeyedRinna("a", o => o.ModelId = Fixtures.DemoModel));
        Assert.Contains("'a'", ex.Message);
    }

    [Fact]
    public async Task AChatClientBuilderPipelineComposesOverTheModel()
    {
        int modelCalls = 0;
        var collection = new ServiceCollection().AddRinna(o => { o.ModelId = Fixtures.DemoModel; o.MaxNewTokens = 8; });
        collection.AddLogging();
        collection.AddChatClient(sp => new RinnaChatClient(sp.GetRequiredService<RinnaModelHost>()))
            .UseDistributedCache(new MemoryDistributedCache(Options.Create(new MemoryDistributedCacheOptions())))
            .UseLogging()
            .Use((messages, options, next, cancellationToken) =>
            {
                Interlocked.Increment(ref modelCalls);
                return next(messages, options, cancellationToken);
            });
        await using var services = collection.BuildServiceProvider();
        var chat = services.GetRequiredService<IChatClient>();
        var first = await chat.GetResponseAsync(Question, Greedy, TestContext.Current.CancellationToken);
        var second = await chat.GetResponseAsync(Question, Greedy, TestContext.Current.CancellationToken);
        Assert.Equal(first.Text, second.Text);
        Assert.False(string.IsNullOrWhiteSpace(first.Text));
        Assert.Equal(1, modelCalls);   // the second answer came from the cache
        Assert.NotNull(chat.GetService<RinnaModelHost>());
    }

    [Fact]
    public async Task TheEndpointServesKeyedModelsByName()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(options => options.Listen(IPAddress.Loopback, 0));
        builder.Services.AddKeyedRinna("ja", o => { o.ModelId = Fixtures.DemoModel; o.MaxNewTokens = 2; });
        builder.Services.AddKeyedRinna("en", o => { o.ModelId = Fixtures.DemoModel; o.MaxNewTokens = 5; });
        await using var app = builder.Build();
        app.MapOpenAIChatCompletions(configure: o =>
        {
            o.Models["rinna-ja"] = "ja";
            o.Models["rinna-en"] = "en";
        });
        await app.StartAsync(TestContext.Current.CancellationToken);
        using var http = new HttpClient { BaseAddress = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single()) };

        using (var models = JsonDocument.Parse(await http.GetStringAsync("/v1/models", TestContext.Current.CancellationToken)))
            Assert.Equal(["rinna-ja", "rinna-en"], models.RootElement.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()!).Order().Reverse());

        async Task<(HttpStatusCode Status, JsonElement Body)> Ask(string model)
        {
            using var response = await http.PostAsync("/v1/chat/completions", new StringContent(
                JsonSerializer.Serialize(new { model, messages = new[] { new { role = "user", content = "What is your favourite book?" } }, temperature = 0 }),
                Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
            return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)).RootElement.Clone());
        }

        var ja = await Ask("rinna-ja");
        var en = await Ask("rinna-en");
        Assert.Equal(HttpStatusCode.OK, ja.Status);
        Assert.Equal(2, ja.Body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(5, en.Body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal("rinna-en", en.Body.GetProperty("model").GetString());
        var unknown = await Ask("gpt-4o");
        Assert.Equal(HttpStatusCode.NotFound, unknown.Status);
        Assert.Equal("model_not_found", unknown.Body.GetProperty("error").GetProperty("code").GetString());
    }
}
