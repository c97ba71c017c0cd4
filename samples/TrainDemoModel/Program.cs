// Trains the demo model that ships in samples/models/rinna-demo: a SentencePiece Unigram tokenizer in rinna's bilingual
// layout (nmt_nfkc normalization) and a small GPT-NeoX in rinna's architecture, on the public-domain corpus in ../shared/corpus.
//
//   dotnet run -c Release --project samples/TrainDemoModel -- train [--steps 3500] [--max-minutes 70] [--seed 20260127] [--out DIR] [--corpus DIR]
//   dotnet run -c Release --project samples/TrainDemoModel -- chat-tune [--chat-steps 400]   (continues the saved model on a dialogue-heavy mix)
//   dotnet run -c Release --project samples/TrainDemoModel -- report [--out DIR] [--compare DIR]   (samples, perplexity, TRAINING.md, loss.png)
//   dotnet run -c Release --project samples/TrainDemoModel -- perplexity [--out DIR]   (held-out perplexity of the model in DIR)
//   dotnet run -c Release --project samples/TrainDemoModel -- quantization [--out DIR]   (the same under each dtype and quantization)
// The run's records (training.log, loss.csv, training-summary.json) go to --records, by default artifacts/train-demo-model.
using System.Diagnostics;
using System.Globalization;
using Rinna.Net.Model;
using Rinna.Net.Tokenization.Training;
using TorchSharp;
using TrainDemoModel;
using static TorchSharp.torch;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;

var arguments = args.Skip(1).Chunk(2).Where(p => p.Length == 2).ToDictionary(p => p[0].TrimStart('-'), p => p[1]);
string Option(string name, string fallback) => arguments.GetValueOrDefault(name, fallback);
TrainingSettings settings;
try
{
    settings = new TrainingSettings
    {
        Seed = long.Parse(Option("seed", "20260127")),
        Steps = int.Parse(Option("steps", "3500")),
        MaxMinutes = double.Parse(Option("max-minutes", "Infinity")),
        // One thread: on a small shared machine a second OpenMP thread mostly waits at barriers for a busy core.
        Threads = int.Parse(Option("threads", "1")),
        OutputDirectory = Path.GetFullPath(Option("out", Path.Combine("samples", "models", "rinna-demo"))),
        RecordsDirectory = Path.GetFullPath(Option("records", Path.Combine("artifacts", "train-demo-model"))),
        CorpusDirectory = arguments.TryGetValue("corpus", out var corpus) ? Path.GetFullPath(corpus) : Corpus.Locate(),
        NormalizerModel = arguments.TryGetValue("normalizer-from", out var normalizer) ? Path.GetFullPath(normalizer) : Corpus.LocateNormalizerModel(),
        ChatSteps = int.Parse(Option("chat-steps", "400")),
        SupplementRepeats = int.Parse(Option("supplement-repeats", "8")),
        CompareDirectory = arguments.TryGetValue("compare", out var compare) ? Path.GetFullPath(compare) : null,
    };
}
catch (Exception e) when (e is FormatException or OverflowException or IOException)
{
    Console.Error.WriteLine($"TrainDemoModel: {e.Message}");
    return 2;
}

Rinna.Net.Native.TorchSharpNativeLoader.EnsureInstalled();
torch.set_num_threads(settings.Threads);
try
{
    switch (args.FirstOrDefault())
    {
        case "train":
            Train(settings);
            await Report.WriteAsync(settings);
            break;
        case "chat-tune":
            await ChatTuning.RunAsync(settings);
            await Report.WriteAsync(settings);
            break;
        case "report":
            await Report.WriteAsync(settings);
            break;
        case "perplexity":
            foreach (var score in await Perplexity.MeasureAsync(settings.OutputDirectory, Corpus.Load(settings.CorpusDirectory).Split().HeldOut))
                Console.WriteLine($"{score.Part}: {score.Tokens} tokens, {score.Characters} characters, token perplexity {score.TokenPerplexity:F2}, character perplexity {score.CharacterPerplexity:F3}");
            break;
        case "quantization":
            await Perplexity.CompareLoadOptionsAsync(settings.OutputDirectory, Corpus.Load(settings.CorpusDirectory).Split().HeldOut, Console.Out);
            break;
        default:
            Console.Error.WriteLine("usage: TrainDemoModel train|chat-tune|report|perplexity|quantization [--steps N] [--seed N] [--threads N] [--max-minutes M] [--out DIR] " +
                "[--chat-steps N] [--supplement-repeats N] [--records DIR] [--corpus DIR] [--normalizer-from spiece.model] [--compare DIR]");
            return 2;
    }
}
catch (Exception e) when (e is IOException or Rinna.Net.RinnaException or ArgumentException)
{
    // A missing corpus, model or run record is reported in one line (chat-tune and report need train's records first).
    Console.Error.WriteLine($"TrainDemoModel: {e.Message}");
    return 1;
}
return 0;

