using Rinna.Net.Generation;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

public class TokenSamplerTests
{
    // Logits of a small vocabulary; the expected distribution after temperature 0.7, top-k 5 and top-p 0.9 is computed
    // below in double precision, independently of the library (tokens 4, 5, 6 fall to top-k, token 3 to top-p).
    private static readonly double[] Logits = [2.0, 1.5, 1.0, 0.5, 0.0, -1.0, 0.25, 1.75];

    public TokenSamplerTests() => TorchSharpNativeLoader.EnsureInstalled();

    [Fact]
    public void SamplingAfterTemperatureTopKTopPFollowsTheExpectedDistribution()
    {
        const int draws = 20000;
        var config = new GenerationConfig { DoSample = true, Temperature = 0.7, TopK = 5, TopP = 0.9, Seed = 1234 };
        var counts = DrawCounts(config, draws);

        var expected = ExpectedDistribution(temperature: 0.7, topK: 5, topP: 0.9);
        for (var token = 0; token < Logits.Length; token++)
            if (expected[token] == 0) Assert.Equal(0, counts[token]);

        // Chi-square goodness of fit over the kept tokens (df = 3); 16.27 is the 0.999 quantile.
        Assert.True(ChiSquare(counts, expected, draws) < 16.27, $"chi-square {ChiSquare(counts, expected, draws)}");
        // The same draws must clearly reject a distribution without the temperature: the test has the power to fail.
        Assert.True(ChiSquare(counts, ExpectedDistribution(temperature: 1.0, topK: 5, topP: 0.9), draws) > 100);
    }

    [Fact]
    public void TheSameSeedReproducesTheDrawsAndAnotherSeedDoesNot()
    {
        var first = Draw(seed: 42);
        Assert.Equal(first, Draw(seed: 42));
        Assert.NotEqual(first, Draw(seed: 43));

        static long[] Draw(long seed)
        {
            using var scope = NewDisposeScope();
            using var sampler = new TokenSampler(doSample: true, seed);
            var scores = tensor(Logits.Select(l => (float)l).ToArray()).unsqueeze(0).expand(64, -1);
            return Enumerable.Range(0, 4).SelectMany(_ => sampler.Next(scores).data<long>().ToArray()).ToArray();
        }
    }

    [Fact]
    public void GreedyTakesTheArgmaxOfEachRow()
    {
        using var scope = NewDisposeScope();
        using var sampler = TokenSampler.Create(new GenerationConfig());
        var scores = tensor(new float[,] { { 0f, 3f, 1f }, { 5f, float.NegativeInfinity, 4.9f } });
        Assert.Equal([1L, 0L], sampler.Next(scores).data<long>().ToArray());
        Assert.Null(sampler.Seed);
    }

    [Fact]
    public void AnUnseededSamplerDrawsItsOwnSeed()
    {
        using var a = new TokenSampler(doSample: true);
        using var b = new TokenSampler(doSample: true);
        Assert.NotNull(a.Seed);
        Assert.NotEqual(a.Seed, b.Seed);
    }

    [Fact]
    public void ADisposedSamplerRefusesToSample()
    {
        var sampler = new TokenSampler(doSample: true, seed: 1);
        sampler.Dispose();
        using var scores = zeros(1, 4);
        Assert.Throws<ObjectDisposedException>(() => sampler.Next(scores));
    }

    private static int[] DrawCounts(GenerationConfig config, int draws)
    {
        using var scope = NewDisposeScope();
        var pipeline = LogitsProcessorList.Create(config, promptLength: 1);
        using var sampler = TokenSampler.Create(config);
        var inputIds = zeros(draws, 1, dtype: ScalarType.Int64);
        var scores = tensor(Logits.Select(l => (float)l).ToArray()).unsqueeze(0).expand(draws, -1);
        var tokens = sampler.Next(pipeline.Process(inputIds, scores));
        return tokens.bincount(null, Logits.Length).data<long>().ToArray().Select(c => (int)c).ToArray();
    }

    private static double[] ExpectedDistribution(double temperature, int topK, double topP)
    {
        var scaled = Logits.Select(l => l / temperature).ToArray();
        var byLikelihood = Enumerable.Range(0, scaled.Length).OrderByDescending(i => scaled[i]).Take(topK).ToArray();
        var max = scaled.Max();
        var weights = byLikelihood.ToDictionary(i => i, i => Math.Exp(scaled[i] - max));
        var total = weights.Values.Sum();
        // Nucleus: the most likely tokens until their mass reaches top_p (the token that crosses it is kept).
        var kept = new List<int>();
        var mass = 0.0;
        foreach (var i in byLikelihood)
        {
            if (mass >= topP) break;
            kept.Add(i);
            mass += weights[i] / total;
        }
        var keptTotal = kept.Sum(i => weights[i]);
        return Enumerable.Range(0, Logits.Length).Select(i => kept.Contains(i) ? weights[i] / keptTotal : 0).ToArray();
    }

    private static double ChiSquare(int[] counts, double[] expected, int draws) =>
        Enumerable.Range(0, counts.Length).Where(i => expected[i] > 0)
            .Sum(i => Math.Pow(counts[i] - draws * expected[i], 2) / (draws * expected[i]));
}
