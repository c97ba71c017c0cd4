using System.Buffers.Binary;
using System.Text;

namespace Rinna.Net.Tokenization.SentencePiece;

/// <summary>
/// Reads the protobuf wire format (varints, fixed32/64, length-delimited fields) of one message held in memory.
/// A hand-written reader keeps the library free of a protobuf dependency and lets every truncation or malformed
/// field surface as a <see cref="FormatException"/> that the caller turns into a <see cref="TokenizerException"/>.
/// </summary>
internal ref struct ProtoWireReader
{
    public const int WireVarint = 0;
    public const int WireFixed64 = 1;
    public const int WireLengthDelimited = 2;
    public const int WireFixed32 = 5;

    private readonly ReadOnlySpan<byte> data;
    private int position;

    public ProtoWireReader(ReadOnlySpan<byte> data)
    {
        this.data = data;
        position = 0;
    }

    public readonly bool AtEnd => position >= data.Length;

    /// <summary>Reads the next field key; returns the field number and wire type.</summary>
    public (int Field, int WireType) ReadKey()
    {
        var key = ReadVarint();
        var field = (int)(key >> 3);
        if (field <= 0) throw new FormatException($"invalid protobuf field number {field} at byte {position}");
        return (field, (int)(key & 7));
    }

    public ulong ReadVarint()
    {
        ulong result = 0;
        for (var shift = 0; shift < 64; shift += 7)
        {
            if (position >= data.Length) throw new FormatException("truncated varint");
            var b = data[position++];
            result |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return result;
        }
        throw new FormatException($"varint longer than 10 bytes at byte {position}");
    }

    public int ReadInt32() => unchecked((int)ReadVarint());

    public bool ReadBool() => ReadVarint() != 0;

    public float ReadFloat()
    {
        if (data.Length - position < 4) throw new FormatException("truncated fixed32 field");
        var value = BinaryPrimitives.ReadSingleLittleEndian(data.Slice(position, 4));
        position += 4;
        return value;
    }

    public ReadOnlySpan<byte> ReadBytes()
    {
        var length = ReadVarint();
        if (length > (ulong)(data.Length - position))
            throw new FormatException($"length-delimited field of {length} bytes overruns the message at byte {position}");
        var slice = data.Slice(position, (int)length);
        position += (int)length;
        return slice;
    }

    public string ReadString() => ReadString(int.MaxValue, "string field");

    /// <summary>A string field of at most <paramref name="maxBytes"/> UTF-8 bytes, checked before it is decoded.</summary>
    public string ReadString(int maxBytes, string what)
    {
        var bytes = ReadBytes();
        if (bytes.Length > maxBytes) throw new FormatException($"{what} has {bytes.Length} bytes, more than the {maxBytes} a piece may have");
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new FormatException("string field is not valid UTF-8", e);
        }
    }

    public void Skip(int wireType)
    {
        switch (wireType)
        {
            case WireVarint: ReadVarint(); break;
            case WireFixed64: Advance(8); break;
            case WireLengthDelimited: ReadBytes(); break;
            case WireFixed32: Advance(4); break;
            default: throw new FormatException($"unsupported protobuf wire type {wireType} at byte {position}");
        }
    }

    public static void Expect(int wireType, int expected, string fieldName)
    {
        if (wireType != expected)
            throw new FormatException($"field {fieldName} has wire type {wireType}, expected {expected}");
    }

    private void Advance(int count)
    {
        if (data.Length - position < count) throw new FormatException("truncated fixed-size field");
        position += count;
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
}
