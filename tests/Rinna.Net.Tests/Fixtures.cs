namespace Rinna.Net.Tests;

/// <summary>Locates the reference fixtures in <c>tests/fixtures</c> of this repository (see its README).</summary>
internal static class Fixtures
{
    private static readonly Lazy<string> Root = new(FindFixtureRoot);

    /// <summary>The <c>tests/fixtures</c> folder.</summary>
    public static string FixtureRoot => Root.Value;

    public static string Path(params string[] parts) => System.IO.Path.Combine([FixtureRoot, .. parts]);

    public static string Model(string name) => Path("models", name);

    public static string Tokenizer(string name) => Path("tokenizers", name);

    /// <summary>The demo model shipped with the samples.</summary>
    public static string DemoModel => System.IO.Path.Combine(RepoRoot, "samples", "models", "rinna-demo");

    public static string RepoRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(System.IO.Path.Combine(dir.FullName, "Rinna.Net.sln"))) return dir.FullName;
            throw new InvalidOperationException($"Rinna.Net.sln not found above {AppContext.BaseDirectory}.");
        }
    }

    private static string FindFixtureRoot()
    {
        var root = System.IO.Path.Combine(RepoRoot, "tests", "fixtures");
        if (!Directory.Exists(System.IO.Path.Combine(root, "models")))
            throw new InvalidOperationException($"Reference fixtures not found at {root}.");
        return root;
    }
}
