namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// How the managed GEMV kernels share a matrix's rows among libtorch's OpenMP threads: each thread claims the next run
/// of rows with one atomic add until none are left, so long contiguous weight streams go to whichever thread is free.
/// </summary>
/// <remarks>Lives inside a kernel's job struct, which the threads reach through a pointer, so claims update it in place.</remarks>
internal struct RowClaims
{
    /// <summary>Each thread claims about this share of the rows at a time: long streams, with some room for balancing.</summary>
    private const int ClaimsPerThread = 4;

    private readonly int rows;
    private readonly int rowsPerClaim;
    private int nextRow;

    /// <param name="rows">Rows to share out.</param>
    /// <param name="threads">Threads that will claim them.</param>
    /// <param name="minimumPerClaim">The fewest rows one claim takes (a kernel's grouping or a floor on atomic traffic).</param>
    public RowClaims(int rows, int threads, int minimumPerClaim)
    {
        this.rows = rows;
        // A multiple of the minimum, so that claims start at multiples of it whatever the thread count (kernels group rows
        // from a claim's start, and the same rows then always go together).
        int share = rows / (ClaimsPerThread * Math.Max(1, threads));
        rowsPerClaim = Math.Max(minimumPerClaim, (share + minimumPerClaim - 1) / minimumPerClaim * minimumPerClaim);
        nextRow = 0;
    }

    /// <summary>Claims the next run of rows, <c>[first, end)</c>; false when every row is taken.</summary>
    public bool TryClaim(out int first, out int end)
    {
        first = Interlocked.Add(ref nextRow, rowsPerClaim) - rowsPerClaim;
        end = Math.Min(rows, first + rowsPerClaim);
        return first < rows;
    }
}
