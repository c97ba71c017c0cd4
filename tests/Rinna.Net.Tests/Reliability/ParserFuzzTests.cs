using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Rinna.Net.Checkpoint;
using Rinna.Net.Generation;
using Rinna.Net.Model;
using Rinna.Net.Model.Adapters;
using Rinna.Net.Tokenization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Reliability;

/// <summary>All reliability tests share one collection: they measure process memory and must not overlap each other.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ReliabilityCollection
{
    public const string Name = "Reliability";
}

/// <summary>
/// Mutation campaigns over every file a model or tokenizer directory holds, started from the reference fixtures.
/// Each input must load or fail with the library's documented exception; see docs/reliability.md for the long run.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class ParserFuzzTests(ITestOutputHelper output) : IDisposable
{
    private const string Sample = "Hello, 世界! <s>こんにちは</s>\n\t  [UNK]▁ 🎉 e\u0301 ｶﾞ";
    private readonly DirectoryInfo work = Directory.CreateTempSubdirectory("rinna-fuzz-");

    public void Dispose() => work.Delete(recursive: true);

    [Fact]
    public void SafetensorsHeadersAndDataRanges()
    {
        var original = File.ReadAllBytes(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "model.safetensors"));
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(original);
        var header = Encoding.UTF8.GetString(original, 8, (int)headerLength);
        var data = original.AsMemory(8 + (int)headerLength);
        var path = Path.Combine(work.FullName, "model.safetensors");

        FuzzRunner.Run("safetensors", 1500, output, m =>
        {
            byte[] file = m.Next(4) switch
            {
                0 => m.MutateBytes(original, focusLength: 8 + (int)headerLength),
                1 => Assemble(Encoding.UTF8.GetBytes(m.MutateJson(header)), data.Span, lengthLie: m.Next(3) == 0 ? m.Next(2001) - 1000 : 0),
                2 => original[..m.Next(original.Length)],
                _ => Assemble(Encoding.UTF8.GetBytes(header), m.MutateBytes(data.ToArray()), lengthLie: 0),
            };
            File.WriteAllBytes(path, file);
            using var safetensors = SafetensorsFile.Open(path);
            foreach (var entry in safetensors.Entries)
            {
                using var tensor = safetensors.ReadTensor(entry.Name, m.Next(4) == 0 ? ScalarType.BFloat16 : null);
            }
        });
    }

    [Fact]
    public void ShardIndex()
    {
        var fixture = Fixtures.Model("tiny-neox-pythia");
        var index = File.ReadAllText(Path.Combine(fixture, ModelCheckpoint.SafetensorsIndexName));
        foreach (var shard in Directory.GetFiles(fixture, "model-*.safetensors"))
            File.CreateSymbolicLink(Path.Combine(work.FullName, Path.GetFileName(shard)), shard);

        FuzzRunner.Run("model.safetensors.index.json", 1500, output, m =>
        {
            File.WriteAllText(Path.Combine(work.FullName, ModelCheckpoint.SafetensorsIndexName), m.MutateJson(index));
            using var checkpoint = ModelCheckpoint.Open(work.FullName);
            foreach (var name in checkpoint.Entries.Keys.Take(3))
            {
                using var tensor = checkpoint.ReadTensor(name);
            }
        });
    }

    [Fact]
    public void LoraAdapterConfigAndWeights()
    {
        var fixture = Fixtures.Path("adapters", "lora-tiny-rinna");
        var config = File.ReadAllText(Path.Combine(fixture, "adapter_config.json"));
        var weights = File.ReadAllBytes(Path.Combine(fixture, "adapter_model.safetensors"));
        var layout = GptNeoXWeightLayout.For(GptNeoXConfig.FromFile(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "config.json")));
        var configPath = Path.Combine(work.FullName, "adapter_config.json");
        var weightsPath = Path.Combine(work.FullName, "adapter_model.safetensors");

        FuzzRunner.Run("adapter_config.json+adapter_model.safetensors", 1000, output, m =>
        {
            bool mutateConfig = m.Next(2) == 0;
            File.WriteAllText(configPath, mutateConfig ? m.MutateJson(config) : config);
            File.WriteAllBytes(weightsPath, mutateConfig ? weights : m.Next(3) == 0 ? weights[..m.Next(weights.Length)] : m.MutateBytes(weights));
            // An adapter that loads must also merge: every update's delta is computed as the loader would.
            using var adapter = LoraAdapter.Load(work.FullName, layout);
            foreach (var update in adapter.Updates.Values)
            {
                using var delta = update.Delta();
            }
        });
    }

    [Fact]
    public void ModelConfig()
    {
        var json = File.ReadAllText(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "config.json"));
        FuzzRunner.Run("config.json", 3000, output, m => GptNeoXConfig.FromJson(m.MutateJson(json), "config.json"));
    }

    [Fact]
    public void GenerationConfigFile()
    {
        var json = File.ReadAllText(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "generation_config.json"));
        FuzzRunner.Run("generation_config.json", 3000, output, m => GenerationConfig.FromJson(m.MutateJson(json), "generation_config.json"));
    }

    [Theory]
    [InlineData("bilingual-lookalike")]
    [InlineData("llama-style-bpe")]
    public void TokenizerConfigAndSpecialTokensMap(string fixtureName)
    {
        var fixture = Fixtures.Tokenizer(fixtureName);
        File.CreateSymbolicLink(Path.Combine(work.FullName, "spiece.model"), Path.Combine(fixture, "spiece.model"));
        var config = File.ReadAllText(Path.Combine(fixture, "tokenizer_config.json"));
        var map = File.ReadAllText(Path.Combine(fixture, "special_tokens_map.json"));

        FuzzRunner.Run($"tokenizer_config.json+special_tokens_map.json ({fixtureName})", 600, output, m =>
        {
            bool mutateConfig = m.Next(3) != 0;
            File.WriteAllText(Path.Combine(work.FullName, "tokenizer_config.json"), mutateConfig ? m.MutateJson(config) : config);
            File.WriteAllText(Path.Combine(work.FullName, "special_tokens_map.json"), mutateConfig ? map : m.MutateJson(map));
            Exercise(AutoTokenizer.FromDirectory(work.FullName));
        });
    }

    [Fact]
    public void FastTokenizerJson()
    {
        // GPT-NeoX's tokenizer.json cut to the pieces below id 1200 and the merges among them, so one input parses in
        // milliseconds; every component of the original (NFC, ByteLevel, added tokens) is kept.
        var fixture = Fixtures.Tokenizer("gpt-neox-bpe");
        File.Copy(Path.Combine(fixture, "tokenizer_config.json"), Path.Combine(work.FullName, "tokenizer_config.json"));
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(fixture, "tokenizer.json")))!.AsObject();
        var model = root["model"]!.AsObject();
        var vocab = model["vocab"]!.AsObject().Where(p => (int)p.Value! < 1200).ToDictionary(p => p.Key, p => (int)p.Value!);
        var merges = model["merges"]!.AsArray().Select(m => (string)m!).Where(m => m.Split(' ') is [var a, var b] && vocab.ContainsKey(a) && vocab.ContainsKey(b) && vocab.ContainsKey(a + b));
        model["vocab"] = new System.Text.Json.Nodes.JsonObject(vocab.Select(p => KeyValuePair.Create(p.Key, (System.Text.Json.Nodes.JsonNode?)p.Value)));
        model["merges"] = new System.Text.Json.Nodes.JsonArray(merges.Select(m => (System.Text.Json.Nodes.JsonNode?)m).ToArray());
        var json = root.ToJsonString();
        var file = Path.Combine(work.FullName, "tokenizer.json");
        File.WriteAllText(file, json);
        Exercise(AutoTokenizer.FromDirectory(work.FullName));

        FuzzRunner.Run("tokenizer.json (gpt-neox-bpe, cut)", 1500, output, m =>
        {
            File.WriteAllText(file, m.MutateJson(json));
            Exercise(AutoTokenizer.FromDirectory(work.FullName));
        });
    }

    [Theory]
    [InlineData("llama-style-bpe", 1500)]
    [InlineData("bilingual-lookalike", 300)]
    public void SentencePieceModel(string fixtureName, int iterations)
    {
        var fixture = Fixtures.Tokenizer(fixtureName);
        foreach (var name in new[] { "tokenizer_config.json", "special_tokens_map.json" })
            File.Copy(Path.Combine(fixture, name), Path.Combine(work.FullName, name));
        var model = File.ReadAllBytes(Path.Combine(fixture, "spiece.model"));

        FuzzRunner.Run($"spiece.model ({fixtureName})", iterations, output, m =>
        {
            File.WriteAllBytes(Path.Combine(work.FullName, "spiece.model"), m.MutateBytes(model));
            Exercise(AutoTokenizer.FromDirectory(work.FullName));
        });
    }

    [Fact]
    public void PyTorchBinArchive()
    {
        // torch.save's zip: the pickle (the state dict's structure) is mutated and re-zipped with the real storages,
        // and one input in four damages the archive's own headers and central directory instead.
        var original = File.ReadAllBytes(Path.Combine(Fixtures.Model("tiny-neox-rinna-bin"), ModelCheckpoint.PyTorchBinName));
        var entries = new List<(string Name, byte[] Data)>();
        using (var zip = new ZipArchive(new MemoryStream(original), ZipArchiveMode.Read))
            foreach (var entry in zip.Entries)
            {
                using var stream = entry.Open();
                var data = new byte[entry.Length];
                stream.ReadExactly(data);
                entries.Add((entry.FullName, data));
            }
        var path = Path.Combine(work.FullName, ModelCheckpoint.PyTorchBinName);

        FuzzRunner.Run("pytorch_model.bin", 1000, output, m =>
        {
            File.Delete(path);
            if (m.Next(4) == 0)
            {
                var damaged = m.Next(2) == 0
                    ? [.. m.MutateBytes(original[..4096]), .. original[4096..]]
                    : original[..^4096].Concat(m.MutateBytes(original[^4096..])).ToArray();
                File.WriteAllBytes(path, damaged);
            }
            else
            {
                using var zip = ZipFile.Open(path, ZipArchiveMode.Create);
                foreach (var (name, data) in entries)
                {
                    using var stream = zip.CreateEntry(name, CompressionLevel.NoCompression).Open();
                    stream.Write(name.EndsWith("/data.pkl", StringComparison.Ordinal) ? m.MutateBytes(data) : data);
                }
            }
            using var checkpoint = ModelCheckpoint.Open(work.FullName);
            foreach (var name in checkpoint.Entries.Keys)
            {
                using var tensor = checkpoint.ReadTensor(name);
            }
        });
    }

    /// <summary>A tokenizer that loaded must also encode and decode without failing: a bad model can hide until first use.</summary>
    private static void Exercise(PreTrainedTokenizer tokenizer)
    {
        var ids = tokenizer.Encode(Sample);
        tokenizer.Decode(ids);
        tokenizer.Decode(ids, skipSpecialTokens: true);
        tokenizer.ConvertIdsToTokens(ids);
        var stream = tokenizer.CreateStreamingDecoder();
        foreach (var id in ids) stream.Append(id);
        stream.Flush();
    }

    private static byte[] Assemble(byte[] header, ReadOnlySpan<byte> data, long lengthLie)
    {
        var file = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteInt64LittleEndian(file, header.Length + lengthLie);
        header.CopyTo(file, 8);
        data.CopyTo(file.AsSpan(8 + header.Length));
        return file;
    }
}
