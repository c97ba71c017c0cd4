using BenchmarkDotNet.Attributes;
using Rinna.Net.Kernels.Cpu;
using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Benchmarks;

/// <summary>
/// A chat turn's attention over its kept history on rinna-4b's shape (22 heads × 128, one layer, 2 threads): the model's
/// libtorch path (rotation, cache write, then q·Kᵀ, the causal mask, softmax and P·V) as the baseline, against each
/// <see cref="ChunkAttention"/> width, which does all of it in one pass. <c>Tokens</c> 41 after 1,367 cached is
/// <see cref="PrefixCacheBenchmarks"/>' twentieth turn; 8 after 1,000 is a speculative step's proposals. Widths this
/// CPU does not accelerate are reported as NA.
/// </summary>
public class ChunkAttentionBenchmarks
{
    private const int Heads = 22, HeadSize = 128;
    private Tensor projected = null!, cos = null!, sin = null!, keys = null!, values = null!;
    private int past;

    [Params(8, 41)]
    public int Tokens { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        Native.TorchSharpNativeLoader.EnsureInstalled();
        torch.set_num_threads(2);
        past = Tokens == 8 ? 1000 : 1367;
        var gen = new Generator(3);
        projected = randn(1, Tokens, Heads * 3 * HeadSize, generator: gen);
        var angles = rand(1, 1, Tokens, HeadSize, generator: gen).mul(50);
        (cos, sin) = (angles.cos(), angles.sin());
        keys = randn(1, Heads, past + Tokens, HeadSize, generator: gen);
        values = randn(1, Heads, past + Tokens, HeadSize, generator: gen);
        Console.WriteLine($"// ChunkAttention: the model uses {ChunkAttention.VariantFor(Tokens)?.ToString() ?? "libtorch"} for {Tokens} tokens here");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var t in new[] { projected, cos, sin, keys, values }) t.Dispose();
    }

    [Benchmark(Baseline = true)]
    public float LibTorch()
    {
        using var scope = NewDisposeScope();
        var qkv = projected.view(1, Tokens, Heads, 3 * HeadSize).permute(0, 2, 1, 3);
        var query = Rotate(qkv.narrow(-1, 0, HeadSize));
        keys.narrow(2, past, Tokens).copy_(Rotate(qkv.narrow(-1, HeadSize, HeadSize)));
        values.narrow(2, past, Tokens).copy_(qkv.narrow(-1, 2 * HeadSize, HeadSize));
        var scores = matmul(query, keys.transpose(-1, -2)).mul_(1.0 / Math.Sqrt(HeadSize));
        var allowed = ones(Tokens, past + Tokens, ScalarType.Bool).tril(past);
        scores = scores.masked_fill_(allowed.logical_not(), float.MinValue);
        var context = matmul(scores.softmax(-1), values).permute(0, 2, 1, 3).reshape(1, Tokens, Heads * HeadSize);
        return context[0, 0, 0].item<float>();
    }

    [Benchmark]
    public float Vector512() => Managed(ChunkAttentionVariant.Vector512);

    [Benchmark]
    public float Vector256() => Managed(ChunkAttentionVariant.Vector256);

    [Benchmark]
    public float Vector128() => Managed(ChunkAttentionVariant.Vector128);

    private float Managed(ChunkAttentionVariant variant)
    {
        using var scope = NewDisposeScope();
        if (!ChunkAttention.TryStep(projected, cos, sin, keys, values, past, HeadSize, HeadSize, variant, out var context))
            throw new NotSupportedException($"{variant} is not accelerated on this CPU.");
        return context[0, 0, 0].item<float>();
    }

    private Tensor Rotate(Tensor x)
    {
        const int Half = HeadSize / 2;
        var rotatedHalf = cat([x.narrow(-1, Half, Half).neg(), x.narrow(-1, 0, Half)], -1);
        return x.mul(cos).add_(rotatedHalf.mul_(sin));
    }
}
