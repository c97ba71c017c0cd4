using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using Rinna.Net.Checkpoint;
using Rinna.Net.Model.Adapters;
using Rinna.Net.Native;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// Hostile files loaded in a child process (tests/Rinna.Net.HostileProbe) under a memory ceiling and a deadline: devices
/// and pipes in place of every file a model or tokenizer directory holds, a checkpoint truncated while it is read,
/// SentencePiece models with giant pieces, a zip bomb, and weights larger than the machine. Each load must end in its
/// documented exception; one that allocates without bound is killed at the ceiling, one that hangs at the deadline, and a
/// native crash shows as the child's exit status, so each fails its test instead of the test host or the machine.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class HostileProbeTests : IDisposable
{
    /// <summary>Resident memory the child may reach: the runtime, libtorch and a tiny model take about a third of it.</summary>
    private const long RssCeiling = 1L << 30;

    /// <summary>The child's managed heap limit, so a managed allocation without bound fails as an out-of-memory outcome.</summary>
    private const long ManagedHeapLimit = 512L << 20;

    /// <summary>Longest message accepted: messages name files and tensors, never echo what a file holds.</summary>
    private const int MaxMessageLength = 1000;

    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

    private readonly DirectoryInfo work = Directory.CreateTempSubdirectory("rinna-probe-");
    private readonly ITestOutputHelper output;

    public HostileProbeTests(ITestOutputHelper output) => this.output = output;

    public void Dispose() => work.Delete(recursive: true);

    /// <summary>Every file a model, tokenizer or adapter directory may hold: (file, fixture, action, expected exception).</summary>
    public static TheoryData<string, string, string, string> FileKinds => new()
    {
        { "config.json", "models/tiny-neox-rinna", "model", nameof(ModelConfigException) },
        { "generation_config.json", "models/tiny-neox-rinna", "model", nameof(ModelConfigException) },
        { "model.safetensors", "models/tiny-neox-rinna", "model", nameof(CheckpointException) },
        { "model.safetensors.index.json", "models/tiny-neox-pythia", "model", nameof(CheckpointException) },
        { "model-00001-of-00002.safetensors", "models/tiny-neox-pythia", "model", nameof(CheckpointException) },
        { "pytorch_model.bin", "models/tiny-neox-rinna-bin", "model", nameof(CheckpointException) },
        { "tokenizer_config.json", "tokenizers/bilingual-lookalike", "tokenizer", nameof(TokenizerException) },
        { "special_tokens_map.json", "tokenizers/bilingual-lookalike", "tokenizer", nameof(TokenizerException) },
        { "spiece.model", "tokenizers/bilingual-lookalike", "tokenizer", nameof(TokenizerException) },
        { "tokenizer.json", "tokenizers/gpt-neox-bpe", "tokenizer", nameof(TokenizerException) },
        { "adapter_config.json", "adapters/lora-tiny-rinna", "adapter", nameof(AdapterConfigException) },
        { "adapter_model.safetensors", "adapters/lora-tiny-rinna", "adapter", nameof(CheckpointException) },
    };

    [Theory]
    [MemberData(nameof(FileKinds))]
    public void AFileThatIsADeviceOrAPipeFailsAtOnce(string file, string fixture, string action, string expected)
    {
        var jobs = new List<string>();
        foreach (var kind in new[] { "/dev/zero", "/dev/urandom", "fifo" })
        {
            var directory = Copy(fixture, kind.Replace('/', '_'));
            var target = Path.Combine(directory, file);
            File.Delete(target);
            if (kind == "fifo") MakeFifo(target);
            else File.CreateSymbolicLink(target, kind);
            jobs.Add(action == "adapter" ? $"model|{Copy("models/tiny-neox-rinna", "model" + kind.Replace('/', '_'))}|{directory}" : $"{action}|{directory}");
        }
        foreach (var outcome in Run(jobs))
        {
            Assert.Equal(expected, outcome.Type.Split('.')[^1]);
            Assert.Contains(file, outcome.Message);
        }
    }

    [Fact]
    public void ACheckpointTruncatedWhileItIsReadIsACheckpointException()
    {
        var file = Path.Combine(work.FullName, "model.safetensors");
        File.Copy(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "model.safetensors"), file);
        var directory = Copy("models/tiny-neox-rinna", "checkpoint");
        foreach (var outcome in Run([$"truncate-safetensors|{file}", $"truncate-checkpoint|{directory}"]))
        {
            Assert.Equal(typeof(CheckpointException).FullName, outcome.Type);
            Assert.Contains("truncated", outcome.Message);
        }
    }

    [Fact]
    public void SentencePieceModelsWithGiantPiecesOrTooManyPiecesFailFast()
    {
        var jobs = new List<(string Job, string Expect)>();
        foreach (var megabytes in new[] { 50, 150 })
        {
            // One piece of that many (zero) bytes, appended to a real model; the file is sparse.
            var directory = Copy("tokenizers/bilingual-lookalike", $"piece{megabytes}");
            var model = Path.Combine(directory, "spiece.model");
            long pieceBytes = megabytes << 20;
            var prefix = new List<byte>(File.ReadAllBytes(model)) { 0x0A };
            var inner = new List<byte> { 0x0A };
            Varint(inner, (ulong)pieceBytes);
            Varint(prefix, (ulong)(inner.Count + pieceBytes));
            prefix.AddRange(inner);
            using (var stream = new FileStream(model, FileMode.Create))
            {
                stream.Write(prefix.ToArray());
                stream.SetLength(prefix.Count + pieceBytes);
            }
            jobs.Add(($"tokenizer|{directory}", "bytes, more than"));
        }
        {
            var directory = Copy("tokenizers/bilingual-lookalike", "long-piece");
            File.AppendAllBytes(Path.Combine(directory, "spiece.model"), Piece(new string('a', 5000)));
            jobs.Add(($"tokenizer|{directory}", "more than the 4096"));
        }
        {
            var directory = Copy("tokenizers/bilingual-lookalike", "many-pieces");
            using var stream = new FileStream(Path.Combine(directory, "spiece.model"), FileMode.Append);
            // Score and type left at their defaults, so 1.1 million pieces fit in about 13 MB.
            for (int i = 0; i < 1_100_000; i++) stream.Write(Piece($"p{i}", minimal: true));
            jobs.Add(($"tokenizer|{directory}", "more than 1048576 pieces"));
        }
        var outcomes = Run(jobs.Select(j => j.Job).ToList());
        for (int i = 0; i < outcomes.Count; i++)
        {
            Assert.Equal(typeof(TokenizerException).FullName, outcomes[i].Type);
            Assert.Contains(jobs[i].Expect, outcomes[i].Message);
        }
    }

    [Fact]
    public void AZipBombIsRefusedBeforeItsStorageIsAllocated()
    {
        // 1 GiB of zeros deflates to about a megabyte: an honest zip whose one storage is far larger than the file.
        var directory = Directory.CreateDirectory(Path.Combine(work.FullName, "bomb")).FullName;
        File.Copy(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "config.json"), Path.Combine(directory, "config.json"));
        var pickle = new PickleWriter().Op('}').Str("w").Tensor("0", 1L << 28, 0, [1L << 28], [1]).Op('s').Op('.').ToArray();
        using (var zip = ZipFile.Open(Path.Combine(directory, ModelCheckpoint.PyTorchBinName), ZipArchiveMode.Create))
        {
            using (var stream = zip.CreateEntry("archive/data.pkl", CompressionLevel.NoCompression).Open()) stream.Write(pickle);
            using var storage = zip.CreateEntry("archive/data/0", CompressionLevel.Optimal).Open();
            var zeros = new byte[1 << 20];
            for (int i = 0; i < 1024; i++) storage.Write(zeros);
        }
        var outcome = Assert.Single(Run([$"checkpoint|{directory}"]));
        Assert.Equal(typeof(CheckpointException).FullName, outcome.Type);
        Assert.Contains("zip bomb", outcome.Message);
    }

    [Fact]
    public void WeightsLargerThanTheMemoryAvailableAreRefusedBeforeAllocation()
    {
        // A config and a sparse checkpoint that agree on an embedding twice the size of the memory available.
        long available = MemoryInfo.AvailableBytes;
        Assert.True(available < long.MaxValue / 4, "the memory available is unknown here");
        var model = Copy("models/tiny-neox-rinna", "huge-model");
        var configPath = Path.Combine(model, "config.json");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        int hidden = config["hidden_size"]!.GetValue<int>();
        long vocab = available * 2 / (hidden * 4L * 2) + 1;
        Assert.True(vocab < int.MaxValue, "too much memory here for a vocabulary to exceed it");
        config["vocab_size"] = vocab;
        File.WriteAllText(configPath, config.ToJsonString());
        using (var fixture = SafetensorsFile.Open(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "model.safetensors")))
            WriteSparseSafetensors(Path.Combine(model, "model.safetensors"), fixture.Entries.Select(e =>
                e.Name is "gpt_neox.embed_in.weight" or "embed_out.weight" ? (e.Name, new[] { vocab, hidden }) : (e.Name, e.Shape)));

        // One tensor claiming that much, read on its own.
        var single = Directory.CreateDirectory(Path.Combine(work.FullName, "huge-tensor")).FullName;
        WriteSparseSafetensors(Path.Combine(single, "model.safetensors"), [("w", [available * 2 / 4 + 1])]);

        var outcomes = Run([$"model|{model}", $"checkpoint|{single}"]);
        foreach (var outcome in outcomes)
        {
            Assert.Equal(typeof(CheckpointException).FullName, outcome.Type);
            Assert.Contains("bytes of memory available", outcome.Message);
        }
        Assert.Contains("vocab_size", outcomes[0].Message);
        Assert.Contains("'w'", outcomes[1].Message);
    }

    private sealed record Outcome(string Type, string Message);

    /// <summary>
    /// Runs the probe on <paramref name="jobs"/> and returns one outcome per job, after checking that the child stayed
    /// under the memory ceiling and the deadline, exited normally and kept its messages short.
    /// </summary>
    private List<Outcome> Run(IReadOnlyList<string> jobs)
    {
        // The probe builds into the same bin/<configuration>/<framework>/<runtime> layout as this project.
        var layout = Path.GetRelativePath(Path.Combine(Fixtures.RepoRoot, "tests", "Rinna.Net.Tests"), AppContext.BaseDirectory);
        var assembly = Path.Combine(Fixtures.RepoRoot, "tests", "Rinna.Net.HostileProbe", layout, "Rinna.Net.HostileProbe.dll");
        Assert.True(File.Exists(assembly), $"{assembly} is not built.");
        var info = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        info.ArgumentList.Add(assembly);
        foreach (var job in jobs) info.ArgumentList.Add(job);
        info.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        info.Environment["DOTNET_GCHeapHardLimit"] = $"0x{ManagedHeapLimit:X}";

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        long peak = 0;
        var clock = Stopwatch.StartNew();
        string? killed = null;
        while (!process.WaitForExit(TimeSpan.FromMilliseconds(5)))
        {
            peak = Math.Max(peak, ResidentBytes(process.Id));
            if (peak > RssCeiling) killed = $"its resident memory reached {peak >> 20} MiB, over the {RssCeiling >> 20} MiB ceiling";
            else if (clock.Elapsed > Deadline) killed = $"it was still running after {Deadline.TotalSeconds:0} s";
            if (killed is null) continue;
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            break;
        }
        process.WaitForExit();
        var lines = stdout.Result.Split('\n');
        var outcomes = new List<Outcome>();
        for (int i = 0; i + 1 < lines.Length; i++)
        {
            if (!lines[i].StartsWith("OUTCOME ", StringComparison.Ordinal)) continue;
            var fields = lines[i].Split(' ');
            Assert.True(int.Parse(fields[3]) <= MaxMessageLength, $"job {fields[1]}: a message of {fields[3]} characters: {lines[i + 1]}");
            outcomes.Add(new Outcome(fields[2], lines[i + 1]));
        }
        var summary = string.Join("\n", outcomes.Select((o, i) => $"  {jobs[i]}: {o.Type}: {o.Message}"));
        output.WriteLine($"{jobs.Count} job(s) in {clock.Elapsed.TotalSeconds:0.0} s, peak RSS {peak >> 20} MiB:\n{summary}");
        if (killed is not null)
            Assert.Fail($"the probe was killed because {killed}, during job {outcomes.Count} ({jobs[Math.Min(outcomes.Count, jobs.Count - 1)]}).\n{summary}");
        Assert.True(process.ExitCode == 0 && outcomes.Count == jobs.Count,
            $"the probe exited with status {process.ExitCode} after {outcomes.Count} of {jobs.Count} job(s) (a native crash shows as 134 or 135):\n{summary}\n{Tail(stderr.Result)}");
        return outcomes;
    }

    private static long ResidentBytes(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return long.Parse(line["VmRSS:".Length..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException)
        {
            // The child has exited between the check and the read.
        }
        return 0;
    }

    private static string Tail(string text) => text.Length > 2000 ? text[^2000..] : text;

    /// <summary>Copies a fixture directory (without the expected outputs) into a fresh directory of the test's own.</summary>
    private string Copy(string fixture, string name)
    {
        var target = Directory.CreateDirectory(Path.Combine(work.FullName, name + "-" + fixture.Replace('/', '-'))).FullName;
        foreach (var file in Directory.GetFiles(Fixtures.Path(fixture.Split('/'))))
            if (!Path.GetFileName(file).StartsWith("expected", StringComparison.Ordinal))
                File.Copy(file, Path.Combine(target, Path.GetFileName(file)));
        return target;
    }

    private static void MakeFifo(string path)
    {
        Assert.Equal(0, MkFifo(path, Convert.ToUInt32("600", 8)));
    }

    [DllImport("libc", EntryPoint = "mkfifo", SetLastError = true)]
    private static extern int MkFifo([MarshalAs(UnmanagedType.LPUTF8Str)] string path, uint mode);

    /// <summary>A <c>pieces</c> entry of a SentencePiece <c>ModelProto</c>: the piece, score 0, type NORMAL (implied when minimal).</summary>
    private static byte[] Piece(string piece, bool minimal = false)
    {
        var text = Encoding.UTF8.GetBytes(piece);
        var inner = new List<byte> { 0x0A };
        Varint(inner, (ulong)text.Length);
        inner.AddRange(text);
        if (!minimal) inner.AddRange([0x15, 0, 0, 0, 0, 0x18, 1]);
        var entry = new List<byte> { 0x0A };
        Varint(entry, (ulong)inner.Count);
        entry.AddRange(inner);
        return entry.ToArray();
    }

    private static void Varint(List<byte> bytes, ulong value)
    {
        for (; value >= 0x80; value >>= 7) bytes.Add((byte)(value & 0x7F | 0x80));
        bytes.Add((byte)value);
    }

    /// <summary>A float32 safetensors file with these tensors whose data is a hole: no disk is used, whatever the sizes.</summary>
    private static void WriteSparseSafetensors(string path, IEnumerable<(string Name, long[] Shape)> tensors)
    {
        var header = new JsonObject();
        long offset = 0;
        foreach (var (name, shape) in tensors)
        {
            long bytes = shape.Aggregate(4L, (a, b) => a * b);
            header[name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        using var stream = new FileStream(path, FileMode.Create);
        var length = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(length, json.Length);
        stream.Write(length);
        stream.Write(json);
        stream.SetLength(8 + json.Length + offset);
    }
}