static void Train(TrainingSettings settings)
{
    var clock = Stopwatch.StartNew();
    torch.manual_seed(settings.Seed);
    Directory.CreateDirectory(settings.OutputDirectory);
    Directory.CreateDirectory(settings.RecordsDirectory);
    var log = new StreamWriter(Path.Combine(settings.RecordsDirectory, "training.log"), append: false) { AutoFlush = true };
    void Log(string line)
    {
        var stamped = $"[{clock.Elapsed:hh\\:mm\\:ss}] {line}";
        Console.WriteLine(stamped);
        log.WriteLine(stamped);
    }

    var (corpus, heldOut) = Corpus.Load(settings.CorpusDirectory).Split();
    Log($"corpus: {corpus.JapaneseBooks.Count} Japanese books, {corpus.EnglishBooks.Count} English books, {corpus.Dialogues.Count} dialogues " +
        $"({heldOut.JapaneseBooks.Sum(b => b.Length) + heldOut.EnglishBooks.Sum(b => b.Length)} paragraphs and {heldOut.Dialogues.Count} dialogues held out)");

    var normalization = SentencePieceNormalization.FromModel(settings.NormalizerModel);
    Log($"tokenizer: normalization {normalization.Name} ({normalization.PrecompiledCharsMap.Length} bytes of character map) from {settings.NormalizerModel}");
    var tokenizer = UnigramTrainer.Train(corpus.Sentences(), new UnigramTrainerOptions
    {
        VocabSize = settings.VocabSize,
        CharacterCoverage = settings.CharacterCoverage,
        NumThreads = settings.Threads,
        Normalization = normalization,
    }, new Progress<string>(line => Log("tokenizer: " + line)));
    tokenizer.Save(settings.OutputDirectory);
    Log($"tokenizer: {tokenizer.Pieces.Count} pieces written ({clock.Elapsed.TotalSeconds:F0} s)");

    int mismatches = corpus.Sentences().Count(sentence => tokenizer.Decode(tokenizer.Encode(sentence)) != normalization.Normalize(sentence));
    var example = tokenizer.Encode(corpus.Dialogues[0]);
    Log($"tokenizer: {mismatches} normalized sentences fail to round-trip; first dialogue = {string.Join(" | ", example.Select(id => tokenizer.Pieces[id].Piece.Replace("\n", "\\n")))}");

    var data = TrainingData.Build(corpus, tokenizer.Encode);
    Log($"tokens: Japanese {data.Japanese.Length}, English {data.English.Length}, dialogues {data.DialogueTokenCount} in {corpus.Dialogues.Count}");

    var config = settings.ModelConfig(tokenizer.Pieces.Count);
    using var model = GptNeoXForCausalLM.CreateRandom(config, settings.Seed);
    model.train();
    var parameters = model.parameters().ToList();
    Log($"model: {parameters.Sum(p => p.numel())} parameters, {config.NumHiddenLayers} layers, hidden {config.HiddenSize}, vocab {config.VocabSize}");

    using var optimizer = torch.optim.AdamW(parameters, settings.PeakLearningRate, 0.9, 0.95, 1e-8, settings.WeightDecay);
    using var lossLog = new StreamWriter(Path.Combine(settings.RecordsDirectory, "loss.csv"), append: false) { AutoFlush = true };
    lossLog.WriteLine("step,tokens,loss,learning_rate,seconds");
    var random = new Random((int)settings.Seed);
    long tokensSeen = 0;
    double smoothed = double.NaN;
    var trainingClock = Stopwatch.StartNew();
    int stepsDone = 0;
    for (int step = 1; step <= settings.Steps; step++)
    {
        double learningRate = settings.LearningRate(step);
        foreach (var group in optimizer.ParamGroups) group.LearningRate = learningRate;
        float loss = data.TrainStep(model, optimizer, parameters, random, settings);
        tokensSeen += settings.BatchSize * settings.SequenceLength;
        stepsDone = step;
        bool outOfTime = trainingClock.Elapsed.TotalMinutes >= settings.MaxMinutes;
        smoothed = double.IsNaN(smoothed) ? loss : 0.95 * smoothed + 0.05 * loss;
        lossLog.WriteLine($"{step},{tokensSeen},{loss:F4},{learningRate:G4},{clock.Elapsed.TotalSeconds:F1}");
        if (step % 25 == 0) Log($"step {step}/{settings.Steps} loss {loss:F3} (smoothed {smoothed:F3}) lr {learningRate:G3} tokens {tokensSeen}");
        if (step % settings.CheckpointEvery == 0 || step == settings.Steps || outOfTime)
        {
            model.SavePretrained(settings.OutputDirectory, ScalarType.Float16);
            Log($"checkpoint at step {step} saved");
        }
        if (outOfTime)
        {
            Log($"stopping at step {step}: the {settings.MaxMinutes}-minute budget is spent");
            break;
        }
    }
    File.WriteAllText(Path.Combine(settings.RecordsDirectory, "training-summary.json"),
        System.Text.Json.JsonSerializer.Serialize(new TrainingSummary(stepsDone, settings.Steps, tokensSeen, smoothed, clock.Elapsed.TotalSeconds,
            parameters.Sum(p => p.numel()))));
    Log($"done: {stepsDone} of {settings.Steps} steps, {tokensSeen} tokens, smoothed loss {smoothed:F3}, {clock.Elapsed}");
}
