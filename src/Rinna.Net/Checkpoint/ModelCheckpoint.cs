using System.Text.Json;
using static TorchSharp.torch;

namespace Rinna.Net.Checkpoint;

/// <summary>
/// The weights of a Hugging Face model directory, opened the way <c>from_pretrained</c> opens them:
/// <c>model.safetensors</c>, else <c>model.safetensors.index.json</c> and the shards it names, else <c>pytorch_model.bin</c>.
/// No other file is touched (a directory may hold unrelated <c>*.safetensors</c> files).
/// </summary>
public sealed class ModelCheckpoint : IDisposable
{
    /// <summary>The single-file safetensors name.</summary>
    public const string SafetensorsName = "model.safetensors";
    /// <summary>The shard index name.</summary>
    public const string SafetensorsIndexName = "model.safetensors.index.json";
    /// <summary>The legacy PyTorch pickle name.</summary>
    public const string PyTorchBinName = "pytorch_model.bin";

    private readonly Dictionary<string, ITensorFile> owners;
    private readonly List<ITensorFile> files;

    private ModelCheckpoint(List<ITensorFile> files, Dictionary<string, ITensorFile> owners, string format)
    {
        this.files = files;
        this.owners = owners;
        Format = format;
    }

    /// <summary>Which layout was found: <c>safetensors</c>, <c>sharded-safetensors</c> or <c>pytorch</c>.</summary>
    public string Format { get; }

    /// <summary>The weight files opened.</summary>
    public IReadOnlyList<string> Files => files.Select(f => f.Path).ToList();

    /// <summary>Every tensor the checkpoint holds, by name.</summary>
    public IReadOnlyDictionary<string, TensorEntry> Entries =>
        owners.ToDictionary(kv => kv.Key, kv => kv.Value[kv.Key], StringComparer.Ordinal);

    /// <summary>Whether a directory holds weights in a layout <see cref="Open"/> understands.</summary>
    public static bool Exists(string directory) =>
        File.Exists(Path.Combine(directory, SafetensorsName)) || File.Exists(Path.Combine(directory, SafetensorsIndexName))
        || File.Exists(Path.Combine(directory, PyTorchBinName));

    /// <summary>Opens the weights of a model directory and validates every header before any tensor data is read.</summary>
    /// <exception cref="CheckpointException">No weights, a corrupt file, or a shard index naming a file outside the directory.</exception>
    public static ModelCheckpoint Open(string directory)
    {
        var single = Path.Combine(directory, SafetensorsName);
        if (File.Exists(single))
        {
            var file = SafetensorsTensorFile.Open(single);
            return new ModelCheckpoint([file], file.Names.ToDictionary(n => n, _ => (ITensorFile)file, StringComparer.Ordinal), "safetensors");
        }
        var index = Path.Combine(directory, SafetensorsIndexName);
        if (File.Exists(index)) return OpenSharded(directory, index);
        var bin = Path.Combine(directory, PyTorchBinName);
        if (File.Exists(bin))
        {
            var file = PyTorchPickleFile.Open(bin);
            return new ModelCheckpoint([file], file.Names.ToDictionary(n => n, _ => (ITensorFile)file, StringComparer.Ordinal), "pytorch");
        }
        throw new CheckpointException(directory,
            $"no weights found: expected {SafetensorsName}, {SafetensorsIndexName} or {PyTorchBinName}.");
    }

