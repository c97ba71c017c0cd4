using System.Text.Json;
using Rinna.Net.Checkpoint;
using static TorchSharp.torch;

namespace Rinna.Net.Tests;

/// <summary>One model fixture: its expected.json and expected.safetensors (computed by Hugging Face's own GPT-NeoX code).</summary>
internal sealed class ReferenceModel : IDisposable
{
    private readonly SafetensorsFile expected;

    public ReferenceModel(string name)
    {
        Name = name;
        Directory = Fixtures.Model(name);
        Json = JsonDocument.Parse(File.ReadAllText(System.IO.Path.Combine(Directory, "expected.json"))).RootElement.Clone();
        expected = SafetensorsFile.Open(System.IO.Path.Combine(Directory, "expected.safetensors"));
    }

    public static IEnumerable<object[]> All => new[] { "tiny-neox-rinna", "tiny-neox-rinna-fp16", "tiny-neox-rinna-bin", "tiny-neox-pythia" }
        .Select(n => new object[] { n });

    public static IEnumerable<object[]> Full => new[] { "tiny-neox-rinna", "tiny-neox-pythia" }.Select(n => new object[] { n });

    public string Name { get; }
    public string Directory { get; }
    public JsonElement Json { get; }

    public bool Has(string tensor) => expected.Contains(tensor);

    public Tensor Tensor(string name) => expected.ReadTensor(name);

    public IEnumerable<JsonElement> Prompts => Json.GetProperty("prompts").EnumerateArray();

    public IEnumerable<JsonElement> Greedy => Json.GetProperty("greedy").EnumerateArray();

    public static long[] Ids(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt64()).ToArray();

    public void Dispose() => expected.Dispose();
}

internal static class TensorAssert
{
    public static void Close(Tensor expected, Tensor actual, double atol, double rtol, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var diff = (actual.to(ScalarType.Float64) - expected.to(ScalarType.Float64)).abs();
        using var bound = expected.to(ScalarType.Float64).abs() * rtol + atol;
        using var excess = diff - bound;
        double worst = excess.max().item<double>();
        Assert.True(worst <= 0, $"{what}: max |diff| {diff.max().item<double>():E3} exceeds atol {atol} + rtol {rtol}·|expected|");
    }

    /// <summary>
    /// Within float32 rounding of the same products summed in another order: the largest difference at most 2·10⁻⁵ of
    /// the largest magnitude (or of 1).
    /// </summary>
    public static void WithinFloat32Rounding(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        double scale = expected.abs().max().item<float>();
        double worst = (expected - actual).abs().max().item<float>();
        Assert.True(worst <= 2e-5 * Math.Max(1, scale), $"{what}: max |Δ| {worst:E2} (values up to {scale:F2})");
    }

    public static double RelativeL2(Tensor expected, Tensor actual)
    {
        using var e = expected.to(ScalarType.Float64);
        using var a = actual.to(ScalarType.Float64);
        return (a - e).norm().item<double>() / e.norm().item<double>();
    }
}
