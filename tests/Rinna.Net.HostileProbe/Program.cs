using Rinna.Net;
using Rinna.Net.Checkpoint;
using Rinna.Net.Generation;

// Usage: Rinna.Net.HostileProbe <job>..., each job "action|path" or "model|path|adapter directory".
// Runs each load in turn and prints "OUTCOME <job> <exception type or ok> <message length>" and, on the next line, the
// message on one line cut to 2,000 characters. The exit code is 0 whenever every load ended, whatever the outcomes:
// the parent judges them, and also watches this process's memory and time.
if (args.Length == 0)
{
    Console.Error.WriteLine("usage: Rinna.Net.HostileProbe (model|tokenizer|checkpoint|truncate-safetensors|truncate-checkpoint)|<path>...");
    return 2;
}

for (int job = 0; job < args.Length; job++)
{
    var parts = args[job].Split('|');
    Exception? error = null;
    try
    {
        await Run(parts[0], parts[1], parts.Length > 2 ? parts[2] : null);
    }
    catch (Exception e)
    {
        error = e;
    }
    var message = (error?.Message ?? "").ReplaceLineEndings(" ");
    Console.WriteLine($"OUTCOME {job} {error?.GetType().FullName ?? "ok"} {message.Length}");
    Console.WriteLine(message.Length > 2000 ? message[..2000] : message);
}
return 0;

static async Task Run(string action, string path, string? adapter)
{
    using var cancellation = new CancellationTokenSource(TimeSpan.FromSeconds(20));
    switch (action)
    {
        case "model":
        {
            var options = adapter is null ? null : new ModelLoadOptions { Adapter = adapter };
            using var model = await AutoModelForCausalLM.FromPretrainedAsync(path, options, cancellation.Token);
            _ = model.GenerationConfig();
            break;
        }
        case "tokenizer":
            _ = AutoTokenizer.FromDirectory(path, cancellationToken: cancellation.Token);
            break;
        case "checkpoint":
        {
            using var checkpoint = ModelCheckpoint.Open(path);
            foreach (var name in checkpoint.Entries.Keys) checkpoint.ReadTensor(name).Dispose();
            break;
        }
        case "truncate-safetensors":
        {
            // Another process cuts the file between the header read and the data read: here, this process does.
            using var file = SafetensorsFile.Open(path);
            Truncate(path);
            foreach (var entry in file.Entries) file.ReadTensor(entry.Name).Dispose();
            break;
        }
        case "truncate-checkpoint":
        {
            using var checkpoint = ModelCheckpoint.Open(path);
            Truncate(Path.Combine(path, ModelCheckpoint.SafetensorsName));
            foreach (var name in checkpoint.Entries.Keys) checkpoint.ReadTensor(name).Dispose();
            break;
        }
        default:
            throw new InvalidOperationException($"unknown action '{action}'");
    }
}

// Keeps the header and the first tenth of the data, so the tensors after that lie past the end.
static void Truncate(string file)
{
    Span<byte> prefix = stackalloc byte[8];
    using (var reader = File.OpenRead(file)) reader.ReadExactly(prefix);
    long dataStart = 8 + BitConverter.ToInt64(prefix);
    using var stream = new FileStream(file, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
    stream.SetLength(dataStart + (stream.Length - dataStart) / 10);
}
