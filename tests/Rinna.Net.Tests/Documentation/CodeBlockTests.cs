using System.Reflection;
using System.Runtime.Loader;
using System.Text.RegularExpressions;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace Rinna.Net.Tests.Documentation;

/// <summary>
/// Every <c>```csharp</c> block of README.md and docs/ compiles against the library as printed: as a top-level console
/// program with nullable enabled and a console project's implicit usings. A block whose first line is
/// <c>// fragment</c> is compiled as the body of an async method that has <c>model</c>, <c>tokenizer</c> and
/// <c>cancellationToken</c> in scope; a block preceded by <c>&lt;!-- skip-compile: reason --&gt;</c> is reported as skipped.
/// </summary>
public sealed class CodeBlockTests
{
    public static TheoryData<string, int> Blocks()
    {
        var data = new TheoryData<string, int>();
        foreach (var file in MarkdownCode.Files())
            for (int i = 0; i < MarkdownCode.Blocks(file).Count; i++) data.Add(file, i);
        return data;
    }

    [Theory]
    [MemberData(nameof(Blocks))]
    public void CompilesAsPrinted(string file, int index)
    {
        var block = MarkdownCode.Blocks(file)[index];
        if (block.SkipReason is { } reason) Assert.Skip($"{file} block {index} (line {block.Line}) is marked skip-compile: {reason}");
        // Diagnostics point at the Markdown file and line the reader sees.
        var located = $"#line {block.Line} \"{file}\"\n";
        var compilation = block.IsFragment
            ? MarkdownCode.Compile(MarkdownCode.WrapFragment(block.Code, located), OutputKind.DynamicallyLinkedLibrary)
            : MarkdownCode.Compile(located + block.Code, OutputKind.ConsoleApplication);
        MarkdownCode.AssertNoDiagnostics(compilation, $"{file} block {index} (line {block.Line})");
    }

    [Fact]
    public void ReadmeHasTheQuickStartAndItsTwoCommands()
    {
        var readme = File.ReadAllText(Path.Combine(Fixtures.RepoRoot, "README.md"));
        var blocks = MarkdownCode.Blocks("README.md");
        Assert.True(blocks.Count >= 2, "README.md should show the quick start and the DI example in C#.");
        Assert.Contains(QuickStartBlockTests.HubId, blocks[0].Code);
        // The test command a reader is told to run is the one CI runs.
        Assert.StartsWith("# Rinna.Net", readme);
        var commands = Regex.Match(readme, "```bash\n(.*?)```", RegexOptions.Singleline).Groups[1].Value.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("dotnet run --project samples/QuickStart", commands[0]);
        var testCommand = commands[1].Split('#')[0].Trim();
        var ci = File.ReadAllLines(Path.Combine(Fixtures.RepoRoot, ".ci", "run")).Select(l => l.Trim());
        Assert.Contains(testCommand, ci);
    }
}

/// <summary>Console output is process-wide, so the run that captures it shares no time with other tests.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ConsoleCaptureCollection
{
    public const string Name = "Console capture";
}

/// <summary>README's quick start runs in-process against the demo model and prints text.</summary>
[Collection(ConsoleCaptureCollection.Name)]
public sealed class QuickStartBlockTests(ITestOutputHelper output)
{
    public const string HubId = "rinna/bilingual-gpt-neox-4b-instruction-ppo";

