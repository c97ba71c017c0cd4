using Rinna.Net.Kernels.Cpu;

namespace Rinna.Net.Tests.Kernels.Cpu;

/// <summary>
/// The row scheduling every managed GEMV shares: each row claimed exactly once, claims starting where kernels group rows,
/// long runs first and short ones last (so that no thread streams a long run while the others wait at a barrier).
/// </summary>
public class RowClaimsTests
{
    public static TheoryData<int, int, int> Shapes => new()
    {
        { 11264, 2, 8 }, { 2816, 2, 16 }, { 50304, 16, 16 }, { 8448, 3, 8 }, { 1000, 2, 16 }, { 7, 2, 16 }, { 1, 1, 1 },
        { 2816, 1, 16 }, { 130, 64, 8 }, { 0, 2, 8 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ClaimsCoverEveryRowOnceAtMultiplesOfTheMinimumAndShrinkToIt(int rows, int threads, int minimum)
    {
        var claims = new RowClaims(rows, threads, minimum);
        var runs = new List<(int First, int End)>();
        while (claims.TryClaim(out int first, out int end)) runs.Add((first, end));
        Assert.False(claims.TryClaim(out _, out _));

        int expected = 0;
        foreach (var (first, end) in runs)
        {
            Assert.Equal(expected, first);
            Assert.True(end > first);
            Assert.Equal(0, first % minimum);
            expected = end;
        }
        Assert.Equal(rows, expected);
        if (rows == 0) return;

        int longest = Math.Max(minimum, (rows / (4 * threads) + minimum - 1) / minimum * minimum);
        var sizes = runs.Select(r => r.End - r.First).ToList();
        Assert.All(sizes, size => Assert.InRange(size, 1, longest));
        // Sizes never grow; the last whole claim is the minimum wherever the rows outnumber it.
        for (int i = 1; i < sizes.Count - 1; i++) Assert.True(sizes[i] <= sizes[i - 1], $"claim {i} of {sizes.Count} grew");
        if (rows >= 2 * minimum * 2 * threads)
        {
            Assert.Equal(minimum, sizes[^2]);
            Assert.True(sizes[0] >= 2 * sizes[^2], "the first claims should be long streams");
        }
    }

    [Fact]
    public void ThreadsClaimingAtOnceGetDisjointRunsThatCoverTheRows()
    {
        const int Rows = 200_000, Threads = 8, Minimum = 8;
        var holder = new Holder { Claims = new RowClaims(Rows, Threads, Minimum) };
        var claimed = new int[Rows];
        using var start = new Barrier(Threads);
        var workers = Enumerable.Range(0, Threads).Select(_ => new Thread(() =>
        {
            start.SignalAndWait();
            while (holder.Claims.TryClaim(out int first, out int end))
                for (int row = first; row < end; row++) Interlocked.Increment(ref claimed[row]);
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => t.Join());
        Assert.All(claimed, count => Assert.Equal(1, count));
    }

    /// <summary>Kernels keep their claims in a shared job struct; a class field is the managed stand-in.</summary>
    private sealed class Holder
    {
        public RowClaims Claims;
    }
}
