using System.Diagnostics;

namespace Rinna.Net.Tests.Samples;

/// <summary>
/// The samples as a user runs them: QuickStart prints its two answers without special tokens, and every sample turns
/// bad input into a one-line message and a non-zero exit code, not a stack trace. The test project builds the samples.
/// </summary>
public sealed class SampleProgramTests
{
    private const int UsageExitCode = 2;
    private const int ErrorExitCode = 1;

    [Fact]
    public void QuickStartPrintsBothAnswersWithoutSpecialTokens()
    {
        var (exitCode, stdout, stderr) = Run("QuickStart");
        Assert.True(exitCode == 0, $"QuickStart failed ({exitCode}):\n{stdout}\n{stderr}");
        // Each answer follows its prompt; the demo model may echo the chat format inside an answer, so only the prompts are searched for.
        const string first = "ユーザー: 日本のおすすめの観光地を教えてください。\nシステム: ", second = "ユーザー: What is your favourite book?\nシステム: ";
        var firstAt = stdout.IndexOf(first, StringComparison.Ordinal);
        var secondAt = stdout.IndexOf(second, StringComparison.Ordinal);
        Assert.True(firstAt >= 0 && secondAt > firstAt, $"the two prompts are missing:\n{stdout}");
        Assert.False(string.IsNullOrWhiteSpace(stdout[(firstAt + first.Length)..secondAt]), "the first answer is empty");
        Assert.False(string.IsNullOrWhiteSpace(stdout[(secondAt + second.Length)..]), "the second answer is empty");
        Assert.DoesNotContain("</s>", stdout);
        Assert.DoesNotContain("<s>", stdout);
    }

    [Fact]
    public void HostingAnswersTheQuestionThroughTheChatClient()
    {
        var (exitCode, stdout, stderr) = Run("Hosting", "What is your favourite book?");
        Assert.True(exitCode == 0, $"Hosting failed ({exitCode}):\n{stdout}\n{stderr}");
        var answer = stdout[(stdout.IndexOf("システム: ", StringComparison.Ordinal) + "システム: ".Length)..];
        Assert.Contains("ユーザー: What is your favourite book?", stdout);
        Assert.False(string.IsNullOrWhiteSpace(answer), $"no answer:\n{stdout}");
        Assert.DoesNotContain("</s>", stdout);
    }

    [Theory]
    [InlineData("QuickStart", "--bogus")]
    [InlineData("QuickStart", "--model")]
    [InlineData("Chat", "--bogus")]
    [InlineData("Chat", "--temperature warm")]
    [InlineData("Chat", "--dtype float8")]
    [InlineData("Chat", "--max-new-tokens 1.5")]
    [InlineData("Hosting", "--bogus")]
    [InlineData("Hosting", "one two")]
    public void ABadCommandLineGetsOneLineAndTheUsageExitCode(string sample, string arguments)
    {
        var (exitCode, stdout, stderr) = Run(sample, arguments.Split(' '));
        Assert.Equal(UsageExitCode, exitCode);
        Assert.Empty(stdout.Trim());
        AssertOneLine(stderr);
        Assert.Contains("--help", stderr);
    }

    [Theory]
    [InlineData("QuickStart")]
    [InlineData("Chat")]
    [InlineData("Hosting")]
    public void AMissingModelDirectoryIsReportedInOneLine(string sample)
    {
        var (exitCode, _, stderr) = Run(sample, "--model", Path.Combine(Path.GetTempPath(), $"no-such-model-{Guid.NewGuid():N}"));
        Assert.Equal(UsageExitCode, exitCode);
        AssertOneLine(stderr);
        Assert.Contains("no such directory", stderr);
    }

    [Theory]
    [InlineData("QuickStart")]
    [InlineData("Chat")]
    public void ADirectoryThatHoldsNoModelIsReportedInOneLine(string sample)
    {
        var empty = Directory.CreateTempSubdirectory("rinna-not-a-model-");
        try
        {
            var (exitCode, _, stderr) = Run(sample, "--model", empty.FullName);
            Assert.Equal(ErrorExitCode, exitCode);
            // Chat announces what it loads before the error.
            AssertOneLine(string.Join('\n', stderr.Split('\n').Where(line => !line.StartsWith("Loading ", StringComparison.Ordinal))));
        }
        finally
        {
            empty.Delete(recursive: true);
        }
    }

    [Fact]
    public void ChatHelpPrintsTheUsageAndSucceeds()
    {
        var (exitCode, stdout, stderr) = Run("Chat", "--help");
        Assert.True(exitCode == 0, $"Chat --help failed ({exitCode}):\n{stdout}\n{stderr}");
        Assert.StartsWith("usage: Chat", stdout);
        Assert.Contains("--temperature", stdout);
        Assert.Empty(stderr);
    }

    [Fact]
    public void ChatSurvivesAHundredPipedTurnsLongerThanTheContext()
    {
        string[] lines = ["日本のおすすめの観光地を教えてください。", "What is your favourite book?", "猫について教えて。", "Tell me about the sea."];
        var input = string.Join("\n", Enumerable.Range(0, 100).Select(i => lines[i % lines.Length])) + "\n";
        var (exitCode, stdout, stderr) = RunWithInput("Chat", input, "--greedy", "--max-new-tokens", "16");
        Assert.True(exitCode == 0, $"Chat failed ({exitCode}):\n{stderr}");
        Assert.Equal(100, stdout.Split("システム: ").Length - 1);
    }

    private static void AssertOneLine(string stderr)
    {
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr, got:\n{stderr}");
    }

    /// <summary>Runs a sample's built assembly with <c>dotnet</c>, its standard input closed, from the repository root.</summary>
    private static (int ExitCode, string Stdout, string Stderr) Run(string sample, params string[] arguments) =>
        RunWithInput(sample, "", arguments);

    /// <summary>Runs a sample with <paramref name="input"/> piped to its standard input, which is then closed.</summary>
    private static (int ExitCode, string Stdout, string Stderr) RunWithInput(string sample, string input, params string[] arguments)
    {
        // The samples build into the same bin/<configuration>/<framework>/<runtime> layout as this project.
        var layout = Path.GetRelativePath(Path.Combine(Fixtures.RepoRoot, "tests", "Rinna.Net.Tests"), AppContext.BaseDirectory);
        var assembly = Path.Combine(Fixtures.RepoRoot, "samples", sample, layout, sample + ".dll");
        Assert.True(File.Exists(assembly), $"{assembly} is not built.");
        var info = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = Fixtures.RepoRoot, UseShellExecute = false,
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        info.ArgumentList.Add(assembly);
        foreach (var argument in arguments) info.ArgumentList.Add(argument);
        info.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        using var process = Process.Start(info)!;
        process.StandardInput.Write(input);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{sample} {string.Join(' ', arguments)} did not finish in 3 minutes.");
        }
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}
