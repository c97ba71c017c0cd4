using System.Text;
using System.Text.RegularExpressions;
using Rinna.Net.Tests.Integration;

namespace Rinna.Net.Tests.Packaging;

/// <summary>
/// The packed package is consumable from a local feed by a fresh console project: it restores, builds the package
/// README's example as printed, loads a model (the TorchSharp native fix travels inside the assembly) and generates text.
/// </summary>
[Collection(PackedPackageCollection.Name)]
public sealed class PackageConsumptionTests(PackedPackage package) : IDisposable
{
    private const string ExampleModelId = "rinna/bilingual-gpt-neox-4b-instruction-ppo";
    private readonly string work = Directory.CreateTempSubdirectory("rinna-consume-").FullName;
    private readonly TinyChatModel model = new();

    public void Dispose()
    {
        model.Dispose();
        Directory.Delete(work, recursive: true);
    }

    [Fact]
    public void ThePackageReadmeExampleRestoresBuildsAndGeneratesInAFreshProject()
    {
        File.WriteAllText(Path.Combine(work, "nuget.config"), $"""
            <configuration><packageSources><add key="local" value="{package.Feed}" /></packageSources></configuration>
            """);
        File.WriteAllText(Path.Combine(work, "app.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework><Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings><RuntimeIdentifier>linux-x64</RuntimeIdentifier><SelfContained>false</SelfContained>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Rinna.Net" Version="{package.Version}" />
                <PackageReference Include="libtorch-cpu-linux-x64" Version="2.10.0" />
              </ItemGroup>
            </Project>
            """);
        // The example exactly as the package README prints it, with the tiny local model in place of the hub id.
        var example = CSharpBlock(Encoding.UTF8.GetString(package.Entry("PACKAGE.md")));
        Assert.Contains($"\"{ExampleModelId}\"", example);
        File.WriteAllText(Path.Combine(work, "Program.cs"),
            example.Replace($"\"{ExampleModelId}\"", $"\"{model.Directory}\"", StringComparison.Ordinal)
            + "\nConsole.WriteLine($\"generated {answer.TokenIds.Count} tokens\");\n");

        var output = PackedPackage.Run("dotnet", "run --disable-build-servers", work);
        Assert.Matches(@"generated [1-9]\d* tokens", output);
    }

    private static string CSharpBlock(string markdown)
    {
        var blocks = Regex.Matches(markdown, @"^```csharp\n(.*?)^```", RegexOptions.Singleline | RegexOptions.Multiline);
        return Assert.Single(blocks).Groups[1].Value;
    }
}
