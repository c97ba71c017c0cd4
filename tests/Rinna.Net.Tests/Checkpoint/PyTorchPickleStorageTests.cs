using System.IO.Compression;
using Rinna.Net.Checkpoint;
using Rinna.Net.Tests.Reliability;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Checkpoint;

/// <summary>
/// Tensors of a <c>pytorch_model.bin</c> read only the part of their storage they span: views at an offset, strided and
/// broadcast views of one shared storage, stored uncompressed as torch.save writes them or deflated by a re-zip.
/// </summary>
public sealed class PyTorchPickleStorageTests : IDisposable
{
    private readonly DirectoryInfo work = Directory.CreateTempSubdirectory("rinna-pickle-");

    public void Dispose() => work.Delete(recursive: true);

    [Theory]
    [InlineData(CompressionLevel.NoCompression)]
    [InlineData(CompressionLevel.Optimal)]
    public void ViewsOfASharedStorageReadTheirOwnElements(CompressionLevel level)
    {
        // One storage holding 0, 1, ..., 7 as float32, and three views of it.
        var pickle = new PickleWriter().Op('}')
            .Str("transposed").Tensor("0", 8, 3, [2, 2], [1, 2]).Op('s')
            .Str("tail").Tensor("0", 8, 5, [3], [1]).Op('s')
            .Str("broadcast").Tensor("0", 8, 1, [2], [0]).Op('s')
            .Op('.').ToArray();
        var path = Path.Combine(work.FullName, "pytorch_model.bin");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            using (var stream = zip.CreateEntry("archive/data.pkl", CompressionLevel.NoCompression).Open()) stream.Write(pickle);
            using var storage = zip.CreateEntry("archive/data/0", level).Open();
            foreach (var value in Enumerable.Range(0, 8)) storage.Write(BitConverter.GetBytes((float)value));
        }

        using var file = PyTorchPickleFile.Open(path);
        Assert.Equal(new float[] { 3, 5, 4, 6 }, Read(file, "transposed"));
        Assert.Equal(new float[] { 5, 6, 7 }, Read(file, "tail"));
        Assert.Equal(new float[] { 1, 1 }, Read(file, "broadcast"));
    }

    private static float[] Read(PyTorchPickleFile file, string name)
    {
        using var tensor = empty(file[name].Shape, ScalarType.Float32);
        file.ReadInto(name, tensor);
        return tensor.data<float>().ToArray();
    }
}