    /// <summary>Reads one tensor into a new CPU tensor, converted to <paramref name="dtype"/> when given.</summary>
    /// <exception cref="CheckpointException">The tensor is absent or unreadable.</exception>
    public Tensor ReadTensor(string name, ScalarType? dtype = null)
    {
        var owner = Owner(name);
        var entry = owner[name];
        var tensor = TensorAllocation.Empty(entry.Shape, dtype ?? entry.DType, owner.Path, name);
        try
        {
            ReadInto(name, tensor);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Fills <paramref name="destination"/> (a contiguous CPU tensor of the stored shape, any floating dtype, or the
    /// stored dtype) with one tensor of the checkpoint, converting as it goes. The caller chooses how that memory is
    /// allocated; a conversion holds one staging copy of this tensor in the stored dtype, never more.
    /// </summary>
    /// <exception cref="CheckpointException">The tensor is absent or unreadable, or cannot be converted to the destination's dtype.</exception>
    /// <exception cref="ArgumentException">The destination's shape or placement does not fit.</exception>
    public void ReadInto(string name, Tensor destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        var owner = Owner(name);
        var entry = owner[name];
        if (!destination.shape.SequenceEqual(entry.Shape) || destination.device_type != TorchSharp.DeviceType.CPU || !destination.is_contiguous())
            throw new ArgumentException(
                $"tensor '{name}' is [{string.Join(", ", entry.Shape)}]; the destination must be a contiguous CPU tensor of that shape, " +
                $"got [{string.Join(", ", destination.shape)}] on {destination.device}.", nameof(destination));
        if (destination.dtype != entry.DType && !(IsFloatingPoint(entry.DType) && IsFloatingPoint(destination.dtype)))
            throw new CheckpointException(owner.Path, $"tensor '{name}' is stored as {entry.DType} and cannot be converted to {destination.dtype}.");
        owner.ReadInto(name, destination);
    }

    private ITensorFile Owner(string name) =>
        owners.TryGetValue(name, out var owner) ? owner : throw new CheckpointException(files[0].Path, $"no tensor named '{name}'.");

    internal static bool IsFloatingPoint(ScalarType t) => t is ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64;

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var file in files) file.Dispose();
    }

    private static ModelCheckpoint OpenSharded(string directory, string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        var root = Path.GetFullPath(directory);
        var opened = new Dictionary<string, ITensorFile>(StringComparer.Ordinal);
        var owners = new Dictionary<string, ITensorFile>(StringComparer.Ordinal);
        try
        {
            foreach (var (tensor, shardName) in weightMap)
            {
                if (!opened.TryGetValue(shardName, out var shard))
                {
                    var shardPath = ResolveShardPath(root, shardName, indexPath);
                    if (!File.Exists(shardPath))
                        throw new CheckpointException(indexPath, $"shard '{shardName}' (holding '{tensor}') does not exist.");
                    shard = SafetensorsTensorFile.Open(shardPath);
                    opened.Add(shardName, shard);
                }
                if (!shard.Names.Contains(tensor))
                    throw new CheckpointException(indexPath, $"the index puts '{tensor}' in '{shardName}', but that shard does not hold it.");
                owners[tensor] = shard;
            }
            return new ModelCheckpoint(opened.Values.ToList(), owners, "sharded-safetensors");
        }
        catch
        {
            foreach (var file in opened.Values) file.Dispose();
            throw;
        }
    }

    private static IReadOnlyList<(string Tensor, string Shard)> ReadWeightMap(string indexPath)
    {
        try
        {
            using var document = JsonDocument.Parse(BoundedFile.ReadAllBytes(indexPath), new JsonDocumentOptions { MaxDepth = 16 });
            if (document.RootElement.ValueKind != JsonValueKind.Object
                || !document.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new CheckpointException(indexPath, "'weight_map' must be an object mapping tensor names to shard files.");
            if (JsonStrings.FindUnreadable(map) is { } unreadable)
                throw new CheckpointException(indexPath, $"{unreadable.Replace("$", "weight_map", StringComparison.Ordinal)} is not valid Unicode text.");
            var result = new List<(string, string)>();
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(entry.Value.GetString()))
                    throw new CheckpointException(indexPath, $"'weight_map.{entry.Name}' must be a file name.");
                result.Add((entry.Name, entry.Value.GetString()!));
            }
            if (result.Count == 0) throw new CheckpointException(indexPath, "'weight_map' is empty.");
            return result;
        }
        catch (JsonException ex)
        {
            throw new CheckpointException(indexPath, $"not valid JSON ({ex.Message}).", ex);
        }
        catch (IOException ex)
        {
            throw new CheckpointException(indexPath, $"cannot read the file ({ex.Message}).", ex);
        }
    }

    /// <summary>Resolves a shard name from an index file, refusing anything that would leave the model directory.</summary>
    internal static string ResolveShardPath(string root, string shardName, string indexPath)
    {
        bool suspicious = Path.IsPathRooted(shardName) || shardName.Contains('\\') || shardName.Contains('\0')
            || shardName.Split('/').Any(part => part is ".." or "." or "");
        var rootWithSeparator = root.EndsWith(Path.DirectorySeparatorChar) ? root : root + Path.DirectorySeparatorChar;
        // Checked before GetFullPath, which throws ArgumentException for a name holding NUL.
        var full = suspicious ? null : Path.GetFullPath(Path.Combine(root, shardName));
        if (full is null || !full.StartsWith(rootWithSeparator, StringComparison.Ordinal))
            throw new CheckpointException(indexPath, $"shard name '{shardName}' points outside the model directory; refusing to open it.");
        return full;
    }
}

/// <summary>One weights file of a checkpoint, whatever its format.</summary>
internal interface ITensorFile : IDisposable
{
    string Path { get; }
    IReadOnlySet<string> Names { get; }
    TensorEntry this[string name] { get; }
    /// <summary>Fills a contiguous CPU tensor of the stored shape (checked by the caller) with the named tensor, converted to its dtype.</summary>
    void ReadInto(string name, Tensor destination);
}

internal sealed class SafetensorsTensorFile : ITensorFile
{
    private readonly SafetensorsFile file;

    private SafetensorsTensorFile(SafetensorsFile file)
    {
        this.file = file;
        Names = file.Entries.Select(e => e.Name).ToHashSet(StringComparer.Ordinal);
    }

    public string Path => file.Path;
    public IReadOnlySet<string> Names { get; }
    public TensorEntry this[string name] => file[name];

    public static SafetensorsTensorFile Open(string path) => new(SafetensorsFile.Open(path));
    public void ReadInto(string name, Tensor destination) => file.ReadInto(name, destination, int.MaxValue & ~4095);
    public void Dispose() => file.Dispose();
}
