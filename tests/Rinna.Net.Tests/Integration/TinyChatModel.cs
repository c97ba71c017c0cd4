namespace Rinna.Net.Tests.Integration;

/// <summary>
/// A model directory pairing the tiny rinna-style weights (vocabulary 1024) with the bilingual look-alike tokenizer
/// (1000 pieces, every id fits): the text is meaningless, but every mechanism between text and logits is real.
/// </summary>
internal sealed class TinyChatModel : IDisposable
{
    public TinyChatModel()
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("rinna-chat-").FullName;
        foreach (var source in new[] { Fixtures.Model("tiny-neox-rinna"), Fixtures.Tokenizer("bilingual-lookalike") })
            foreach (var file in System.IO.Directory.GetFiles(source))
            {
                var name = Path.GetFileName(file);
                if (name.StartsWith("expected", StringComparison.Ordinal) || name.EndsWith(".jsonl", StringComparison.Ordinal)) continue;
                File.Copy(file, Path.Combine(Directory, name), overwrite: true);
            }
    }

    public string Directory { get; }

    public void Dispose() => System.IO.Directory.Delete(Directory, recursive: true);
}
