using TorchSharp;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using static TorchSharp.torch;

namespace Rinna.Net.Checkpoint;

/// <summary>Where one tensor lives in a checkpoint file, as its header describes it.</summary>
/// <param name="Name">The state-dict name.</param>
/// <param name="DType">The stored element type.</param>
/// <param name="Shape">The shape (empty for a zero-dimensional tensor).</param>
/// <param name="ByteLength">Bytes of stored data.</param>
public sealed record TensorEntry(string Name, ScalarType DType, long[] Shape, long ByteLength)
{
    /// <summary>The number of elements (1 for a zero-dimensional tensor).</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A <c>.safetensors</c> file read against the format specification: the header is parsed and validated
/// (length bounds, dtypes, shape × element size == byte range, ranges inside the file and non-overlapping)
/// before any tensor is touched, and tensor data is read straight into tensor storage with positioned reads.
/// </summary>
/// <remarks>
/// The file is read, not memory-mapped: a mapped file truncated by another process while it is copied kills the process
/// (SIGBUS), whereas a short read is an ordinary <see cref="CheckpointException"/>. Reads also copy faster than page faults
/// on a mapping (see benchmarks/RESULTS.md), and the file's pages never count towards the process's resident set.
/// </remarks>
public sealed class SafetensorsFile : IDisposable
{
    /// <summary>Largest header accepted (the reference implementation uses the same bound).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly SafeFileHandle handle;
    private readonly Dictionary<string, (TensorEntry Entry, long Offset)> tensors;
    private bool disposed;

