using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Rinna.Net.Checkpoint;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Checkpoint;

/// <summary>The writer against the safetensors format rules and the project's validating reader.</summary>
public sealed class SafetensorsWriterTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-st-").FullName;

    public SafetensorsWriterTests() => TorchSharpNativeLoader.EnsureInstalled();

    public void Dispose() => Directory.Delete(directory, recursive: true);

    [Fact]
    public void HeaderIsAlignedOrderedAndCarriesFormatMetadata()
    {
        var path = Path.Combine(directory, "a.safetensors");
        using var scope = NewDisposeScope();
        var tensors = new Dictionary<string, Tensor>
        {
            ["z.weight"] = arange(6, ScalarType.Float32).view(2, 3),
            ["a.bias"] = tensor(new float[] { 1.5f, -2 }).to(ScalarType.BFloat16),
            ["m.ids"] = tensor(new long[] { 7, 8, 9 }),
            ["odd"] = tensor(new byte[] { 1, 2, 3 }),
        };
        SafetensorsWriter.Save(path, tensors);

        var bytes = File.ReadAllBytes(path);
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        Assert.Equal(0, (8 + headerLength) % 8);
        var header = Encoding.UTF8.GetString(bytes, 8, (int)headerLength);
        Assert.EndsWith("}", header.TrimEnd(' '));
        var names = JsonDocument.Parse(header).RootElement.EnumerateObject().Select(p => p.Name).ToList();
        Assert.Equal(["__metadata__", "a.bias", "m.ids", "odd", "z.weight"], names);
        Assert.Equal(8 + headerLength + 4 + 24 + 3 + 24, bytes.Length);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal("pt", file.Metadata["format"]);
        foreach (var (name, expected) in tensors)
        {
            using var actual = file.ReadTensor(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.True(expected.eq(actual).all().item<bool>(), name);
        }
    }

    [Fact]
    public void SameTensorsGiveIdenticalBytesAndNoTemporaryFilesRemain()
    {
        using var scope = NewDisposeScope();
        var first = new Dictionary<string, Tensor> { ["b"] = ones(3), ["a"] = zeros(2, 2).t() };
        var second = new Dictionary<string, Tensor> { ["a"] = zeros(2, 2), ["b"] = ones(3) };
        SafetensorsWriter.Save(Path.Combine(directory, "1.safetensors"), first);
        SafetensorsWriter.Save(Path.Combine(directory, "2.safetensors"), second);
        Assert.Equal(File.ReadAllBytes(Path.Combine(directory, "1.safetensors")), File.ReadAllBytes(Path.Combine(directory, "2.safetensors")));
        Assert.Equal(2, Directory.GetFiles(directory).Length);
    }

    [Fact]
    public void FailedSaveLeavesThePreviousFileIntact()
    {
        var path = Path.Combine(directory, "keep.safetensors");
        using var scope = NewDisposeScope();
        SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["x"] = ones(4) });
        var before = File.ReadAllBytes(path);
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["c"] = ones(2, ScalarType.ComplexFloat32) }));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["__metadata__"] = ones(1) }));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(directory));
    }
}
