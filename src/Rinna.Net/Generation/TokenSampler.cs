using TorchSharp;
using static TorchSharp.torch;

namespace Rinna.Net.Generation;

/// <summary>
/// Picks the next token of every row from processed scores: the most likely one (greedy, <c>argmax</c>) or a draw from
/// <c>softmax(scores)</c> (<c>multinomial</c>) with its own random generator, so a seed reproduces a run and concurrent
/// generations do not share random state.
/// </summary>
/// <remarks>
/// TorchSharp creates every <see cref="Generator"/> on the CPU, and a CUDA <c>multinomial</c> refuses one, so draws
/// happen on the CPU whatever the device of the scores: one <c>[batch, vocab]</c> copy per step (256 KB for rinna's
/// vocabulary), and the same seed draws the same tokens from the same probabilities on every device.
/// </remarks>
public sealed class TokenSampler : IDisposable
{
    private readonly Generator? generator;
    private bool disposed;

    /// <summary>Creates a sampler.</summary>
    /// <param name="doSample"><c>true</c> to draw from the distribution, <c>false</c> for greedy decoding.</param>
    /// <param name="seed">Seed of the random generator; <c>null</c> draws one. Ignored for greedy decoding.</param>
    public TokenSampler(bool doSample, long? seed = null)
    {
        DoSample = doSample;
        if (!doSample) return;
        Seed = seed ?? Random.Shared.NextInt64();
        generator = new Generator(unchecked((ulong)Seed.Value), CPU);
    }

    /// <summary>A sampler for <paramref name="config"/>'s <see cref="GenerationConfig.DoSample"/> and <see cref="GenerationConfig.Seed"/>.</summary>
    public static TokenSampler Create(GenerationConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return new TokenSampler(config.DoSample, config.Seed);
    }

    /// <summary>Whether tokens are drawn at random (otherwise greedy).</summary>
    public bool DoSample { get; }

    /// <summary>The seed in use when sampling (the given one or the one drawn), else <c>null</c>.</summary>
    public long? Seed { get; }

    /// <summary>Picks one token per row.</summary>
    /// <param name="scores">Processed scores <c>[batch, vocab]</c> (forbidden tokens at <c>-inf</c>).</param>
    /// <returns>The chosen ids, <c>[batch]</c>, int64, on the device of <paramref name="scores"/>.</returns>
    /// <exception cref="ObjectDisposedException">The sampler was disposed.</exception>
    public Tensor Next(Tensor scores)
    {
        ArgumentNullException.ThrowIfNull(scores);
        if (scores.dim() != 2)
            throw new ArgumentException($"scores must be [batch, vocab], got [{string.Join(", ", scores.shape)}].", nameof(scores));
        if (!DoSample) return scores.argmax(-1);
        ObjectDisposedException.ThrowIf(disposed, this);
        using var probs = scores.softmax(-1).cpu();
        var drawn = probs.multinomial(1, replacement: false, generator: generator).squeeze(1);
        if (scores.device_type == DeviceType.CPU) return drawn;
        using (drawn) return drawn.to(scores.device);
    }

    /// <summary>A uniform draw from [0, 1) with the sampler's generator (speculative sampling's acceptance test).</summary>
    /// <exception cref="InvalidOperationException">The sampler is greedy.</exception>
    internal double NextUniform()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (generator is null) throw new InvalidOperationException("A greedy sampler draws nothing at random.");
        using var draw = rand(1, generator: generator);
        return draw.item<float>();
    }

    /// <summary>Releases the random generator.</summary>
    public void Dispose()
    {
        disposed = true;
        generator?.Dispose();
    }
}