    [Fact]
    public void QuickStartRunsAgainstTheDemoModelAndPrintsText()
    {
        var code = MarkdownCode.Blocks("README.md")[0].Code;
        Assert.Contains($"\"{HubId}\"", code);
        Assert.Contains("MaxNewTokens = 128", code);
        // The demo model stands in for the 4B download; a few seeded tokens keep the run short and its output fixed.
        code = code.Replace($"\"{HubId}\"", SymbolDisplay.FormatLiteral(Fixtures.DemoModel, quote: true), StringComparison.Ordinal)
            .Replace("MaxNewTokens = 128", "MaxNewTokens = 24, Seed = 7", StringComparison.Ordinal);

        var compilation = MarkdownCode.Compile(code, OutputKind.ConsoleApplication);
        using var image = new MemoryStream();
        var result = compilation.Emit(image);
        Assert.True(result.Success, MarkdownCode.Describe(result.Diagnostics));

        var context = new AssemblyLoadContext("readme-quick-start", isCollectible: true);
        var originalOut = Console.Out;
        using var captured = new StringWriter();
        try
        {
            image.Position = 0;
            var entry = context.LoadFromStream(image).EntryPoint ?? throw new InvalidOperationException("The quick start has no entry point.");
            Console.SetOut(captured);
            try
            {
                entry.Invoke(null, entry.GetParameters().Length == 0 ? null : [Array.Empty<string>()]);
            }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                throw new Xunit.Sdk.XunitException($"The quick start threw: {e.InnerException}");
            }
        }
        finally
        {
            Console.SetOut(originalOut);
            context.Unload();
        }
        var printed = captured.ToString();
        output.WriteLine(printed);
        Assert.False(string.IsNullOrWhiteSpace(printed), "The quick start printed nothing.");
        Assert.DoesNotContain("</s>", printed);
    }
}

/// <summary>Finds the C# blocks of the documentation and compiles them.</summary>
internal static partial class MarkdownCode
{
    private const string FragmentMarker = "// fragment";

    // What `dotnet new console` gets from <ImplicitUsings>enable</ImplicitUsings>.
    private static readonly string[] ImplicitUsings =
        ["System", "System.Collections.Generic", "System.IO", "System.Linq", "System.Net.Http", "System.Threading", "System.Threading.Tasks"];

    private static readonly Lazy<IReadOnlyList<MetadataReference>> References = new(LoadReferences);

    private static readonly Dictionary<string, IReadOnlyList<CodeBlock>> Cache = [];