    private SafetensorsFile(string path, SafeFileHandle handle,
        Dictionary<string, (TensorEntry, long)> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        Path = path;
        this.handle = handle;
        this.tensors = tensors;
        Metadata = metadata;
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>The free-form <c>__metadata__</c> strings of the header.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The tensors the header declares, by name.</summary>
    public IEnumerable<TensorEntry> Entries => tensors.Values.Select(t => t.Entry);

    /// <summary>Whether the header declares a tensor of this name.</summary>
    public bool Contains(string name) => tensors.ContainsKey(name);

    /// <summary>The header entry of a tensor.</summary>
    /// <exception cref="CheckpointException">No tensor of this name.</exception>
    public TensorEntry this[string name] => Find(name).Entry;

    /// <summary>Opens and validates a safetensors file.</summary>
    /// <exception cref="CheckpointException">The file is missing, truncated, a Git LFS pointer, or its header is invalid.</exception>
    public static SafetensorsFile Open(string path)
    {
        SafeFileHandle handle;
        long length;
        try
        {
            (handle, length) = BoundedFile.OpenRegular(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException(path, $"cannot open the file ({ex.Message}).", ex);
        }

        try
        {
            var (headerLength, header) = ReadHeader(handle, path, length);
            long dataStart = 8 + headerLength;
            var (tensors, metadata) = ParseHeader(header, path, length - dataStart, dataStart);
            return new SafetensorsFile(path, handle, tensors, metadata);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads a tensor into a new CPU tensor, converted to <paramref name="dtype"/> when given. Only this tensor's bytes are
    /// touched; a dtype conversion holds the stored and the converted copy of this one tensor at once, never more.
    /// </summary>
    /// <exception cref="CheckpointException">No tensor of this name, or its stored type cannot be converted.</exception>
    public Tensor ReadTensor(string name, ScalarType? dtype = null) => ReadTensor(name, dtype, int.MaxValue & ~4095);

    /// <param name="name">The tensor's name.</param>
    /// <param name="dtype">The dtype to convert to, or null for the stored one.</param>
    /// <param name="chunkBytes">The most bytes read from the file at once.</param>
    internal Tensor ReadTensor(string name, ScalarType? dtype, int chunkBytes)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        var (entry, _) = Find(name);
        var target = dtype ?? entry.DType;
        if (target != entry.DType && (!ModelCheckpoint.IsFloatingPoint(entry.DType) || !ModelCheckpoint.IsFloatingPoint(target)))
            throw new CheckpointException(Path, $"tensor '{name}' is stored as {entry.DType} and cannot be converted to {target}.");
        var tensor = TensorAllocation.Empty(entry.Shape, target, Path, name);
        try
        {
            ReadInto(name, tensor, chunkBytes);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Fills <paramref name="destination"/>, a contiguous CPU tensor of the stored shape, with the named tensor: straight
    /// from the file in the stored dtype, or through one staging copy converted into it.
    /// </summary>
    internal void ReadInto(string name, Tensor destination, int chunkBytes)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        var (entry, offset) = Find(name);
        if (destination.dtype == entry.DType)
        {
            CopyInto(destination, offset, entry.ByteLength, chunkBytes);
            return;
        }
        using var stored = TensorAllocation.Empty(entry.Shape, entry.DType, Path, name);
        CopyInto(stored, offset, entry.ByteLength, chunkBytes);
        destination.copy_(stored);
    }

    /// <summary>Reads a byte range of the file into a contiguous CPU tensor, in chunks a <see cref="Span{T}"/> can address.</summary>
    /// <exception cref="CheckpointException">The file ends before the range does: it was truncated after it was opened.</exception>
    private void CopyInto(Tensor destination, long fileOffset, long byteLength, int chunkBytes)
    {
        if (byteLength == 0) return;
        long elementSize = destination.ElementSize;
        using var flat = destination.view(-1);
        long elementsPerChunk = Math.Max(1, chunkBytes / elementSize);
        for (long first = 0; first * elementSize < byteLength; first += elementsPerChunk)
        {
            long count = Math.Min(elementsPerChunk, byteLength / elementSize - first);
            using var chunk = flat.narrow(0, first, count);
            var target = chunk.bytes;
            long position = fileOffset + first * elementSize;
            for (int done = 0; done < target.Length;)
            {
                int read;
                try
                {
                    read = RandomAccess.Read(handle, target[done..], position + done);
                }
                catch (IOException ex)
                {
                    throw new CheckpointException(Path, $"cannot read the file at byte {position + done} ({ex.Message})", ex);
                }
                if (read == 0)
                    throw new CheckpointException(Path,
                        $"the file ends at byte {position + done}, inside tensor data that the header placed up to byte {fileOffset + byteLength}: it was truncated or replaced while it was read.");
                done += read;
            }
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        handle.Dispose();
    }

    private (TensorEntry Entry, long Offset) Find(string name) =>
        tensors.TryGetValue(name, out var found) ? found : throw new CheckpointException(Path, $"no tensor named '{name}'.");


    private static (long Length, byte[] Header) ReadHeader(SafeFileHandle handle, string path, long fileLength)
    {
        Span<byte> prefix = stackalloc byte[8];
        if (fileLength < 8 || ReadFully(handle, prefix, 0) < 8)
            throw new CheckpointException(path, $"truncated: the file has {fileLength} bytes, fewer than the 8-byte header length.");
        if (prefix.SequenceEqual("version "u8))
            throw new CheckpointException(path, "this is a Git LFS pointer file, not the weights. Fetch the real file (git lfs pull) or download the model.");
        long headerLength = BitConverter.ToInt64(prefix);
        if (headerLength <= 0 || headerLength > MaxHeaderBytes || headerLength > fileLength - 8)
            throw new CheckpointException(path,
                $"invalid header length {headerLength} (file has {fileLength} bytes; the header must fit and be at most {MaxHeaderBytes} bytes).");
        var header = new byte[headerLength];
        if (ReadFully(handle, header, 8) < header.Length)
            throw new CheckpointException(path, $"truncated: the file ended inside the {headerLength}-byte header.");
        return (headerLength, header);
    }

    private static int ReadFully(SafeFileHandle handle, Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int read = RandomAccess.Read(handle, buffer[done..], offset + done);
            if (read == 0) break;
            done += read;
        }
        return done;
    }

    private static (Dictionary<string, (TensorEntry, long)>, IReadOnlyDictionary<string, string>) ParseHeader(
        byte[] header, string path, long dataLength, long dataStart)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header.AsMemory().TrimEnd((byte)' '), new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException ex)
        {
            throw new CheckpointException(path, $"the header is not valid JSON ({ex.Message}).", ex);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new CheckpointException(path, "the header must be a JSON object.");
            if (JsonStrings.FindUnreadable(document.RootElement) is { } unreadable)
                throw new CheckpointException(path, $"the header's {unreadable} is not valid UTF-8 / Unicode text.");
            var tensors = new Dictionary<string, (TensorEntry, long)>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var ranges = new List<(long Begin, long End, string Name)>();
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    if (property.Value.ValueKind != JsonValueKind.Object)
                        throw new CheckpointException(path, "'__metadata__' must be an object of strings.");
                    foreach (var item in property.Value.EnumerateObject())
                        metadata[item.Name] = item.Value.ValueKind == JsonValueKind.String
                            ? item.Value.GetString()!
                            : throw new CheckpointException(path, $"'__metadata__.{item.Name}' must be a string.");
                    continue;
                }
                if (tensors.ContainsKey(property.Name))
                    throw new CheckpointException(path, $"tensor '{property.Name}' is declared twice.");
                var (entry, begin, end) = ParseEntry(property, path);
                if (end > dataLength)
                    throw new CheckpointException(path,
                        $"tensor '{entry.Name}' ends at byte {end} of the data section, past its end ({dataLength} bytes): the file is truncated or corrupt.");
                tensors.Add(entry.Name, (entry, dataStart + begin));
                ranges.Add((begin, end, entry.Name));
            }
            ranges.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
            for (int i = 1; i < ranges.Count; i++)
                if (ranges[i].Begin < ranges[i - 1].End)
                    throw new CheckpointException(path, $"tensors '{ranges[i - 1].Name}' and '{ranges[i].Name}' overlap.");
            return (tensors, metadata);
        }
    }

