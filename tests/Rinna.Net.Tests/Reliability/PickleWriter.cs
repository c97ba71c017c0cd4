using System.IO.Compression;
using System.Text;

namespace Rinna.Net.Tests.Reliability;

/// <summary>Writes pickle opcodes by hand, so tests can build the hostile pickles a real attacker would ship.</summary>
internal sealed class PickleWriter
{
    private readonly MemoryStream bytes = new();

    public PickleWriter() => Op(0x80).Op(2); // PROTO 2

    public PickleWriter Op(byte opcode)
    {
        bytes.WriteByte(opcode);
        return this;
    }

    public PickleWriter Op(char opcode) => Op((byte)opcode);

    public PickleWriter Str(string text)
    {
        var utf8 = Encoding.UTF8.GetBytes(text);
        Op('X');
        bytes.Write(BitConverter.GetBytes(utf8.Length));
        bytes.Write(utf8);
        return this;
    }

    public PickleWriter Global(string module, string name)
    {
        Op('c');
        bytes.Write(Encoding.ASCII.GetBytes($"{module}\n{name}\n"));
        return this;
    }

    /// <summary>STACK_GLOBAL: module and name come from the stack, the form protocol 4+ pickles use.</summary>
    public PickleWriter StackGlobal(string module, string name) => Str(module).Str(name).Op(0x93);

    public PickleWriter Int(long value)
    {
        Op(0x8a).Op(8); // LONG1 with 8 bytes covers every value the tests need
        bytes.Write(BitConverter.GetBytes(value));
        return this;
    }

    public PickleWriter Tuple(params long[] values)
    {
        Op('(');
        foreach (var v in values) Int(v);
        return Op('t');
    }

    /// <summary>A persistent id for a storage: ('storage', torch.&lt;type&gt;, key, 'cpu', numel), then BINPERSID.</summary>
    public PickleWriter Storage(string key, long numel, string type = "FloatStorage") =>
        Op('(').Str("storage").Global("torch", type).Str(key).Str("cpu").Int(numel).Op('t').Op('Q');

    /// <summary>torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, None), the way torch.save writes a tensor.</summary>
    public PickleWriter Tensor(string key, long numel, long offset, long[] size, long[] stride) =>
        Global("torch._utils", "_rebuild_tensor_v2").Op('(').Storage(key, numel).Int(offset).Tuple(size).Tuple(stride)
            .Op(0x89).Op('N').Op('t').Op('R');

    public byte[] ToArray() => bytes.ToArray();

    /// <summary>A torch.save-style zip: <c>archive/data.pkl</c> plus storages under <c>archive/data/</c>, stored uncompressed.</summary>
    public static void WriteArchive(string path, byte[] pickle, IReadOnlyDictionary<string, byte[]>? storages = null)
    {
        using var zip = ZipFile.Open(path, ZipArchiveMode.Create);
        Write(zip, "archive/data.pkl", pickle);
        foreach (var (key, data) in storages ?? new Dictionary<string, byte[]>()) Write(zip, $"archive/data/{key}", data);
    }

    private static void Write(ZipArchive zip, string name, byte[] data)
    {
        using var stream = zip.CreateEntry(name, CompressionLevel.NoCompression).Open();
        stream.Write(data);
    }
}
