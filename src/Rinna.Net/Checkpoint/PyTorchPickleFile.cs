using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using static TorchSharp.torch;

namespace Rinna.Net.Checkpoint;

/// <summary>
/// A <c>torch.save</c> zip archive (<c>pytorch_model.bin</c>) read by a deliberately tiny pickle machine: it understands
/// the opcodes a state dict uses and constructs nothing but ordered dicts and tensor descriptors. Any other global
/// (the hook Python pickles use to run arbitrary code) is refused. Tensor bytes are read lazily, one tensor at a time.
/// </summary>
internal sealed class PyTorchPickleFile : ITensorFile
{
    private const long MaxPickleBytes = 256L << 20;

    /// <summary>
    /// How many times its own size an archive may expand to. torch.save stores entries uncompressed (ratio 1) and floating
    /// point weights hardly deflate, so only a zip bomb comes near: its storages are refused before they are allocated.
    /// </summary>
    private const long MaxExpansion = 16;

    private static readonly Dictionary<string, ScalarType> StorageTypes = new(StringComparer.Ordinal)
    {
        ["torch.FloatStorage"] = ScalarType.Float32,
        ["torch.HalfStorage"] = ScalarType.Float16,
        ["torch.BFloat16Storage"] = ScalarType.BFloat16,
        ["torch.DoubleStorage"] = ScalarType.Float64,
        ["torch.LongStorage"] = ScalarType.Int64,
        ["torch.IntStorage"] = ScalarType.Int32,
        ["torch.ShortStorage"] = ScalarType.Int16,
        ["torch.CharStorage"] = ScalarType.Int8,
        ["torch.ByteStorage"] = ScalarType.Byte,
        ["torch.BoolStorage"] = ScalarType.Bool,
    };

    private readonly ZipArchive archive;
    private readonly string root;
    private readonly Dictionary<string, TensorDescriptor> tensors;

    private PyTorchPickleFile(string path, ZipArchive archive, string root, Dictionary<string, TensorDescriptor> tensors)
    {
        Path = path;
        this.archive = archive;
        this.root = root;
        this.tensors = tensors;
        Names = tensors.Keys.ToHashSet(StringComparer.Ordinal);
    }

    public string Path { get; }
    public IReadOnlySet<string> Names { get; }
    public TensorEntry this[string name] => Find(name).Entry;

