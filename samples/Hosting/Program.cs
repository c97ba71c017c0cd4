// A generic host that registers Rinna with DI and answers through Microsoft.Extensions.AI's IChatClient.
//   dotnet run --project samples/Hosting [-- --model rinna/bilingual-gpt-neox-4b-instruction-ppo] ["your question"]
// Configuration: appsettings.json's "Rinna" section (RinnaOptions); an empty ModelId means the demo model in samples/models.
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Rinna.Net.Integration;
using Rinna.Net.Samples;

var builder = Host.CreateApplicationBuilder(args);
var section = builder.Configuration.GetSection("Rinna");
if (string.IsNullOrEmpty(section["ModelId"])) section["ModelId"] = SampleModel.Resolve(args);
builder.Services.AddRinna(section);

using var host = builder.Build();
await host.StartAsync();
var chat = host.Services.GetRequiredService<IChatClient>();
var question = args.LastOrDefault(a => !a.StartsWith("--", StringComparison.Ordinal) && a != SampleModel.Option(args, "--model"))
    ?? "こんにちは。自己紹介をしてください。";
Console.WriteLine($"ユーザー: {question}");
Console.Write("システム: ");
await foreach (var update in chat.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, question)]))
    Console.Write(update.Text);
Console.WriteLine();
await host.StopAsync();
