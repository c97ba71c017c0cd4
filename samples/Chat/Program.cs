// Interactive chat with streaming output.
//   dotnet run --project samples/Chat                                   (the demo model shipped in samples/models)
//   dotnet run --project samples/Chat -- --model rinna/bilingual-gpt-neox-4b-instruction-ppo --dtype bfloat16
// Flags: --model ID|DIR  --dtype float32|bfloat16|float16  --temperature T  --top-p P  --top-k K  --max-new-tokens N
//        --repetition-penalty R  --greedy  --seed S
// Ctrl+C stops the answer being written, not the program; an empty line or Ctrl+D ends the chat.
using System.Globalization;
using Rinna.Net;
using Rinna.Net.Generation;
using Rinna.Net.Samples;
using Rinna.Net.Tokenization;

var modelId = SampleModel.Resolve(args);
double Number(string name, double fallback) =>
    SampleModel.Option(args, name) is { } text ? double.Parse(text, CultureInfo.InvariantCulture) : fallback;
var dtype = (SampleModel.Option(args, "--dtype") ?? "float32") switch
{
    "float32" => TorchDtype.Float32,
    "bfloat16" => TorchDtype.BFloat16,
    "float16" => TorchDtype.Float16,
    "auto" => TorchDtype.Auto,
    var other => throw new ArgumentException($"--dtype {other}: expected float32, bfloat16, float16 or auto."),
};

Console.Error.WriteLine($"Loading {modelId} ...");
var progress = new SampleModel.ConsoleDownloadProgress();
var tokenizer = await AutoTokenizer.FromPretrainedAsync(modelId, new TokenizerOptions { UseFast = false, DownloadProgress = progress });
using var model = await AutoModelForCausalLM.FromPretrainedAsync(modelId, new ModelLoadOptions { TorchDtype = dtype, DownloadProgress = progress });
var chat = RinnaChatPromptBuilder.ForModel(modelId, RinnaChatPromptBuilder.DetectFormat(modelId) ?? RinnaChatFormat.Bilingual);
var config = model.GenerationConfig() with
{
    DoSample = !args.Contains("--greedy"),
    Temperature = Number("--temperature", 0.7),
    TopP = Number("--top-p", 1.0),
    TopK = (int)Number("--top-k", 50),
    MaxNewTokens = (int)Number("--max-new-tokens", 128),
    RepetitionPenalty = Number("--repetition-penalty", 1.1),
    Seed = SampleModel.Option(args, "--seed") is { } seed ? long.Parse(seed, CultureInfo.InvariantCulture) : null,
    EosTokenId = tokenizer.EosTokenId is int eos ? [eos] : null,
    PadTokenId = tokenizer.PadTokenId,
};

CancellationTokenSource? answering = null;
Console.CancelKeyPress += (_, e) =>
{
    if (answering is null) return; // no answer running: let Ctrl+C end the program
    e.Cancel = true;
    answering.Cancel();
};

var history = new List<RinnaChatTurn>();
Console.Error.WriteLine("Ready. Type a message (empty line to quit).");
while (true)
{
    Console.Write("ユーザー: ");
    var line = Console.ReadLine();
    if (string.IsNullOrWhiteSpace(line)) break;
    history.Add(new RinnaChatTurn(RinnaSpeaker.User, line));
    var prompt = chat.BuildPrompt(history);
    Console.Write("システム: ");
    answering = new CancellationTokenSource();
    var output = chat.CreateOutputStream();
    var answer = new System.Text.StringBuilder();
    try
    {
        await foreach (var piece in model.GenerateTextStreamingAsync(tokenizer, prompt, config, answering.Token))
        {
            var text = output.Push(piece);
            answer.Append(text);
            Console.Write(text);
        }
        answer.Append(output.Flush());
        Console.WriteLine(output.Flush());
    }
    catch (OperationCanceledException)
    {
        Console.WriteLine(" [stopped]");
    }
    finally
    {
        answering.Dispose();
        answering = null;
    }
    history.Add(new RinnaChatTurn(RinnaSpeaker.System, answer.ToString()));
}
