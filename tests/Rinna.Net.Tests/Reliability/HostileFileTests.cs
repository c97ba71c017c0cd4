using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Rinna.Net.Checkpoint;
using Rinna.Net.Generation;
using Rinna.Net.Tests.Integration;
using Rinna.Net.Tokenization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Reliability;

/// <summary>
/// Hand-built hostile files: pickles that try to construct objects or escape the archive, and headers that claim far
/// more data than the file holds. Each must fail with the documented exception before any large allocation.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class HostileFileTests : IDisposable
{
    private const long AllocationMargin = 256L << 20;
    private readonly DirectoryInfo work = Directory.CreateTempSubdirectory("rinna-hostile-");

    public void Dispose() => work.Delete(recursive: true);

    private string BinPath => Path.Combine(work.FullName, "pytorch_model.bin");

    public static TheoryData<string, byte[]> ObjectConstructingPickles => new()
    {
        // {'w': OrderedDict(builtins.eval('...'))}: a nested REDUCE of a builtin inside an allowed one.
        { "builtins.eval", new PickleWriter().Op('}').Str("w").Global("collections", "OrderedDict").Op('(')
            .Global("builtins", "eval").Op('(').Str("__import__('os').system('id')").Op('t').Op('R').Op('t').Op('R').Op('s').Op('.').ToArray() },
        // The same through STACK_GLOBAL (protocol 4), which takes module and name from the stack.
        { "builtins.getattr", new PickleWriter().Op('}').Str("w").StackGlobal("builtins", "getattr")
            .Op('(').StackGlobal("builtins", "__import__").Op('(').Str("os").Op('t').Op('R').Str("system").Op('t').Op('R').Op('s').Op('.').ToArray() },
        // A tensor whose "storage" comes from a REDUCE of a builtin instead of a persistent id.
        { "builtins.bytearray", new PickleWriter().Op('}').Str("w").Global("torch._utils", "_rebuild_tensor_v2").Op('(')
            .Global("builtins", "bytearray").Op('(').Int(16).Op('t').Op('R').Int(0).Tuple(4).Tuple(1).Op(0x89).Op('N').Op('t').Op('R').Op('s').Op('.').ToArray() },
        // torch.load's own escape hatch: a storage type that is really a function.
        { "torch.load", new PickleWriter().Op('}').Str("w").Global("torch", "load").Op('(').Str("/etc/passwd").Op('t').Op('R').Op('s').Op('.').ToArray() },
        // INST and OBJ build instances without a GLOBAL opcode.
        { "opcode 0x69", new PickleWriter().Op('}').Str("w").Op('(').Op('i').Op('.').ToArray() },
        { "opcode 0x6f", new PickleWriter().Op('}').Str("w").Op('(').Op('}').Str("id").Op('o').Op('s').Op('.').ToArray() },
    };

    [Theory]
    [MemberData(nameof(ObjectConstructingPickles))]
    public void PickleThatConstructsAnythingButTensorsIsRefused(string what, byte[] pickle)
    {
        PickleWriter.WriteArchive(BinPath, pickle);
        var error = Assert.Throws<CheckpointException>(() => PyTorchPickleFile.Open(BinPath).Dispose());
        Assert.Contains(what.StartsWith("opcode", StringComparison.Ordinal) ? what : $"global '{what}'", error.Message);
    }

    [Theory]
    [InlineData("../0")]
    [InlineData("0/../../../../etc/passwd")]
    [InlineData("/etc/passwd")]
    [InlineData("..")]
    [InlineData("0\u0000")]
    public void StorageKeyThatCouldLeaveTheArchiveDirectoryIsRefused(string key)
    {
        var pickle = new PickleWriter().Op('}').Str("w").Tensor(key, 4, 0, [4], [1]).Op('s').Op('.').ToArray();
        PickleWriter.WriteArchive(BinPath, pickle, new Dictionary<string, byte[]> { ["0"] = new byte[16] });
        var error = Assert.Throws<CheckpointException>(() => PyTorchPickleFile.Open(BinPath).Dispose());
        Assert.Contains("invalid storage key", error.Message);
    }

    [Theory]
    [InlineData(new long[] { 1_000_000, 1_000_000 }, new long[] { 1_000_000, 1 }, 0)] // 4 TB claimed over a 16-byte storage
    [InlineData(new long[] { 5 }, new long[] { 1L << 62 }, 0)] // strides whose extent overflows long
    [InlineData(new long[] { 2 }, new long[] { 1 }, long.MaxValue - 1)] // storage offset at the end of long
    [InlineData(new long[] { 1L << 32, 1L << 32 }, new long[] { 0, 0 }, 0)] // element count overflows long
    public void HugeDeclaredTensorIsRejectedBeforeAllocation(long[] size, long[] stride, long offset)
    {
        var pickle = new PickleWriter().Op('}').Str("w").Tensor("0", 4, offset, size, stride).Op('s').Op('.').ToArray();
        PickleWriter.WriteArchive(BinPath, pickle, new Dictionary<string, byte[]> { ["0"] = new byte[16] });
        AssertNoLargeAllocation(() =>
        {
            // Open checks every storage against the archive, so it refuses the file before anything is sized by it.
            using var file = PyTorchPickleFile.Open(BinPath);
            using var tensor = empty(file["w"].Shape, file["w"].DType);
            file.ReadInto("w", tensor);
        });
    }

    [Fact]
    public void ZipEntryClaimingGigabytesIsRejectedBeforeAllocation()
    {
        const uint claimedBytes = 0x7FFF_FFF0; // 2 GiB in a 16-byte entry: the zip's size fields lie
        var pickle = new PickleWriter().Op('}').Str("w").Tensor("0", claimedBytes / 4, 0, [claimedBytes / 4], [1]).Op('s').Op('.').ToArray();
        PickleWriter.WriteArchive(BinPath, pickle, new Dictionary<string, byte[]> { ["0"] = new byte[16] });
        var zip = File.ReadAllBytes(BinPath);
        PatchUncompressedSize(zip, "archive/data/0", claimedBytes);
        File.WriteAllBytes(BinPath, zip);

        AssertNoLargeAllocation(() =>
        {
            // Open checks every storage against the archive, so it refuses the file before anything is sized by it.
            using var file = PyTorchPickleFile.Open(BinPath);
            using var tensor = empty(file["w"].Shape, file["w"].DType);
            file.ReadInto("w", tensor);
        });
    }

    [Fact]
    public void ADeflatedPickleFarLargerThanItsArchiveIsRefusedUnread()
    {
        // 128 MiB of zeros deflate to about 128 KB: an honest zip whose data.pkl would be read whole into memory.
        using (var zip = System.IO.Compression.ZipFile.Open(BinPath, System.IO.Compression.ZipArchiveMode.Create))
        {
            using var stream = zip.CreateEntry("archive/data.pkl", System.IO.Compression.CompressionLevel.Optimal).Open();
            var zeros = new byte[1 << 20];
            for (int i = 0; i < 128; i++) stream.Write(zeros);
        }
        var error = Assert.Throws<CheckpointException>(() => PyTorchPickleFile.Open(BinPath).Dispose());
        Assert.Contains("data.pkl expands to 134217728 bytes", error.Message);
    }

    [Theory]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],\"data_offsets\":[0,16]}}")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],\"data_offsets\":[0,4000000000000]}}")]
    [InlineData("{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,16]}}")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[9223372036854775800,9223372036854775807]}}")]
    public void SafetensorsShapeClaimingMoreThanTheFileIsRejectedBeforeAllocation(string header)
    {
        var path = Path.Combine(work.FullName, "model.safetensors");
        var headerBytes = Encoding.UTF8.GetBytes(header);
        var file = new byte[8 + headerBytes.Length + 16];
        BinaryPrimitives.WriteInt64LittleEndian(file, headerBytes.Length);
        headerBytes.CopyTo(file, 8);
        File.WriteAllBytes(path, file);
        AssertNoLargeAllocation(() => SafetensorsFile.Open(path).Dispose());
    }

    [Fact]
    public void AMessageQuotingAHugeTensorNameIsCut()
    {
        // The same 1 MB name declared twice: the error names the tensor, but not at the length of the name.
        var name = new string('w', 1 << 20);
        var header = $"{{\"{name}\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}},\"{name}\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}}}";
        var path = Path.Combine(work.FullName, "model.safetensors");
        var headerBytes = Encoding.UTF8.GetBytes(header);
        var file = new byte[8 + headerBytes.Length + 8];
        BinaryPrimitives.WriteInt64LittleEndian(file, headerBytes.Length);
        headerBytes.CopyTo(file, 8);
        File.WriteAllBytes(path, file);
        var error = Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.StartsWith($"{path}: tensor 'www", error.Message);
        Assert.True(error.Message.Length <= RinnaException.MaxMessageLength, $"a message of {error.Message.Length} characters");
        Assert.EndsWith("characters cut)", error.Message);
    }

    [Theory]
    [InlineData(0x7FFF_FFFFUL)] // a pieces entry claiming 2 GiB
    [InlineData(1UL << 62)]
    [InlineData(ulong.MaxValue)]
    public void SentencePieceLengthClaimingMoreThanTheFileIsRejectedBeforeAllocation(ulong claimedLength)
    {
        var fixture = Fixtures.Tokenizer("llama-style-bpe");
        foreach (var name in new[] { "tokenizer_config.json", "special_tokens_map.json" })
            File.Copy(Path.Combine(fixture, name), Path.Combine(work.FullName, name));
        var model = new List<byte> { 0x0A }; // field 1 (pieces), length-delimited
        for (var v = claimedLength; ; v >>= 7)
        {
            if (v < 0x80) { model.Add((byte)v); break; }
            model.Add((byte)(v & 0x7F | 0x80));
        }
        model.AddRange(new byte[32]);
        File.WriteAllBytes(Path.Combine(work.FullName, "spiece.model"), model.ToArray());

        long before = GC.GetAllocatedBytesForCurrentThread();
        AssertNoLargeAllocation(() => AutoTokenizer.FromDirectory(work.FullName), typeof(TokenizerException));
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 16 << 20, "managed allocation grew with the claimed length");
    }

    [Fact]
    public async Task ConfigClaimingBillionsOfPositionsAllocatesOnlyWhatGenerationUses()
    {
        using var tiny = new TinyChatModel();
        var configPath = Path.Combine(tiny.Directory, "config.json");
        using var normal = await AutoModelForCausalLM.FromPretrainedAsync(tiny.Directory);
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        config["max_position_embeddings"] = int.MaxValue;
        File.WriteAllText(configPath, config.ToJsonString());
        using var claiming = await AutoModelForCausalLM.FromPretrainedAsync(tiny.Directory);

        long peakBefore = ProcessMemory.PeakResidentBytes;
        var settings = normal.GenerationConfig() with { MaxNewTokens = 8, MinNewTokens = 8 };
        using var scope = NewDisposeScope();
        var prompt = tensor(new long[] { 2, 40, 41, 42 }).unsqueeze(0);
        var claimed = claiming.Generate(prompt, settings).Rows[0].TokenIds;
        long growth = ProcessMemory.PeakResidentBytes - peakBefore;

        Assert.True(growth < AllocationMargin, $"peak resident memory grew by {growth >> 20} MiB for an 8-token generation");
        Assert.Equal(normal.Generate(prompt, settings).Rows[0].TokenIds, claimed);
    }

    [Theory]
    [InlineData("config.json")]
    [InlineData("model.safetensors.index.json")]
    public void AJsonFileThatIsADeviceFailsBeforeMemoryRunsOut(string name)
    {
        foreach (var file in Directory.GetFiles(Fixtures.Model("tiny-neox-rinna")))
            if (!Path.GetFileName(file).StartsWith("expected", StringComparison.Ordinal) && Path.GetFileName(file) != "model.safetensors")
                File.Copy(file, Path.Combine(work.FullName, Path.GetFileName(file)));
        File.Delete(Path.Combine(work.FullName, name));
        File.CreateSymbolicLink(Path.Combine(work.FullName, name), "/dev/zero");
        var expected = name == "config.json" ? typeof(ModelConfigException) : typeof(CheckpointException);
        AssertNoLargeAllocation(() => AutoModelForCausalLM.FromPretrainedAsync(work.FullName).GetAwaiter().GetResult().Dispose(), expected);
    }

    private static void AssertNoLargeAllocation(Action action, Type? expected = null)
    {
        long peakBefore = ProcessMemory.PeakResidentBytes;
        var error = Record.Exception(action);
        Assert.NotNull(error);
        Assert.IsType(expected ?? typeof(CheckpointException), error);
        long growth = ProcessMemory.PeakResidentBytes - peakBefore;
        Assert.True(growth < AllocationMargin, $"peak resident memory grew by {growth >> 20} MiB before the file was rejected");
    }

    /// <summary>Rewrites the uncompressed-size fields of one entry, in its local header and in the central directory.</summary>
    private static void PatchUncompressedSize(byte[] zip, string entryName, uint size)
    {
        var name = Encoding.ASCII.GetBytes(entryName);
        int patched = 0;
        for (int i = 0; i + 46 < zip.Length; i++)
        {
            uint signature = BinaryPrimitives.ReadUInt32LittleEndian(zip.AsSpan(i));
            if (signature == 0x04034b50 && zip.AsSpan(i + 30, name.Length).SequenceEqual(name))
            {
                BinaryPrimitives.WriteUInt32LittleEndian(zip.AsSpan(i + 22), size);
                patched++;
            }
            else if (signature == 0x02014b50 && zip.AsSpan(i + 46, name.Length).SequenceEqual(name))
            {
                BinaryPrimitives.WriteUInt32LittleEndian(zip.AsSpan(i + 24), size);
                patched++;
            }
        }
        Assert.Equal(2, patched);
    }
}
