// A generic host that registers Rinna with DI and answers through Microsoft.Extensions.AI's IChatClient.
//   dotnet run --project samples/Hosting [-- --model rinna/bilingual-gpt-neox-4b-instruction-ppo] ["your question"]
// Configuration: appsettings.json's "Rinna" section (RinnaOptions, also settable as environment variables such as
// Rinna__TorchDtype); an empty ModelId means --model, else the demo model in samples/models.
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Rinna.Net.Integration;
using Rinna.Net.Samples;

var arguments = SampleArguments.Parse(args, """
    usage: Hosting [--model ID|DIR] ["question"]
      --model   a Hugging Face model id or a local model directory (default: Rinna:ModelId in appsettings.json, else
                the demo model in samples/models)
    """, optionNames: ["--model"], allowPositional: true);
if (arguments.Positional.Count > 1) SampleArguments.Fail("give the question as one argument, in quotes.");

// appsettings.json is read from beside the program, whatever the current directory.
var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = AppContext.BaseDirectory });
var section = builder.Configuration.GetSection("Rinna");
if (arguments.Option("--model") is not null || string.IsNullOrEmpty(section["ModelId"])) section["ModelId"] = SampleModel.Resolve(arguments);
builder.Services.AddRinna(section);

using var host = builder.Build();
await host.StartAsync();
var chat = host.Services.GetRequiredService<IChatClient>();
var question = arguments.Positional.SingleOrDefault() ?? "こんにちは。自己紹介をしてください。";
Console.WriteLine($"ユーザー: {question}");
Console.Write("システム: ");
await foreach (var update in chat.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, question)]))
    Console.Write(update.Text);
Console.WriteLine();
await host.StopAsync();
