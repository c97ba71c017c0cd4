using System.Text;
using Rinna.Net.Checkpoint;
using Rinna.Net.Model;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Checkpoint;

/// <summary>Corrupt, truncated and hostile weight files end in a <see cref="CheckpointException"/> that names the problem.</summary>
public sealed class CheckpointValidationTests : IDisposable
{
    private readonly string work = Directory.CreateTempSubdirectory("rinna-ckpt-").FullName;

    public void Dispose() => Directory.Delete(work, recursive: true);

    private string CopyFixture(string name)
    {
        var target = Path.Combine(work, name);
        Directory.CreateDirectory(target);
        foreach (var file in Directory.GetFiles(Fixtures.Model(name)))
            File.Copy(file, Path.Combine(target, Path.GetFileName(file)));
        foreach (var file in Directory.GetFiles(target)) File.SetAttributes(file, FileAttributes.Normal);
        return target;
    }

    private static byte[] Safetensors(string header, int dataBytes)
    {
        var json = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + json.Length + dataBytes];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), (long)json.Length);
        json.CopyTo(bytes, 8);
        return bytes;
    }

    private CheckpointException OpenFails(byte[] content)
    {
        var path = Path.Combine(work, $"{Guid.NewGuid():N}.safetensors");
        File.WriteAllBytes(path, content);
        var ex = Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(path, ex.Message);
        return ex;
    }

    [Fact]
    public void ReadsEveryDtypeAndZeroDimensionalTensorsOfTheFixtures()
    {
        using var file = SafetensorsFile.Open(Path.Combine(Fixtures.Model("tiny-neox-pythia"), "model-00001-of-00002.safetensors"));
        var maskedBias = file["gpt_neox.layers.0.attention.masked_bias"];
        Assert.Empty(maskedBias.Shape);
        using var scalar = file.ReadTensor(maskedBias.Name);
        Assert.Equal(-1e9f, scalar.item<float>());
        Assert.Equal(ScalarType.Byte, file["gpt_neox.layers.0.attention.bias"].DType);
        using var causal = file.ReadTensor("gpt_neox.layers.0.attention.bias");
        Assert.Equal(256L * 257 / 2, causal.to(ScalarType.Int64).sum().item<long>());
    }

    [Fact]
    public void ChunkedCopyIsExact()
    {
        using var file = SafetensorsFile.Open(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "model.safetensors"));
        using var whole = file.ReadTensor("gpt_neox.embed_in.weight");
        // Chunks of 1025 floats exercise the offset arithmetic that tensors over 2 GB rely on.
        using var chunked = file.ReadTensor("gpt_neox.embed_in.weight", null, chunkBytes: 4100);
        Assert.True(whole.equal(chunked).all().item<bool>());
        Assert.NotEqual(0, whole.abs().sum().item<float>());
    }

    [Fact]
    public void TruncatedFileIsRejected()
    {
        var bytes = File.ReadAllBytes(Path.Combine(Fixtures.Model("tiny-neox-rinna"), "model.safetensors"));
        var ex = OpenFails(bytes[..(bytes.Length - 100)]);
        Assert.Contains("truncated", ex.Message);
        Assert.Contains("truncated", OpenFails(bytes[..5]).Message);
    }

    [Theory]
    [InlineData(-1L)]
    [InlineData(0L)]
    [InlineData(long.MaxValue)]
    [InlineData(200_000_000L)]
    public void ImpossibleHeaderLengthIsRejected(long length)
    {
        var bytes = new byte[64];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), length);
        Assert.Contains("header length", OpenFails(bytes).Message);
    }

    [Theory]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", "needs 8 bytes")]
    [InlineData("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}", "unsupported dtype 'Q4'")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "not a non-negative integer")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", "invalid data_offsets")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", "overlap")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "past its end")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", "too large")]
    [InlineData("[1,2,3]", "must be a JSON object")]
    [InlineData("{\"a\":", "not valid JSON")]
    [InlineData("{\"__metadata__\":{\"x\":1}}", "must be a string")]
    public void InvalidHeadersAreRejectedWithTheReason(string header, string reason)
    {
        var ex = OpenFails(Safetensors(header, 8));
        Assert.Contains(reason, ex.Message);
    }

    [Fact]
    public void GitLfsPointerIsRecognised()
    {
        var ex = OpenFails(Encoding.ASCII.GetBytes("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"));
        Assert.Contains("Git LFS pointer", ex.Message);
    }

    [Theory]
    [InlineData("../outside.safetensors")]
    [InlineData("/etc/passwd")]
    [InlineData("sub/../../x.safetensors")]
    [InlineData("..\\x.safetensors")]
    [InlineData("./model.safetensors")]
    public void ShardIndexCannotLeaveTheModelDirectory(string shard)
    {
        var dir = CopyFixture("tiny-neox-pythia");
        var index = Path.Combine(dir, ModelCheckpoint.SafetensorsIndexName);
        File.WriteAllText(index, File.ReadAllText(index).Replace("model-00001-of-00002.safetensors", shard.Replace("\\", "\\\\")));
        var ex = Assert.Throws<CheckpointException>(() => ModelCheckpoint.Open(dir));
        Assert.Contains("outside the model directory", ex.Message);
    }

    [Fact]
    public void IndexNamingATensorTheShardLacksIsRejected()
    {
        var dir = CopyFixture("tiny-neox-pythia");
        var index = Path.Combine(dir, ModelCheckpoint.SafetensorsIndexName);
        File.WriteAllText(index, File.ReadAllText(index).Replace("\"embed_out.weight\": \"model-00002-of-00002.safetensors\"",
            "\"embed_out.weight\": \"model-00001-of-00002.safetensors\""));
        var ex = Assert.Throws<CheckpointException>(() => ModelCheckpoint.Open(dir));
        Assert.Contains("embed_out.weight", ex.Message);
    }

    [Fact]
    public async Task MissingAndUnexpectedTensorsAreListed()
    {
        var dir = CopyFixture("tiny-neox-rinna");
        var config = Path.Combine(dir, "config.json");
        // A layer count that disagrees with the checkpoint is named before anything is built from the config.
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"));
        var ex = await Assert.ThrowsAsync<CheckpointException>(() => AutoModelForCausalLM.FromPretrainedAsync(dir));
        Assert.Contains("num_hidden_layers = 3, but the checkpoint holds 2 layers", ex.Message);
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 1"));
        ex = await Assert.ThrowsAsync<CheckpointException>(() => AutoModelForCausalLM.FromPretrainedAsync(dir));
        Assert.Contains("num_hidden_layers = 1, but the checkpoint holds 2 layers", ex.Message);

        // A tensor renamed in the header (same length, so every offset stays valid) is missing under its name and unexpected under the other.
        var weights = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(weights);
        var from = System.Text.Encoding.ASCII.GetBytes("\"gpt_neox.layers.1.mlp.dense_4h_to_h.bias\"");
        var to = System.Text.Encoding.ASCII.GetBytes("\"gpt_neox.layers.1.mlp.dense_4h_to_h.bixs\"");
        int at = bytes.AsSpan().IndexOf(from);
        Assert.True(at > 0);
        to.CopyTo(bytes, at);
        File.WriteAllBytes(weights, bytes);
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 2"));
        ex = await Assert.ThrowsAsync<CheckpointException>(() => AutoModelForCausalLM.FromPretrainedAsync(dir));
        Assert.Contains("missing tensors: gpt_neox.layers.1.mlp.dense_4h_to_h.bias", ex.Message);
        Assert.Contains("unexpected tensors: gpt_neox.layers.1.mlp.dense_4h_to_h.bixs", ex.Message);
        from.CopyTo(bytes, at);
        File.WriteAllBytes(weights, bytes);
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"));

        File.WriteAllText(config, File.ReadAllText(config).Replace("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 2").Replace("\"intermediate_size\": 256", "\"intermediate_size\": 128"));
        ex = await Assert.ThrowsAsync<CheckpointException>(() => AutoModelForCausalLM.FromPretrainedAsync(dir));
        Assert.Contains("shape mismatches", ex.Message);
        Assert.Contains("gpt_neox.layers.0.mlp.dense_h_to_4h.weight is [256, 64]", ex.Message);
    }

    [Fact]
    public async Task NoWeightsFileIsReported()
    {
        var dir = CopyFixture("tiny-neox-rinna");
        File.Delete(Path.Combine(dir, "model.safetensors"));
        var ex = await Assert.ThrowsAsync<CheckpointException>(() => AutoModelForCausalLM.FromPretrainedAsync(dir));
        Assert.Contains("no weights found", ex.Message);
        // expected.safetensors sits in the same directory and must never be mistaken for weights.
        Assert.True(File.Exists(Path.Combine(dir, "expected.safetensors")));
    }

    [Fact]
    public void PickleWithForeignGlobalIsRefused()
    {
        var path = Path.Combine(work, "pytorch_model.bin");
        using (var zip = System.IO.Compression.ZipFile.Open(path, System.IO.Compression.ZipArchiveMode.Create))
        {
            var entry = zip.CreateEntry("archive/data.pkl");
            using var stream = entry.Open();
            // protocol 2: GLOBAL os.system, a string, TUPLE1, REDUCE, STOP — what a malicious pickle does.
            stream.Write([0x80, 0x02]);
            stream.Write(Encoding.ASCII.GetBytes("cos\nsystem\n"));
            stream.Write([(byte)'X', 2, 0, 0, 0, (byte)'i', (byte)'d', 0x85, (byte)'R', (byte)'.']);
        }
        var ex = Assert.Throws<CheckpointException>(() => PyTorchPickleFile.Open(path).Dispose());
        Assert.Contains("refusing to load global 'os.system'", ex.Message);
    }

    [Fact]
    public void NonZipPickleIsExplained()
    {
        var path = Path.Combine(work, "pytorch_model.bin");
        File.WriteAllBytes(path, [0x80, 0x02, (byte)'}', (byte)'.']);
        var ex = Assert.Throws<CheckpointException>(() => PyTorchPickleFile.Open(path).Dispose());
        Assert.Contains("zip format", ex.Message);
    }

    [Fact]
    public void PytorchBinHoldsTheSameTensorsAsSafetensors()
    {
        using var bin = ModelCheckpoint.Open(Fixtures.Model("tiny-neox-rinna-bin"));
        using var st = ModelCheckpoint.Open(Fixtures.Model("tiny-neox-rinna"));
        Assert.Equal("pytorch", bin.Format);
        Assert.Equal(st.Entries.Keys.Order(), bin.Entries.Keys.Order());
        foreach (var name in st.Entries.Keys)
        {
            using var a = st.ReadTensor(name);
            using var b = bin.ReadTensor(name);
            Assert.True(a.equal(b).all().item<bool>(), name);
        }
    }
}