    private static (TensorEntry Entry, long Begin, long End) ParseEntry(JsonProperty property, string path)
    {
        var name = property.Name;
        var value = property.Value;
        CheckpointException Bad(string what) => new(path, $"tensor '{name}': {what}");
        if (value.ValueKind != JsonValueKind.Object) throw Bad("entry must be an object with dtype, shape and data_offsets.");
        if (!value.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw Bad("missing 'dtype'.");
        var dtypeName = dtypeElement.GetString()!;
        var (dtype, elementSize) = ParseDType(dtypeName) ?? throw Bad($"unsupported dtype '{dtypeName}'.");
        if (!value.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw Bad("missing 'shape'.");
        var shape = new long[shapeElement.GetArrayLength()];
        long elements = 1;
        int index = 0;
        foreach (var dim in shapeElement.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out var size) || size < 0)
                throw Bad($"shape entry {dim.GetRawText()} is not a non-negative integer.");
            shape[index++] = size;
            elements = size == 0 ? 0 : (elements > long.MaxValue / size ? throw Bad("shape is too large.") : elements * size);
        }
        if (!value.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
            throw Bad("'data_offsets' must be [begin, end].");
        if (offsets[0].ValueKind != JsonValueKind.Number || offsets[1].ValueKind != JsonValueKind.Number
            || !offsets[0].TryGetInt64(out var begin) || !offsets[1].TryGetInt64(out var end) || begin < 0 || end < begin)
            throw Bad($"invalid data_offsets {offsets.GetRawText()}.");
        if (elements > long.MaxValue / elementSize || elements * elementSize != end - begin)
            throw Bad($"shape [{string.Join(", ", shape)}] of {dtypeName} needs {elements * elementSize} bytes but data_offsets give {end - begin}.");
        return (new TensorEntry(name, dtype, shape, end - begin), begin, end);
    }

    private static (ScalarType, int)? ParseDType(string name) => name switch
    {
        "F64" => (ScalarType.Float64, 8),
        "F32" => (ScalarType.Float32, 4),
        "F16" => (ScalarType.Float16, 2),
        "BF16" => (ScalarType.BFloat16, 2),
        "I64" => (ScalarType.Int64, 8),
        "I32" => (ScalarType.Int32, 4),
        "I16" => (ScalarType.Int16, 2),
        "I8" => (ScalarType.Int8, 1),
        "U8" => (ScalarType.Byte, 1),
        "BOOL" => (ScalarType.Bool, 1),
        _ => null,
    };
}
