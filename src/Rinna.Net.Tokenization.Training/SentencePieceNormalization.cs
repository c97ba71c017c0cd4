using System.Buffers;
using System.Text;
using Rinna.Net.Tokenization.SentencePiece;

namespace Rinna.Net.Tokenization.Training;

/// <summary>
/// The text normalization a trained model declares in its <c>normalizer_spec</c> (a name and SentencePiece's precompiled
/// character map), and the same rewrite applied to training and encoded text, so the trained pieces are the ones the
/// inference tokenizer will look up.
/// </summary>
/// <remarks>
/// The trainer cannot compile a character map from Unicode rules; <see cref="FromModel"/> copies one from a model that
/// SentencePiece itself wrote (rinna uses <c>nmt_nfkc</c>, SentencePiece's default). Text is rewritten by the library's
/// own SentencePiece normalizer with the user-defined pieces <c>▁</c>, <c>\n</c> and <c>\t</c> passed through untouched
/// (as SentencePiece does) and spaces left as spaces.
/// </remarks>
public sealed class SentencePieceNormalization
{
    private readonly SentencePieceTextNormalizer? normalizer;
    private readonly byte[] precompiledCharsMap;

    private SentencePieceNormalization(string name, byte[] precompiledCharsMap)
    {
        Name = name;
        this.precompiledCharsMap = precompiledCharsMap;
        if (precompiledCharsMap.Length == 0) return;
        var userDefined = new ByteTrie();
        int id = 0;
        foreach (var symbol in new[] { UnigramTrainer.SpacePiece, "\n", "\t" }) userDefined.TryAdd(Encoding.UTF8.GetBytes(symbol), id++);
        var spec = new NormalizerSpec(name, precompiledCharsMap, AddDummyPrefix: false, RemoveExtraWhitespaces: false, EscapeWhitespaces: false);
        normalizer = new SentencePieceTextNormalizer(spec, treatWhitespaceAsSuffix: false, userDefined);
    }

    /// <summary>SentencePiece's <c>identity</c> rule: text is kept as it is.</summary>
    public static SentencePieceNormalization Identity { get; } = new("identity", []);

    /// <summary>The rule's name as written into <c>normalizer_spec.name</c> (e.g. <c>nmt_nfkc</c>).</summary>
    public string Name { get; }

    /// <summary>The compiled rule (<c>normalizer_spec.precompiled_charsmap</c>); empty for <c>identity</c>.</summary>
    public ReadOnlySpan<byte> PrecompiledCharsMap => precompiledCharsMap;

    /// <summary>Reads the normalization rule of an existing SentencePiece model (<c>spiece.model</c>).</summary>
    /// <param name="modelPath">A serialized SentencePiece <c>ModelProto</c>.</param>
    /// <exception cref="IOException">The file cannot be read.</exception>
    /// <exception cref="FormatException">The file is not a SentencePiece model, or its character map is malformed.</exception>
    public static SentencePieceNormalization FromModel(string modelPath)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelPath);
        var spec = ModelProto.Parse(File.ReadAllBytes(modelPath)).Normalizer;
        return new SentencePieceNormalization(spec.Name.Length == 0 ? Identity.Name : spec.Name, spec.PrecompiledCharsMap);
    }

    /// <summary>Rewrites <paramref name="text"/> as SentencePiece's normalizer does before segmentation, spaces kept as spaces.</summary>
    public string Normalize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (normalizer is null || text.Length == 0) return text;
        var output = new ArrayBufferWriter<byte>(text.Length * 3);
        normalizer.Normalize(Encoding.UTF8.GetBytes(text), output);
        return Encoding.UTF8.GetString(output.WrittenSpan);
    }
}
