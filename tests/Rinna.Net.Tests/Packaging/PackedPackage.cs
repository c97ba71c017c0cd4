using System.Diagnostics;
using System.IO.Compression;
using System.Xml.Linq;

namespace Rinna.Net.Tests.Packaging;

/// <summary>
/// The library packed once, with <c>dotnet pack</c>, into a local feed that the packaging tests share (packing takes
/// a minute, so it happens once for all of them).
/// </summary>
public sealed class PackedPackage : IDisposable
{
    public PackedPackage()
    {
        Work = Directory.CreateTempSubdirectory("rinna-pack-").FullName;
        // A version of its own, so a package cached by an earlier run is never picked up instead of this build.
        Version = $"0.1.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";
        Feed = Path.Combine(Work, "feed");
        Run("dotnet", $"pack \"{ProjectDirectory}\" -c Release -o \"{Feed}\" -p:Version={Version} --disable-build-servers", Fixtures.RepoRoot);
    }

    /// <summary>src/Rinna.Net.</summary>
    public static string ProjectDirectory => Path.Combine(Fixtures.RepoRoot, "src", "Rinna.Net");

    /// <summary>A scratch directory that is deleted with the package.</summary>
    public string Work { get; }

    /// <summary>The folder holding the .nupkg and .snupkg, usable as a NuGet source.</summary>
    public string Feed { get; }

    /// <summary>The package's version.</summary>
    public string Version { get; }

    /// <summary>The .nupkg file.</summary>
    public string Nupkg => Path.Combine(Feed, $"Rinna.Net.{Version}.nupkg");

    /// <summary>The entries of the package.</summary>
    public IReadOnlyList<string> Entries()
    {
        using var zip = ZipFile.OpenRead(Nupkg);
        return zip.Entries.Select(e => e.FullName).ToList();
    }

    /// <summary>The bytes of one entry.</summary>
    public byte[] Entry(string name)
    {
        using var zip = ZipFile.OpenRead(Nupkg);
        var entry = zip.GetEntry(name) ?? throw new FileNotFoundException($"{name} is not in {Nupkg}.");
        using var stream = entry.Open();
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    /// <summary>The package's manifest.</summary>
    public XDocument Nuspec() => XDocument.Load(new MemoryStream(Entry("Rinna.Net.nuspec")));

    public void Dispose() => Directory.Delete(Work, recursive: true);

    /// <summary>Runs a command to completion and returns its standard output; a non-zero exit fails the test with both streams.</summary>
    public static string Run(string file, string arguments, string directory)
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

/// <summary>The tests that share one <see cref="PackedPackage"/>.</summary>
[CollectionDefinition(Name)]
public sealed class PackedPackageCollection : ICollectionFixture<PackedPackage>
{
    public const string Name = "Packed package";
}
