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
    [InlineData("Server", "--bogus")]
    [InlineData("Server", "question")]
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
    [InlineData("Server")]
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

    [Fact]
    public async Task ServerAnswersOpenAIRequestsUntilStopped()
    {
        using var process = Process.Start(StartInfo("Server", "--urls", "http://127.0.0.1:0"))!;
        var output = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var listening = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not { } line) return;
            output.Enqueue(line);
            if (line.Contains("Now listening on: ", StringComparison.Ordinal)) listening.TrySetResult(line[line.IndexOf("http", StringComparison.Ordinal)..].Trim());
        };
        process.ErrorDataReceived += (_, e) => { if (e.Data is { } line) output.Enqueue(line); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            var address = await listening.Task.WaitAsync(TimeSpan.FromMinutes(3), TestContext.Current.CancellationToken);
            using var http = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromMinutes(2) };
            Assert.Equal("Healthy", await http.GetStringAsync("/health", TestContext.Current.CancellationToken));
            for (int request = 0; request < 2; request++)
            {
                using var response = await http.PostAsync("/v1/chat/completions", new StringContent(
                    """{"model":"rinna-demo","messages":[{"role":"user","content":"What is your favourite book?"}],"max_tokens":16,"temperature":0}""",
                    System.Text.Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
                var body = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
                Assert.True(response.IsSuccessStatusCode, body);
                using var json = System.Text.Json.JsonDocument.Parse(body);
                Assert.False(string.IsNullOrWhiteSpace(json.RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()));
            }
            Assert.False(process.HasExited, "the server stopped after answering");
        }
        catch (Exception ex) when (ex is not Xunit.Sdk.XunitException)
        {
            Assert.Fail($"{ex.Message}\n{string.Join('\n', output)}");
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    private static ProcessStartInfo StartInfo(string sample, params string[] arguments)
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
        return info;
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
        using var process = Process.Start(StartInfo(sample, arguments))!;
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
