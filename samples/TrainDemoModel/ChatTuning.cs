using System.Diagnostics;
using System.Text.Json;
using Rinna.Net;
using Rinna.Net.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainDemoModel;

/// <summary>
/// The second stage: continues the saved pre-trained model on a dialogue-heavy mix at a low learning rate, as rinna
/// tunes its base models into chat models, so answers follow the chat format instead of drifting into book text.
/// </summary>
internal static class ChatTuning
{
    public static async Task RunAsync(TrainingSettings settings)
    {
        var clock = Stopwatch.StartNew();
        torch.manual_seed(settings.Seed + 1);
        using var log = new StreamWriter(Path.Combine(settings.RecordsDirectory, "chat-tuning.log"), append: false) { AutoFlush = true };
        void Log(string line)
        {
            var stamped = $"[{clock.Elapsed:hh\\:mm\\:ss}] {line}";
            Console.WriteLine(stamped);
            log.WriteLine(stamped);
        }

        var corpus = Corpus.Load(settings.CorpusDirectory).Split().Training;
        // The corpus has no travel dialogues; the sample's own (paraphrases, never QuickStart's question itself) are
        // weighted up in this stage so that a sightseeing question gets a sightseeing answer.
        var supplement = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "dialogues-supplement.txt"))
            .Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        corpus = corpus with { Dialogues = [.. Enumerable.Repeat(supplement, settings.SupplementRepeats).SelectMany(d => d), .. corpus.Dialogues] };
        var tokenizer = await AutoTokenizer.FromPretrainedAsync(settings.OutputDirectory);
        var data = TrainingData.Build(corpus, text => tokenizer.Encode(text, addSpecialTokens: false));
        data.JapaneseShare = data.EnglishShare = settings.ChatBookShare;
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(settings.OutputDirectory);
        var parameters = model.parameters().ToList();
        // Loaded checkpoints are frozen for inference; this stage trains them.
        foreach (var parameter in parameters) parameter.requires_grad = true;
        model.train();
        int vocabulary = model.Config.VocabSize;

        using var optimizer = torch.optim.AdamW(parameters, settings.ChatPeakLearningRate, 0.9, 0.95, 1e-8, settings.WeightDecay);
        using var lossLog = new StreamWriter(Path.Combine(settings.RecordsDirectory, "chat-loss.csv"), append: false) { AutoFlush = true };
        lossLog.WriteLine("step,tokens,loss,learning_rate,seconds");
        var random = new Random((int)settings.Seed + 1);
        double smoothed = double.NaN;
        long tokensSeen = 0;
        for (int step = 1; step <= settings.ChatSteps; step++)
        {
            double learningRate = settings.ChatLearningRate(step);
            foreach (var group in optimizer.ParamGroups) group.LearningRate = learningRate;
            float loss = data.TrainStep(model, optimizer, parameters, random, settings);
            tokensSeen += settings.BatchSize * settings.SequenceLength;
            smoothed = double.IsNaN(smoothed) ? loss : 0.95 * smoothed + 0.05 * loss;
            lossLog.WriteLine($"{step},{tokensSeen},{loss:F4},{learningRate:G4},{clock.Elapsed.TotalSeconds:F1}");
            if (step % 25 == 0) Log($"chat step {step}/{settings.ChatSteps} loss {loss:F3} (smoothed {smoothed:F3}) lr {learningRate:G3}");
        }
        model.eval();
        model.SavePretrained(settings.OutputDirectory, ScalarType.Float16);
        File.WriteAllText(Path.Combine(settings.RecordsDirectory, "chat-tuning-summary.json"),
            JsonSerializer.Serialize(new TrainingSummary(settings.ChatSteps, settings.ChatSteps, tokensSeen, smoothed, clock.Elapsed.TotalSeconds, parameters.Sum(p => p.numel()))));
        Log($"chat tuning done: {settings.ChatSteps} steps, {tokensSeen} tokens, smoothed loss {smoothed:F3}, {clock.Elapsed}");
    }
}
