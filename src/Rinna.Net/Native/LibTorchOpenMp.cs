using System.Runtime.InteropServices;

namespace Rinna.Net.Native;

/// <summary>
/// Runs managed kernels on libtorch's own OpenMP thread team (GNU <c>libgomp</c>, which the Linux LibTorch builds
/// ship and load), so that a managed kernel and libtorch's operators share the same threads.
/// </summary>
/// <remarks>
/// Why not .NET threads: after every parallel libtorch operator, libgomp's idle workers spin-wait on their cores for a
/// while. A .NET helper thread started next to them has to share a core with a spinning worker, and measured managed
/// decode kernels lost up to half their speed that way (README, "Managed decode kernels"). Handing the work to the
/// spinning workers instead (<c>GOMP_parallel</c>) uses the cores they already hold, with no wake-up latency. Where the
/// runtime is not found (Windows and macOS LibTorch use other OpenMP runtimes), <see cref="IsAvailable"/> is false and
/// callers keep to libtorch's kernels.
/// </remarks>
internal static unsafe class LibTorchOpenMp
{
    private static readonly nint Handle = Load();
    private static readonly delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void> Parallel =
        (delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void>)Export("GOMP_parallel");
    private static readonly delegate* unmanaged<void> TeamBarrier = (delegate* unmanaged<void>)Export("GOMP_barrier");
    private static readonly delegate* unmanaged<int, int> PauseResourceAll = (delegate* unmanaged<int, int>)Export("omp_pause_resource_all");

    /// <summary>OpenMP's <c>omp_pause_soft</c>.</summary>
    private const int PauseSoft = 1;

    /// <summary>Whether libtorch's libgomp was found in this process.</summary>
    public static bool IsAvailable => Parallel != null && TeamBarrier != null;

    /// <summary>
    /// Runs <paramref name="body"/>(<paramref name="state"/>) once on each of <paramref name="threads"/> threads of the team
    /// (the calling thread is one of them) and returns when all have finished. The body must not throw.
    /// </summary>
    public static void Run(delegate* unmanaged<void*, void> body, void* state, int threads)
    {
        if (Parallel == null) throw new InvalidOperationException("libtorch's OpenMP runtime (libgomp) is not loaded in this process.");
        Parallel(body, state, (uint)Math.Max(1, threads), 0);
    }

    /// <summary>
    /// Inside a <see cref="Run"/> body: waits until every thread of the team has arrived (<c>#pragma omp barrier</c>), so
    /// that one stage's results are complete before the next reads them. Every thread of the team must call it equally often.
    /// </summary>
    public static void Barrier() => TeamBarrier();

    /// <summary>
    /// Runs <paramref name="work"/> on a new thread that ends with it, for libtorch work that would otherwise run on a
    /// .NET thread-pool thread (loading a model, a generation).
    /// </summary>
    /// <remarks>
    /// libgomp keeps a team of worker threads for every thread that has run a parallel operation, until that thread
    /// exits, and once it manages more threads than cores it stops spinning between parallel regions and puts its workers
    /// to sleep. A pool thread keeps its team as long as the pool keeps the thread, so every parallel operation in the
    /// process would pay a wake-up meanwhile (benchmarks/RESULTS.md).
    /// </remarks>
    public static Task<T> RunOnOwnThread<T>(Func<T> work, string name, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled<T>(cancellationToken);
        var completion = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try { completion.TrySetResult(work()); }
            catch (OperationCanceledException e) when (e.CancellationToken == cancellationToken) { completion.TrySetCanceled(cancellationToken); }
            catch (Exception e) { completion.TrySetException(e); }
        })
        { IsBackground = true, Name = name };
        thread.Start();
        return completion.Task;
    }

    /// <summary>
    /// Frees the calling thread's libgomp team (<c>omp_pause_resource_all</c>: its workers exit), so that a thread-pool
    /// thread that ran libtorch work does not keep one after it. Its next parallel operation starts a new team. A no-op
    /// where libgomp is not loaded.
    /// </summary>
    /// <remarks>
    /// See <see cref="RunOnOwnThread{T}"/> for why a lingering team costs: every other team then stops spinning between
    /// parallel regions.
    /// </remarks>
    public static void ReleaseTeam()
    {
        if (PauseResourceAll != null) PauseResourceAll(PauseSoft);
    }

    /// <summary><see cref="ReleaseTeam"/> when the calling thread belongs to the .NET thread pool (threads of one's own keep theirs for their next call).</summary>
    public static void ReleaseTeamOfPoolThread()
    {
        if (Thread.CurrentThread.IsThreadPoolThread) ReleaseTeam();
    }

    private static nint Load()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        // Touching TorchSharp first makes sure libtorch, and the libgomp it depends on, are mapped.
        _ = TorchSharp.torch.get_num_threads();
        var path = FindLibGomp();
        return path is not null && NativeLibrary.TryLoad(path, out var handle) ? handle : 0;
    }

    private static void* Export(string name) =>
        Handle != 0 && NativeLibrary.TryGetExport(Handle, name, out var export) ? (void*)export : null;

    /// <summary>The libgomp mapped next to libtorch_cpu (its bundled, hash-named copy), else any mapped libgomp.</summary>
    private static string? FindLibGomp()
    {
        var mapped = MappedLibraries.Paths();
        var libTorchDirectory = mapped.Where(p => Path.GetFileName(p) == "libtorch_cpu.so").Select(Path.GetDirectoryName).FirstOrDefault();
        var gomps = mapped.Where(p => Path.GetFileName(p).StartsWith("libgomp", StringComparison.Ordinal)).ToArray();
        return gomps.FirstOrDefault(p => Path.GetDirectoryName(p) == libTorchDirectory) ?? gomps.FirstOrDefault();
    }
}
