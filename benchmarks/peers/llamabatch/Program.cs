// llamabatch: llama.cpp's batched decoding (llama_decode over several sequences in one batch, what LLamaSharp's
// BatchedExecutor runs) on a GGUF model fed raw token ids, in the workload of ContinuousBatchingBenchmarks: each stream
// has its own 12–19-token prompt and generates 32 greedy tokens; the prompts are decoded together in one batch, then
// every step decodes one token per stream. Prints aggregate tokens/s (prefill included) per stream count.
//
//   llamabatch --model M.gguf [--threads 2] [--streams 1,8] [--new 32] [--reps 5]
using System.Diagnostics;
using System.Globalization;
using LLama;
using LLama.Common;
using LLama.Native;

var options = new Dictionary<string, string>();
for (int i = 0; i + 1 < args.Length; i += 2) options[args[i].TrimStart('-')] = args[i + 1];
string Option(string name, string fallback) => options.TryGetValue(name, out var value) ? value : fallback;
if (!options.TryGetValue("model", out var modelPath))
{
    Console.Error.WriteLine("usage: llamabatch --model M.gguf [--threads 2] [--streams 1,8] [--new 32] [--reps 5]");
    return 2;
}
int threads = int.Parse(Option("threads", "2"), CultureInfo.InvariantCulture);
int[] streamCounts = Option("streams", "1,8").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
int newTokens = int.Parse(Option("new", "32"), CultureInfo.InvariantCulture);
int reps = int.Parse(Option("reps", "5"), CultureInfo.InvariantCulture);
int maxStreams = streamCounts.Max();

NativeLibraryConfig.All.WithLogCallback((level, message) =>
{
    if (level == LLamaLogLevel.Error) Console.Error.Write(message);
});
var parameters = new ModelParams(modelPath)
{
    ContextSize = (uint)(maxStreams * (19 + newTokens + 8)),
    BatchSize = 512,
    UBatchSize = 512,
    SeqMax = (uint)maxStreams,
    Threads = threads,
    BatchThreads = threads,
    GpuLayerCount = 0,
};
using var weights = LLamaWeights.LoadFromFile(parameters);
using var context = weights.CreateContext(parameters);
var handle = context.NativeHandle;
int vocabulary = weights.Vocab.Count;
Console.WriteLine($"# model={Path.GetFileName(modelPath)} threads={threads} system_info: " +
    System.Runtime.InteropServices.Marshal.PtrToStringAnsi(NativeApi.llama_print_system_info()));

var random = new Random(7);
int[][] prompts = Enumerable.Range(0, maxStreams).Select(i => Enumerable.Range(0, 12 + i).Select(_ => random.Next(4, vocabulary)).ToArray()).ToArray();
var batch = new LLamaBatch();

double Run(int streams)
{
    handle.MemoryClear(true);
    var stopwatch = Stopwatch.StartNew();
    batch.Clear();
    var logitIndex = new int[streams];
    for (int s = 0; s < streams; s++)
        for (int t = 0; t < prompts[s].Length; t++)
        {
            int index = batch.Add(prompts[s][t], t, (LLamaSeqId)s, t == prompts[s].Length - 1);
            if (t == prompts[s].Length - 1) logitIndex[s] = index;
        }
    Decode();
    var next = new int[streams];
    for (int s = 0; s < streams; s++) next[s] = ArgMax(handle.GetLogitsIth(logitIndex[s]));
    for (int step = 1; step < newTokens; step++)
    {
        batch.Clear();
        for (int s = 0; s < streams; s++) logitIndex[s] = batch.Add(next[s], prompts[s].Length + step - 1, (LLamaSeqId)s, true);
        Decode();
        for (int s = 0; s < streams; s++) next[s] = ArgMax(handle.GetLogitsIth(logitIndex[s]));
    }
    return streams * newTokens / stopwatch.Elapsed.TotalSeconds;
}

void Decode()
{
    var result = handle.Decode(batch);
    if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {result}");
    handle.Synchronize();
}

static int ArgMax(ReadOnlySpan<float> logits)
{
    int best = 0;
    for (int i = 1; i < logits.Length; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

Run(1);   // warm-up: page in the weights, start the threads
var medians = new Dictionary<int, double>();
foreach (int streams in streamCounts)
{
    var speeds = Enumerable.Range(0, reps).Select(_ => Run(streams)).Order().ToArray();
    medians[streams] = speeds[speeds.Length / 2];
    Console.WriteLine($"RESULT streams={streams} tok_s_median={medians[streams].ToString("F2", CultureInfo.InvariantCulture)} " +
        $"all={string.Join(",", speeds.Select(v => v.ToString("F1", CultureInfo.InvariantCulture)))}");
}
if (medians.ContainsKey(1))
    foreach (int streams in streamCounts.Where(s => s != 1))
        Console.WriteLine($"RATIO streams={streams} over_one={(medians[streams] / medians[1]).ToString("F2", CultureInfo.InvariantCulture)}");
return 0;