    /// <summary>README.md and every Markdown file under docs/, relative to the repository root with '/' separators.</summary>
    public static IEnumerable<string> Files()
    {
        yield return "README.md";
        var docs = Path.Combine(Fixtures.RepoRoot, "docs");
        if (!Directory.Exists(docs)) yield break;
        foreach (var file in Directory.EnumerateFiles(docs, "*.md", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            yield return Path.GetRelativePath(Fixtures.RepoRoot, file).Replace('\\', '/');
    }

    public static IReadOnlyList<CodeBlock> Blocks(string file)
    {
        lock (Cache)
        {
            if (!Cache.TryGetValue(file, out var blocks))
                Cache[file] = blocks = Parse(File.ReadAllLines(Path.Combine(Fixtures.RepoRoot, file)));
            return blocks;
        }
    }

    private static List<CodeBlock> Parse(string[] lines)
    {
        var blocks = new List<CodeBlock>();
        string? previous = null;
        for (int i = 0; i < lines.Length; i++)
        {
            var open = OpeningFence().Match(lines[i]);
            if (!open.Success)
            {
                if (lines[i].TrimStart().StartsWith("```", StringComparison.Ordinal))
                {
                    // Another language's block: step over it so its lines are not read as Markdown.
                    while (++i < lines.Length && !lines[i].TrimStart().StartsWith("```", StringComparison.Ordinal)) { }
                    previous = null;
                }
                else if (lines[i].Trim().Length > 0) previous = lines[i].Trim();
                continue;
            }
            var indent = open.Groups["indent"].Value.Length;
            var body = new List<string>();
            int start = i + 2; // the 1-based line of the block's first line of code
            while (++i < lines.Length && !lines[i].TrimStart().StartsWith("```", StringComparison.Ordinal))
                body.Add(lines[i].Length >= indent && lines[i][..indent].Trim().Length == 0 ? lines[i][indent..] : lines[i].TrimStart());
            Assert.True(i < lines.Length, $"The C# block at line {start} is never closed.");
            var skip = previous is null ? null : SkipComment().Match(previous) is { Success: true } m ? m.Groups["reason"].Value.Trim() : null;
            var first = body.FirstOrDefault(l => l.Trim().Length > 0)?.Trim();
            blocks.Add(new CodeBlock(start, string.Join('\n', body), first == FragmentMarker, skip));
            previous = null;
        }
        return blocks;
    }

    /// <summary>
    /// A fragment as the body of an async method; its own using directives move to the top of the file, leaving blank
    /// lines so that <paramref name="lineDirective"/> (placed before the body) keeps every other line's number.
    /// </summary>
    public static string WrapFragment(string code, string lineDirective)
    {
        var lines = code.Split('\n');
        var usings = lines.Where(l => UsingDirective().IsMatch(l)).ToArray();
        var body = lineDirective + string.Join('\n', lines.Select(l => UsingDirective().IsMatch(l) ? "" : l));
        return $$"""
            {{string.Join('\n', usings)}}
            #pragma warning disable CS1998 // a fragment need not await
            internal static class DocumentationFragment
            {
                internal static async Task RunAsync(Rinna.Net.Model.GptNeoXForCausalLM model,
                    Rinna.Net.Tokenization.PreTrainedTokenizer tokenizer, CancellationToken cancellationToken)
                {
            {{body}}
            #line default
                }
            }
            """;
    }

    public static CSharpCompilation Compile(string code, OutputKind kind)
    {
        var parse = new CSharpParseOptions(LanguageVersion.Latest);
        var globalUsings = string.Join('\n', ImplicitUsings.Select(u => $"global using global::{u};"));
        return CSharpCompilation.Create(
            "DocumentationBlock" + Guid.NewGuid().ToString("N"),
            [CSharpSyntaxTree.ParseText(globalUsings, parse, "GlobalUsings.g.cs"), CSharpSyntaxTree.ParseText(code, parse, "Program.cs")],
            References.Value,
            new CSharpCompilationOptions(kind, nullableContextOptions: NullableContextOptions.Enable, allowUnsafe: false));
    }

    public static void AssertNoDiagnostics(CSharpCompilation compilation, string what)
    {
        var problems = compilation.GetDiagnostics().Where(IsProblem).ToList();
        Assert.True(problems.Count == 0, $"{what} does not compile as printed:\n{Describe(problems)}");
    }

    public static string Describe(IEnumerable<Diagnostic> diagnostics) =>
        string.Join('\n', diagnostics.Where(IsProblem).Select(d => d.ToString()));

    // Warnings count as failures, as they do in this repository's builds; version-unification notes are not the block's doing.
    private static bool IsProblem(Diagnostic d) =>
        d.Severity >= DiagnosticSeverity.Warning && d.Id is not ("CS1701" or "CS1702");

    /// <summary>The assemblies the test process runs with: the shared frameworks, the library and its dependencies.</summary>
    private static IReadOnlyList<MetadataReference> LoadReferences()
    {
        var paths = ((string?)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Concat(AppDomain.CurrentDomain.GetAssemblies().Where(a => !a.IsDynamic && a.Location.Length > 0).Select(a => a.Location))
            .Concat(new[] { typeof(AutoModelForCausalLM), typeof(TorchSharp.torch) }.Select(t => t.Assembly.Location));
        return paths
            .Where(p => p.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) && File.Exists(p))
            .DistinctBy(Path.GetFileName, StringComparer.OrdinalIgnoreCase)
            .Select(p => (MetadataReference)MetadataReference.CreateFromFile(p))
            .ToList();
    }

    [GeneratedRegex(@"^(?<indent>\s*)```(csharp|cs|c#)\s*$", RegexOptions.IgnoreCase)]
    private static partial Regex OpeningFence();

    [GeneratedRegex(@"^<!--\s*skip-compile:(?<reason>.*?)-->$")]
    private static partial Regex SkipComment();

    [GeneratedRegex(@"^\s*using\s+(static\s+)?[\w.]+(\s*=\s*[\w.<>,\s]+)?\s*;\s*$")]
    private static partial Regex UsingDirective();
}

/// <summary>One C# block: the line after its opening fence, its text, and how it is to be compiled.</summary>
internal sealed record CodeBlock(int Line, string Code, bool IsFragment, string? SkipReason);
