using System.Diagnostics;
using System.IO.Compression;
using Rinna.Net.Tests.Integration;

namespace Rinna.Net.Tests.Packaging;

/// <summary>
/// `dotnet pack` produces a package a fresh console project can consume from a local feed: it restores, builds (the
/// README's lines compile), loads a model (the TorchSharp native fix travels inside the assembly) and generates text.
/// </summary>
public sealed class PackageConsumptionTests : IDisposable
{
    private readonly string work = Directory.CreateTempSubdirectory("rinna-pack-").FullName;
    private readonly TinyChatModel model = new();

    public void Dispose()
    {
        model.Dispose();
        Directory.Delete(work, recursive: true);
    }

    [Fact]
    public void PackedPackageRestoresBuildsAndGeneratesInAFreshProject()
    {
        // A version of its own, so a package cached by an earlier run is never picked up instead of this build.
        var version = $"0.1.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";
        var feed = Path.Combine(work, "feed");
        Run("dotnet", $"pack \"{Path.Combine(Fixtures.RepoRoot, "src", "Rinna.Net")}\" -c Release -o \"{feed}\" -p:Version={version} --disable-build-servers", Fixtures.RepoRoot);

        var package = Path.Combine(feed, $"Rinna.Net.{version}.nupkg");
        using (var zip = ZipFile.OpenRead(package))
        {
            var entries = zip.Entries.Select(e => e.FullName).ToList();
            Assert.Contains("README.md", entries);
            Assert.Contains("lib/net10.0/Rinna.Net.dll", entries);
            Assert.Contains("lib/net10.0/Rinna.Net.xml", entries);
        }
        Assert.True(File.Exists(Path.Combine(feed, $"Rinna.Net.{version}.snupkg")), "symbols package missing");

        var app = Path.Combine(work, "app");
        Directory.CreateDirectory(app);
        File.WriteAllText(Path.Combine(app, "nuget.config"), $"""
            <configuration><packageSources><add key="local" value="{feed}" /></packageSources></configuration>
            """);
        File.WriteAllText(Path.Combine(app, "app.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework><Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings><RuntimeIdentifier>linux-x64</RuntimeIdentifier><SelfContained>false</SelfContained>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Rinna.Net" Version="{version}" />
                <PackageReference Include="libtorch-cpu-linux-x64" Version="2.10.0" />
              </ItemGroup>
            </Project>
            """);
        // The README's five lines, with a local model directory for the hub id.
        File.WriteAllText(Path.Combine(app, "Program.cs"), $$"""
            using Rinna.Net;
            using Rinna.Net.Generation;
            var id = "{{model.Directory}}";
            var tokenizer = await AutoTokenizer.FromPretrainedAsync(id, new() { UseFast = false });
            using var model = await AutoModelForCausalLM.FromPretrainedAsync(id, new() { LoadIn8Bit = true, TorchDtype = TorchDtype.Float16, DeviceMap = "auto" });
            var prompt = RinnaChatPromptBuilder.ForModel("rinna/bilingual-gpt-neox-4b-instruction-ppo").BuildPrompt([new(RinnaSpeaker.User, "VRとは何ですか?")]);
            var answer = model.GenerateText(tokenizer, prompt, model.GenerationConfig() with { DoSample = true, MaxNewTokens = 16, Temperature = 0.7, RepetitionPenalty = 1.1, Seed = 1 });
            Console.WriteLine($"generated {answer.TokenIds.Count} tokens: {answer.Text}");
            """);
        var output = Run("dotnet", "run --disable-build-servers", app);
        Assert.Matches(@"generated \d+ tokens: ", output);
    }

    private static string Run(string file, string arguments, string directory)
    {
        var info = new ProcessStartInfo(file, arguments)
        {
            WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        info.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        info.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(8)), $"{file} {arguments} timed out");
        Assert.True(process.ExitCode == 0, $"{file} {arguments} failed ({process.ExitCode}):\n{stdout.Result}\n{stderr.Result}");
        return stdout.Result;
    }
}
