using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace Rinna.Net.Tests.Packaging;

/// <summary>What the packed package holds: the library with its docs and symbols, its own README, and exactly the dependencies its code uses.</summary>
[Collection(PackedPackageCollection.Name)]
public sealed class PackageContentsTests(PackedPackage package)
{
    [Fact]
    public void ThePackageHoldsTheLibraryItsDocumentationAndSymbols()
    {
        var entries = package.Entries();
        Assert.Contains("lib/net10.0/Rinna.Net.dll", entries);
        Assert.Contains("lib/net10.0/Rinna.Net.xml", entries);
        Assert.True(File.Exists(Path.Combine(package.Feed, $"Rinna.Net.{package.Version}.snupkg")), "symbols package missing");
    }

    [Fact]
    public void ThePackageReadmeIsShortAndLinksOnlyToAbsoluteAddresses()
    {
        Assert.Equal("PACKAGE.md", Element(package.Nuspec(), "readme")?.Value);
        Assert.DoesNotContain("README.md", package.Entries());
        var readme = package.Entry("PACKAGE.md");
        Assert.True(readme.Length <= 3 * 1024, $"PACKAGE.md is {readme.Length} bytes; keep it under 3 KB and link to the repository for more.");
        // A relative link would point into the repository, which a package page on nuget.org cannot follow.
        foreach (Match link in Regex.Matches(Encoding.UTF8.GetString(readme), @"\]\(([^)]*)\)"))
            Assert.StartsWith("https://", link.Groups[1].Value);
    }

    [Fact]
    public void TheDependenciesAreExactlyThePackagesWhoseAssembliesTheLibraryReferences()
    {
        var declared = package.Nuspec().Descendants().Where(e => e.Name.LocalName == "dependency")
            .Select(e => e.Attribute("id")!.Value).ToHashSet(StringComparer.OrdinalIgnoreCase);

        var owners = AssemblyOwners();
        var framework = Path.GetDirectoryName(typeof(object).Assembly.Location)!;
        var used = new SortedSet<string>(StringComparer.OrdinalIgnoreCase);
        foreach (var reference in ReferencedAssemblies(package.Entry("lib/net10.0/Rinna.Net.dll")))
        {
            if (owners.TryGetValue(reference, out var owner)) used.Add(owner);
            else Assert.True(File.Exists(Path.Combine(framework, reference + ".dll")),
                $"Rinna.Net.dll references {reference}, which is neither in .NET nor in a package the library restores.");
        }

        Assert.Equal(used, declared.Order(StringComparer.OrdinalIgnoreCase), StringComparer.OrdinalIgnoreCase);
    }

    private static XElement? Element(XDocument document, string name) =>
        document.Descendants().FirstOrDefault(e => e.Name.LocalName == name);

    private static IEnumerable<string> ReferencedAssemblies(byte[] image)
    {
        using var pe = new PEReader(new MemoryStream(image));
        var metadata = pe.GetMetadataReader();
        return metadata.AssemblyReferences.Select(handle => metadata.GetString(metadata.GetAssemblyReference(handle).Name)).ToList();
    }

    /// <summary>Assembly name → the package (direct or transitive) that supplies it to the library at compile time, from the library's restore graph.</summary>
    private static Dictionary<string, string> AssemblyOwners()
    {
        using var assets = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(PackedPackage.ProjectDirectory, "obj", "project.assets.json")));
        var owners = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var target = assets.RootElement.GetProperty("targets").EnumerateObject().Single(t => !t.Name.Contains('/'));
        foreach (var library in target.Value.EnumerateObject())
        {
            if (library.Value.GetProperty("type").GetString() != "package" || !library.Value.TryGetProperty("compile", out var compile)) continue;
            var id = library.Name[..library.Name.IndexOf('/')];
            foreach (var file in compile.EnumerateObject().Where(f => f.Name.EndsWith(".dll", StringComparison.OrdinalIgnoreCase)))
                owners[Path.GetFileNameWithoutExtension(file.Name)] = id;
        }
        return owners;
    }
}