    public static PyTorchPickleFile Open(string path)
    {
        ZipArchive archive;
        long fileLength;
        try
        {
            var (handle, length) = BoundedFile.OpenRegular(path);
            fileLength = length;
            var stream = new FileStream(handle, FileAccess.Read, 1 << 16);
            try
            {
                archive = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: false);
            }
            catch
            {
                stream.Dispose();
                throw;
            }
        }
        catch (InvalidDataException ex)
        {
            throw new CheckpointException(path,
                "not a zip archive: only the zip format of torch.save (PyTorch 1.6 and later) is supported; re-save the checkpoint or use safetensors.", ex);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException(path, $"cannot open the file ({ex.Message}).", ex);
        }
        try
        {
            var pickle = archive.Entries.FirstOrDefault(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal)
                && e.FullName.IndexOf('/') == e.FullName.Length - "/data.pkl".Length)
                ?? throw new CheckpointException(path, "the archive has no '<root>/data.pkl' entry.");
            if (pickle.Length > MaxPickleBytes)
                throw new CheckpointException(path, $"data.pkl is {pickle.Length} bytes; a state dict pickle is far smaller.");
            CheckExpansion(path, pickle);
            long limit = MaxExpansion * fileLength + (64L << 20);
            if (pickle.Length > limit)
                throw new CheckpointException(path, $"data.pkl expands to {pickle.Length} bytes from a {fileLength}-byte file: a zip bomb or a corrupt archive.");
            var root = pickle.FullName[..^"/data.pkl".Length];
            var bytes = new byte[pickle.Length];
            using (var stream = pickle.Open()) stream.ReadExactly(bytes);
            var result = new StateDictUnpickler(bytes, path).Run();
            var tensors = new Dictionary<string, TensorDescriptor>(StringComparer.Ordinal);
            foreach (var (name, value) in result)
            {
                if (value is not TensorDescriptor descriptor)
                    throw new CheckpointException(path, $"state dict entry '{name}' is not a tensor.");
                tensors[name] = descriptor with { Entry = descriptor.Entry with { Name = name } };
            }
            var file = new PyTorchPickleFile(path, archive, root, tensors);
            // Every storage is checked against the archive before any tensor is allocated, as safetensors' header is.
            var storages = new HashSet<ZipArchiveEntry>();
            foreach (var name in tensors.Keys) storages.Add(file.StorageEntry(name));
            long expanded = pickle.Length;
            foreach (var storage in storages) expanded += storage.Length;
            if (expanded > limit)
                throw new CheckpointException(path,
                    $"the archive's entries expand to {expanded} bytes from a {fileLength}-byte file, more than {MaxExpansion} times its size: a zip bomb or a corrupt archive.");
            return file;
        }
        catch (Exception ex) when (ex is InvalidDataException or IOException or EndOfStreamException)
        {
            archive.Dispose();
            throw new CheckpointException(path, $"corrupt archive ({ex.Message}).", ex);
        }
        catch
        {
            archive.Dispose();
            throw;
        }
    }

    public void ReadInto(string name, Tensor destination)
    {
        var descriptor = Find(name);
        var entry = StorageEntry(name);
        int elementSize = ElementSize(descriptor.Entry.DType);
        // Only the elements this tensor spans are read: a storage shared with other tensors, or larger than its tensors
        // need, costs nothing beyond them.
        long extent = descriptor.RequiredStorageElements == 0 ? 0 : descriptor.RequiredStorageElements - descriptor.StorageOffset;
        var storage = TensorAllocation.Empty([extent], descriptor.Entry.DType, Path, name);
        try
        {
            if (extent > 0)
            {
                using var stream = entry.Open();
                Skip(stream, descriptor.StorageOffset * elementSize);
                ReadAll(stream, storage, extent * elementSize);
            }
            using var strided = storage.as_strided(descriptor.Entry.Shape, descriptor.Stride, 0);
            destination.copy_(strided);
        }
        catch (Exception ex) when (ex is InvalidDataException or EndOfStreamException or IOException)
        {
            throw new CheckpointException(Path, $"tensor '{name}': corrupt storage ({ex.Message}).", ex);
        }
        finally
        {
            storage.Dispose();
        }
    }

    private static void Skip(Stream stream, long bytes)
    {
        if (bytes == 0) return;
        if (stream.CanSeek)
        {
            stream.Seek(bytes, SeekOrigin.Current);
            return;
        }
        var scratch = new byte[(int)Math.Min(bytes, 1 << 16)];
        for (long left = bytes; left > 0;)
        {
            int read = stream.Read(scratch, 0, (int)Math.Min(left, scratch.Length));
            if (read == 0) throw new EndOfStreamException($"the storage ends {left} bytes before the tensor's offset.");
            left -= read;
        }
    }

    public void Dispose() => archive.Dispose();

    /// <summary>The zip entry holding a tensor's storage, refused when it is missing or cannot hold the tensor.</summary>
    private ZipArchiveEntry StorageEntry(string name)
    {
        var descriptor = Find(name);
        var entryName = $"{root}/data/{descriptor.StorageKey}";
        var entry = archive.GetEntry(entryName) ?? throw new CheckpointException(Path, $"tensor '{name}': storage '{entryName}' is missing.");
        CheckExpansion(Path, entry);
        int elementSize = ElementSize(descriptor.Entry.DType);
        if (entry.Length % elementSize != 0 || entry.Length / elementSize < descriptor.RequiredStorageElements)
            throw new CheckpointException(Path,
                $"tensor '{name}': storage '{entryName}' has {entry.Length} bytes, too few for shape [{string.Join(", ", descriptor.Entry.Shape)}] at offset {descriptor.StorageOffset}.");
        return entry;
    }

    /// <summary>Deflate expands at most about 1032-fold: a larger claimed size is a lie in the zip header.</summary>
    private static void CheckExpansion(string path, ZipArchiveEntry entry)
    {
        if (entry.Length > entry.CompressedLength * 1032 + 1024)
            throw new CheckpointException(path,
                $"'{entry.FullName}' claims {entry.Length} bytes in {entry.CompressedLength} stored bytes; the archive is corrupt.");
    }

    private TensorDescriptor Find(string name) =>
        tensors.TryGetValue(name, out var d) ? d : throw new CheckpointException(Path, $"no tensor named '{name}'.");

    private static void ReadAll(Stream stream, Tensor destination, long byteLength)
    {
        const int chunk = 1 << 26;
        using var flat = destination.view(-1);
        long elementSize = destination.ElementSize;
        long elementsPerChunk = chunk / elementSize;
        for (long first = 0; first * elementSize < byteLength; first += elementsPerChunk)
        {
            long count = Math.Min(elementsPerChunk, byteLength / elementSize - first);
            using var part = flat.narrow(0, first, count);
            stream.ReadExactly(part.bytes);
        }
    }

    private static int ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1,
    };

    private sealed record StorageRef(ScalarType DType, string Key);

    private sealed record TensorDescriptor(TensorEntry Entry, string StorageKey, long StorageOffset, long[] Stride)
    {
        public long RequiredStorageElements =>
            Entry.ElementCount == 0 ? 0 : checked(StorageOffset + 1 + Entry.Shape.Zip(Stride, (size, stride) => checked((size - 1) * stride)).Sum());
    }

    private sealed record Global(string Name);

    private sealed class Mark;

    /// <summary>Pickle protocol 2–5 subset used by <c>torch.save(state_dict)</c>.</summary>
    private sealed class StateDictUnpickler(byte[] data, string path)
    {
        private const int MaxStack = 1 << 20;
        private static readonly Mark TheMark = new();
        private readonly List<object?> stack = [];
        private readonly Dictionary<long, object?> memo = [];
        private int position;

        public List<KeyValuePair<string, object?>> Run()
        {
            while (true)
            {
                byte op = ReadByte();
                switch (op)
                {
                    case 0x80: ReadByte(); break; // PROTO
                    case 0x95: Skip(8); break; // FRAME
                    case (byte)'.': // STOP
                        return Pop() as List<KeyValuePair<string, object?>> ?? throw Fail("the pickle does not hold a dict.");
                    case (byte)'}': Push(new List<KeyValuePair<string, object?>>()); break; // EMPTY_DICT
                    case (byte)']': Push(new List<object?>()); break; // EMPTY_LIST
                    case (byte)')': Push(Array.Empty<object?>()); break; // EMPTY_TUPLE
                    case (byte)'(': Push(TheMark); break; // MARK
                    case (byte)'N': Push(null); break;
                    case 0x88: Push(true); break;
                    case 0x89: Push(false); break;
                    case (byte)'K': Push((long)ReadByte()); break; // BININT1
                    case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(Take(2))); break; // BININT2
                    case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(Take(4))); break; // BININT
                    case 0x8a: Push(ReadLong1()); break; // LONG1
                    case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(Take(8))); break; // BINFLOAT
                    case (byte)'X': Push(Encoding.UTF8.GetString(TakeLengthPrefixed())); break; // BINUNICODE
                    case 0x8c: Push(Encoding.UTF8.GetString(Take(ReadByte()))); break; // SHORT_BINUNICODE
                    case (byte)'U': Push(Encoding.Latin1.GetString(Take(ReadByte()))); break; // SHORT_BINSTRING
                    case (byte)'T': Push(Encoding.Latin1.GetString(TakeLengthPrefixed())); break; // BINSTRING
                    case (byte)'q': memo[ReadByte()] = Peek(); break; // BINPUT
                    case (byte)'r': memo[BinaryPrimitives.ReadUInt32LittleEndian(Take(4))] = Peek(); break; // LONG_BINPUT
                    case 0x94: memo[memo.Count] = Peek(); break; // MEMOIZE
                    case (byte)'h': Push(Recall(ReadByte())); break; // BINGET
                    case (byte)'j': Push(Recall(BinaryPrimitives.ReadUInt32LittleEndian(Take(4)))); break; // LONG_BINGET
                    case (byte)'t': Push(PopToMark().ToArray()); break; // TUPLE
                    case 0x85: Push(new[] { Pop() }); break; // TUPLE1
                    case 0x86: { var b = Pop(); var a = Pop(); Push(new[] { a, b }); break; }
                    case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new[] { a, b, c }); break; }
                    case (byte)'c': Push(ResolveGlobal($"{ReadLine()}.{ReadLine()}")); break; // GLOBAL
                    case 0x93: { var name = Pop() as string; var module = Pop() as string; Push(ResolveGlobal($"{module}.{name}")); break; }
                    case (byte)'Q': Push(PersistentLoad(Pop())); break; // BINPERSID
                    case (byte)'R': { var args = Pop() as object?[] ?? throw Fail("REDUCE without an argument tuple."); Push(Reduce(Pop(), args)); break; }
                    case 0x81: { var args = Pop() as object?[] ?? throw Fail("NEWOBJ without an argument tuple."); Push(Reduce(Pop(), args)); break; }
                    case (byte)'b': Pop(); break; // BUILD: the only state a state dict carries is OrderedDict._metadata, which is not needed
                    case (byte)'s': { var v = Pop(); var k = Pop(); AddItem(Peek(), k, v); break; } // SETITEM
                    case (byte)'u': // SETITEMS
                    {
                        var items = PopToMark();
                        var dict = Peek();
                        for (int i = 0; i + 1 < items.Count; i += 2) AddItem(dict, items[i], items[i + 1]);
                        break;
                    }
                    case (byte)'a': { var v = Pop(); AsList(Peek()).Add(v); break; } // APPEND
                    case (byte)'e': { var items = PopToMark(); AsList(Peek()).AddRange(items); break; } // APPENDS
                    default:
                        throw Fail($"unsupported pickle opcode 0x{op:x2} at byte {position - 1}; only plain state dicts of tensors can be loaded.");
                }
            }
        }

        private object ResolveGlobal(string name) =>
            name is "collections.OrderedDict" or "torch._utils._rebuild_tensor_v2" or "torch._utils._rebuild_parameter"
                || StorageTypes.ContainsKey(name)
                ? new Global(name)
                : throw Fail($"refusing to load global '{name}': a state dict holds only tensors, and other objects could run code.");

        private object PersistentLoad(object? pid)
        {
            // ('storage', storage_type, key, location, numel)
            if (pid is not object?[] { Length: 5 } t || t[0] as string != "storage" || t[1] is not Global type
                || !StorageTypes.TryGetValue(type.Name, out var dtype) || t[2] is not string key)
                throw Fail("unexpected persistent id: only tensor storages are supported.");
            if (key.Length == 0 || key.Any(c => !char.IsAsciiLetterOrDigit(c) && c != '_'))
                throw Fail($"invalid storage key '{key}'.");
            return new StorageRef(dtype, key);
        }

        private object? Reduce(object? callable, object?[] args)
        {
            if (callable is not Global global) throw Fail("REDUCE of something that is not an allowed global.");
            switch (global.Name)
            {
                case "collections.OrderedDict":
                    return new List<KeyValuePair<string, object?>>();
                case "torch._utils._rebuild_parameter":
                    return args.Length >= 1 && args[0] is TensorDescriptor p ? p : throw Fail("_rebuild_parameter without a tensor.");
                case "torch._utils._rebuild_tensor_v2":
                    if (args.Length < 4 || args[0] is not StorageRef storage || args[1] is not long offset
                        || args[2] is not object?[] size || args[3] is not object?[] stride || size.Length != stride.Length)
                        throw Fail("malformed _rebuild_tensor_v2 arguments.");
                    var shape = size.Select(s => s is long l && l >= 0 ? l : throw Fail("negative or non-integer tensor size.")).ToArray();
                    var strides = stride.Select(s => s is long l && l >= 0 ? l : throw Fail("negative or non-integer tensor stride.")).ToArray();
                    if (offset < 0) throw Fail("negative storage offset.");
                    try
                    {
                        long elements = 1;
                        foreach (var dim in shape) elements = checked(elements * dim);
                        var descriptor = new TensorDescriptor(new TensorEntry("", storage.DType, shape, checked(elements * ElementSize(storage.DType))),
                            storage.Key, offset, strides);
                        _ = descriptor.RequiredStorageElements;
                        return descriptor;
                    }
                    catch (OverflowException)
                    {
                        throw Fail($"tensor size [{string.Join(", ", shape)}], stride [{string.Join(", ", strides)}] at offset {offset} overflows a 64-bit extent.");
                    }
                default:
                    throw Fail($"cannot construct '{global.Name}'.");
            }
        }

        private void AddItem(object? target, object? key, object? value)
        {
            if (target is not List<KeyValuePair<string, object?>> dict) throw Fail("SETITEM on something that is not a dict.");
            if (key is not string name)
            {
                // Only the nested _metadata dicts have non-string keys; they are dropped with BUILD anyway.
                return;
            }
            dict.Add(new(name, value));
        }

        private List<object?> AsList(object? target) => target as List<object?> ?? throw Fail("APPEND on something that is not a list.");

        private List<object?> PopToMark()
        {
            int markIndex = stack.FindLastIndex(o => ReferenceEquals(o, TheMark));
            if (markIndex < 0) throw Fail("MARK expected.");
            var items = stack.GetRange(markIndex + 1, stack.Count - markIndex - 1);
            stack.RemoveRange(markIndex, stack.Count - markIndex);
            return items;
        }

        private object? Recall(long key) => memo.TryGetValue(key, out var v) ? v : throw Fail($"memo key {key} is undefined.");

        private void Push(object? value)
        {
            if (stack.Count >= MaxStack) throw Fail("pickle stack too deep.");
            stack.Add(value);
        }

        private object? Pop()
        {
            if (stack.Count == 0 || ReferenceEquals(stack[^1], TheMark)) throw Fail("pickle stack underflow.");
            var value = stack[^1];
            stack.RemoveAt(stack.Count - 1);
            return value;
        }

        private object? Peek() => stack.Count > 0 ? stack[^1] : throw Fail("pickle stack underflow.");

        private byte ReadByte() => position < data.Length ? data[position++] : throw Fail("the pickle ends early.");

        private ReadOnlySpan<byte> Take(int count)
        {
            if (count < 0 || count > data.Length - position) throw Fail("the pickle ends early.");
            var span = data.AsSpan(position, count);
            position += count;
            return span;
        }

        private void Skip(int count) => Take(count);

        /// <summary>A 32-bit little-endian length, then that many bytes; a length beyond int (and so beyond the data) ends early.</summary>
        private ReadOnlySpan<byte> TakeLengthPrefixed()
        {
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
            return Take(length > int.MaxValue ? -1 : (int)length);
        }

        private string ReadLine()
        {
            int end = Array.IndexOf(data, (byte)'\n', position);
            if (end < 0 || end - position > 256) throw Fail("malformed GLOBAL.");
            var text = Encoding.ASCII.GetString(data, position, end - position);
            position = end + 1;
            return text;
        }

        private long ReadLong1()
        {
            int n = ReadByte();
            if (n > 8) throw Fail("integer too large.");
            var bytes = Take(n);
            long value = 0;
            for (int i = n - 1; i >= 0; i--) value = (value << 8) | bytes[i];
            if (n > 0 && n < 8 && (bytes[n - 1] & 0x80) != 0) value -= 1L << (8 * n);
            return value;
        }

        private CheckpointException Fail(string message) => new(path, $"data.pkl: {message}");
    }
}
