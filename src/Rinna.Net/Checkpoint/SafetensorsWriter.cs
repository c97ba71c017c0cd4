using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace Rinna.Net.Checkpoint;

/// <summary>
/// Writes tensors as a <c>.safetensors</c> file (the format <see cref="SafetensorsFile"/> reads and Hugging Face's
/// <c>save_file</c> writes): an 8-byte little-endian header length, a JSON header padded with spaces to a multiple of 8
/// bytes, then the raw little-endian tensor data in header order.
/// </summary>
/// <remarks>
/// Tensors are written in ordinal name order, so the same tensors always give the same bytes. The file is written to a
/// temporary file beside the destination and renamed over it at the end: a reader never sees a half-written file, and an
/// interrupted save leaves the previous file in place.
/// </remarks>
public static class SafetensorsWriter
{
    /// <summary>Writes <paramref name="tensors"/> to <paramref name="path"/>, replacing any existing file.</summary>
    /// <param name="path">The destination file.</param>
    /// <param name="tensors">Tensors by name; any device, any layout (they are copied to contiguous CPU memory one at a time).</param>
    /// <param name="metadata">
    /// Free-form <c>__metadata__</c> strings; <c>null</c> writes <c>{"format": "pt"}</c> as PyTorch's <c>save_file</c> does.
    /// </param>
    /// <param name="cancellationToken">Checked between tensors; a cancelled save leaves no file behind.</param>
    /// <exception cref="ArgumentException">A name is empty or <c>__metadata__</c>, or a tensor's element type has no safetensors name.</exception>
    /// <exception cref="CheckpointException">The file cannot be written.</exception>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ArgumentNullException.ThrowIfNull(tensors);
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("safetensors data is little-endian; saving on a big-endian machine is not supported.");
        var ordered = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var header = BuildHeader(ordered, metadata ?? new Dictionary<string, string> { ["format"] = "pt" });

        var fullPath = System.IO.Path.GetFullPath(path);
        var temporary = fullPath + $".{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                Span<byte> length = stackalloc byte[8];
                BitConverter.TryWriteBytes(length, (long)header.Length);
                stream.Write(length);
                stream.Write(header);
                foreach (var (_, tensor) in ordered)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    WriteData(stream, tensor);
                }
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, fullPath, overwrite: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            TryDelete(temporary);
            throw new CheckpointException(fullPath, $"cannot write the file ({ex.Message}).", ex);
        }
        catch
        {
            TryDelete(temporary);
            throw;
        }
    }

    /// <summary>The safetensors name of an element type (<c>F32</c>, <c>F16</c>, <c>BF16</c>, ...).</summary>
    /// <exception cref="ArgumentException">The type has no safetensors name.</exception>
    public static string DTypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new ArgumentException($"element type {dtype} cannot be stored in a safetensors file.", nameof(dtype)),
    };

    private static byte[] BuildHeader(List<KeyValuePair<string, Tensor>> ordered, IReadOnlyDictionary<string, string> metadata)
    {
        var root = new JsonObject();
        var meta = new JsonObject();
        foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) meta[key] = value;
        root["__metadata__"] = meta;
        long offset = 0;
        foreach (var (name, tensor) in ordered)
        {
            if (string.IsNullOrEmpty(name) || name == "__metadata__")
                throw new ArgumentException($"'{name}' cannot name a tensor in a safetensors file.", nameof(ordered));
            long bytes = tensor.NumberOfElements * tensor.ElementSize;
            root[name] = new JsonObject
            {
                ["dtype"] = DTypeName(tensor.dtype),
                ["shape"] = new JsonArray(tensor.shape.Select(d => JsonValue.Create(d)).ToArray<JsonNode?>()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var json = Encoding.UTF8.GetBytes(root.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
        // The data section must start 8-byte aligned so readers can map tensors in place.
        int padded = (json.Length + 7) / 8 * 8;
        var header = new byte[padded];
        json.CopyTo(header, 0);
        header.AsSpan(json.Length).Fill((byte)' ');
        return header;
    }

    private static void WriteData(Stream stream, Tensor tensor)
    {
        if (tensor.NumberOfElements == 0) return;
        using var scope = NewDisposeScope();
        var flat = tensor.detach().cpu().contiguous().view(-1);
        // A span addresses at most 2 GiB, so large tensors go out in chunks.
        long perChunk = Math.Max(1, (1L << 30) / flat.ElementSize);
        for (long first = 0; first < flat.NumberOfElements; first += perChunk)
        {
            using var chunk = flat.narrow(0, first, Math.Min(perChunk, flat.NumberOfElements - first));
            stream.Write(chunk.bytes);
        }
    }

    private static void TryDelete(string file)
    {
        try
        {
            File.Delete(file);
        }
        catch (IOException)
        {
            // Best effort: the temporary name is unique, so a leftover never shadows a real checkpoint.
        }
    }
}
