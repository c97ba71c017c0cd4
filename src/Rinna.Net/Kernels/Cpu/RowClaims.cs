namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// How the managed GEMV kernels share a matrix's rows among libtorch's OpenMP threads: each thread claims the next run
/// of rows until none are left, so long contiguous weight streams go to whichever thread is free. Runs shrink as the
/// rows run out, as OpenMP's guided schedule does: the last ones are short, so that the threads finish a product
/// together instead of one waiting at the next barrier while the other streams a long last run.
/// </summary>
/// <remarks>Lives inside a kernel's job struct, which the threads reach through a pointer, so claims update it in place.</remarks>
internal struct RowClaims
{
    /// <summary>The longest claim is one of this many parts of a thread's share of the rows: long streams while most rows are left.</summary>
    private const int ClaimsPerThread = 4;

    private readonly int rows;
    private readonly int longest;
    private readonly int minimum;
    private readonly int threads;
    private int nextRow;

    /// <param name="rows">Rows to share out.</param>
    /// <param name="threads">Threads that will claim them.</param>
    /// <param name="minimumPerClaim">The fewest rows one claim takes (a kernel's grouping or a floor on atomic traffic).</param>
    public RowClaims(int rows, int threads, int minimumPerClaim)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minimumPerClaim);
        this.rows = rows;
        this.threads = Math.Max(1, threads);
        minimum = minimumPerClaim;
        longest = (int)Math.Min(int.MaxValue, RoundUp(rows / (ClaimsPerThread * this.threads)));
        nextRow = 0;
    }

    /// <summary>
    /// Claims the next run of rows, <c>[first, end)</c>; false when every row is taken. Every run starts at a multiple of
    /// the minimum (kernels group rows from a claim's start, and the same rows then always go together whatever the
    /// thread count or the order of claims) and is half of each thread's share of the rows left, at most the longest.
    /// </summary>
    public bool TryClaim(out int first, out int end)
    {
        while (true)
        {
            int current = Volatile.Read(ref nextRow);
            if (current >= rows)
            {
                first = end = rows;
                return false;
            }
            long size = Math.Min(longest, RoundUp((rows - current) / (2 * threads)));
            int next = (int)Math.Min(rows, current + size);
            if (Interlocked.CompareExchange(ref nextRow, next, current) == current)
            {
                first = current;
                end = next;
                return true;
            }
        }
    }

    /// <summary><paramref name="count"/> rounded up to a multiple of the minimum, and at least the minimum.</summary>
    private readonly long RoundUp(int count) => Math.Max(minimum, ((long)count + minimum - 1) / minimum * minimum);
}
