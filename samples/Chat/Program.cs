// Interactive chat with streaming output.
//   dotnet run --project samples/Chat                                   (the demo model shipped in samples/models)
//   dotnet run --project samples/Chat -- --model rinna/bilingual-gpt-neox-4b-instruction-ppo --dtype bfloat16
//   dotnet run --project samples/Chat -- --help                         (every flag)
// Ctrl+C stops the answer being written, not the program; an empty line or Ctrl+D ends the chat.
using Rinna.Net;
using Rinna.Net.Generation;
using Rinna.Net.Samples;
using Rinna.Net.Tokenization;

var arguments = SampleArguments.Parse(args, """
    usage: Chat [--model ID|DIR] [--dtype float32|bfloat16|float16|auto] [--temperature T] [--top-p P] [--top-k K]
                [--max-new-tokens N] [--repetition-penalty R] [--greedy] [--seed S]
      --model   a Hugging Face model id or a local model directory (default: the demo model in samples/models)
      --greedy  always take the most likely token instead of sampling
    Type a message and press Enter; an empty line or Ctrl+D ends the chat, Ctrl+C stops the answer being written.
    """,
    optionNames: ["--model", "--dtype", "--temperature", "--top-p", "--top-k", "--max-new-tokens", "--repetition-penalty", "--seed"],
    switchNames: ["--greedy"]);
var modelId = SampleModel.Resolve(arguments);
var dtype = arguments.Choice("--dtype", TorchDtype.Float32, new Dictionary<string, TorchDtype>
{
    ["float32"] = TorchDtype.Float32, ["bfloat16"] = TorchDtype.BFloat16, ["float16"] = TorchDtype.Float16, ["auto"] = TorchDtype.Auto,
});
// Every flag is read before the model loads, so a bad value is reported at once.
var settings = new
{
    DoSample = !arguments.Has("--greedy"),
    Temperature = arguments.Number("--temperature", 0.7),
    TopP = arguments.Number("--top-p", 1.0),
    TopK = arguments.Integer("--top-k", 50),
    MaxNewTokens = arguments.Integer("--max-new-tokens", 128),
    RepetitionPenalty = arguments.Number("--repetition-penalty", 1.1),
    Seed = arguments.Long("--seed"),
};

Console.Error.WriteLine($"Loading {modelId} ...");
var progress = new SampleModel.ConsoleDownloadProgress();
var tokenizer = await AutoTokenizer.FromPretrainedAsync(modelId, new TokenizerOptions { UseFast = false, DownloadProgress = progress });
using var model = await AutoModelForCausalLM.FromPretrainedAsync(modelId, new ModelLoadOptions { TorchDtype = dtype, DownloadProgress = progress });
// A model that is not one of rinna's instruction models chats in the bilingual format.
var chat = new RinnaChatPromptBuilder(RinnaChatPromptBuilder.DetectFormat(modelId) ?? RinnaChatFormat.Bilingual);
var config = model.GenerationConfig() with
{
    DoSample = settings.DoSample,
    Temperature = settings.Temperature,
    TopP = settings.TopP,
    TopK = settings.TopK,
    MaxNewTokens = settings.MaxNewTokens,
    RepetitionPenalty = settings.RepetitionPenalty,
    Seed = settings.Seed,
    EosTokenId = tokenizer.EosTokenId is int eos ? [eos] : null,
    PadTokenId = tokenizer.PadTokenId,
    // An answer ends where the model starts writing the next utterance.
    StopStrings = [.. chat.TurnMarkers],
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
    RinnaChatPrompt prompt;
    try
    {
        // A long chat keeps its latest exchanges: the oldest are left out once the history outgrows the model's context.
        prompt = chat.BuildPrompt(history, null, text => tokenizer.Encode(text, addSpecialTokens: false).Length,
            model.Config.MaxPositionEmbeddings, settings.MaxNewTokens);
    }
    catch (ArgumentException e)
    {
        Console.Error.WriteLine(e.Message);
        history.RemoveAt(history.Count - 1);
        continue;
    }
    Console.Write("システム: ");
    answering = new CancellationTokenSource();
    var output = chat.CreateOutputStream();
    var answer = new System.Text.StringBuilder();
    try
    {
        await foreach (var piece in model.GenerateTextStreamingAsync(tokenizer, prompt.Text, config with { MaxNewTokens = prompt.MaxNewTokens }, answering.Token))
        {
            var text = output.Push(piece);
            answer.Append(text);
            Console.Write(text);
        }
        var rest = output.Flush();
        answer.Append(rest);
        Console.WriteLine(rest);
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
