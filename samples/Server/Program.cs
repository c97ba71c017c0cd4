// An OpenAI-compatible server for a rinna model: POST /v1/chat/completions and /v1/completions (streaming or not), GET /v1/models, GET /health.
//   dotnet run --project samples/Server [-- --model rinna/bilingual-gpt-neox-4b-instruction-ppo] [--urls http://0.0.0.0:8080]
// It serves until stopped (Ctrl+C). Any OpenAI client can talk to it, e.g.
//   curl http://127.0.0.1:5000/v1/chat/completions -H 'Content-Type: application/json' \
//        -d '{"model":"rinna","messages":[{"role":"user","content":"日本の首都はどこですか?"}],"stream":true}'
// Configuration: appsettings.json beside the program ("Rinna": RinnaOptions, "Urls"), environment variables such as
// Rinna__TorchDtype, or the command line; an empty ModelId means --model, else the demo model in samples/models.
using Rinna.Net.AspNetCore;
using Rinna.Net.Integration;
using Rinna.Net.Samples;

var arguments = SampleArguments.Parse(args, """
    usage: Server [--model ID|DIR] [--urls URL]
      --model   a Hugging Face model id or a local model directory (default: Rinna:ModelId in appsettings.json, else
                the demo model in samples/models)
      --urls    where to listen (default: Urls in appsettings.json, http://127.0.0.1:5000)
    """, optionNames: ["--model", "--urls"], allowPositional: false);

// appsettings.json is read from beside the program, whatever the current directory.
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
if (arguments.Option("--urls") is { } urls) builder.WebHost.UseUrls(urls);
var section = builder.Configuration.GetSection("Rinna");
if (arguments.Option("--model") is not null || string.IsNullOrEmpty(section["ModelId"])) section["ModelId"] = SampleModel.Resolve(arguments);
builder.Services.AddRinna(section);
builder.Services.AddHealthChecks().AddRinnaModel();

var app = builder.Build();
app.MapOpenAIChatCompletions();
app.MapHealthChecks("/health");
app.Run();
