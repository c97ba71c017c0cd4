namespace Rinna.Net.Tokenization.Fast;

/// <summary>
/// What a <c>post_processor</c> adds around a single sequence when special tokens are requested
/// (<c>TemplateProcessing</c>'s <c>single</c>, <c>BertProcessing</c>, <c>RobertaProcessing</c>); <c>ByteLevel</c> only
/// trims offsets, which this library does not expose, so it adds nothing.
/// </summary>
internal sealed class PostProcessor
{
    public static readonly PostProcessor None = new([], []);

    private readonly int[] prefix;
    private readonly int[] suffix;

    public PostProcessor(int[] prefix, int[] suffix)
    {
        this.prefix = prefix;
        this.suffix = suffix;
    }

    /// <summary>Number of ids <see cref="Apply"/> adds.</summary>
    public int AddedCount => prefix.Length + suffix.Length;

    public int[] Apply(IReadOnlyList<int> ids)
    {
        var result = new int[prefix.Length + ids.Count + suffix.Length];
        prefix.CopyTo(result, 0);
        for (var i = 0; i < ids.Count; i++) result[prefix.Length + i] = ids[i];
        suffix.CopyTo(result, prefix.Length + ids.Count);
        return result;
    }

    /// <summary>Runs one processor after another (a <c>Sequence</c>), each wrapping the previous result.</summary>
    public PostProcessor Then(PostProcessor next) => new([.. next.prefix, .. prefix], [.. suffix, .. next.suffix]);
}
