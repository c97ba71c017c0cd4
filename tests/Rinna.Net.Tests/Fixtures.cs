namespace Rinna.Net.Tests;

/// <summary>Locates the reference fixtures in <c>../shared</c> next to the repository root; fails loudly if they are absent.</summary>
internal static class Fixtures
{
    private static readonly Lazy<string> Root = new(FindSharedRoot);

    public static string SharedRoot => Root.Value;

    public static string Path(params string[] parts) => System.IO.Path.Combine([SharedRoot, .. parts]);

    public static string Model(string name) => Path("fixtures", "models", name);

    public static string Tokenizer(string name) => Path("fixtures", "tokenizers", name);

    public static string RepoRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(System.IO.Path.Combine(dir.FullName, "Rinna.Net.sln"))) return dir.FullName;
            throw new InvalidOperationException($"Rinna.Net.sln not found above {AppContext.BaseDirectory}.");
        }
    }

    private static string FindSharedRoot()
    {
        var shared = System.IO.Path.GetFullPath(System.IO.Path.Combine(RepoRoot, "..", "shared"));
        if (!Directory.Exists(System.IO.Path.Combine(shared, "fixtures")))
            throw new InvalidOperationException(
                $"Reference fixtures not found at {shared}/fixtures. The tests need the shared/ folder beside the repository root.");
        return shared;
    }
}
