using Rinna.Net.Generation;
using Rinna.Net.Native;
using Xunit;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Native;

public class LibTorchOpenMpTests
{
    [Fact]
    public async Task RunOnOwnThreadRunsOnAThreadThatEndsWithTheWork()
    {
        Thread? worker = null;
        int result = await LibTorchOpenMp.RunOnOwnThread(() =>
        {
            worker = Thread.CurrentThread;
            Assert.False(worker.IsThreadPoolThread);
            return 42;
        }, "test worker", TestContext.Current.CancellationToken);
        Assert.Equal(42, result);
        Assert.Equal("test worker", worker!.Name);
        // libgomp frees a thread's team only when the thread exits, which is the point of the helper.
        Assert.True(worker.Join(TimeSpan.FromSeconds(10)), "the worker thread did not exit after its work");
    }

    [Fact]
    public async Task RunOnOwnThreadPassesOnExceptionsAndCancellation()
    {
        await Assert.ThrowsAsync<InvalidDataException>(() => LibTorchOpenMp.RunOnOwnThread<int>(() => throw new InvalidDataException("bad"), "t", CancellationToken.None));

        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        bool ran = false;
        var before = LibTorchOpenMp.RunOnOwnThread(() => ran = true, "t", cancelled.Token);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => before);
        Assert.True(before.IsCanceled);
        Assert.False(ran);

        using var during = new CancellationTokenSource();
        var stopped = LibTorchOpenMp.RunOnOwnThread<int>(() =>
        {
            during.Cancel();
            during.Token.ThrowIfCancellationRequested();
            return 0;
        }, "t", during.Token);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => stopped);
        Assert.True(stopped.IsCanceled);
    }

    [Fact]
    public void ReleaseTeamEndsTheCallingThreadsWorkersAndLibTorchStillRuns()
    {
        const string name = "rinna-omp-rel";
        int withTeam = 0, released = 0, again = 0;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                withTeam = RunParallelWork(name);
                LibTorchOpenMp.ReleaseTeam();
                released = ThreadsNamed(name);
                again = RunParallelWork(name);
                LibTorchOpenMp.ReleaseTeam();
            }
            catch (Exception e) { failure = e; }
        }) { Name = name };
        thread.Start();
        thread.Join();
        Assert.Null(failure);
        SkipWithoutTeams(withTeam);
        Assert.Equal(1, released);
        Assert.True(again > 1, $"a parallel operation after the release ran on {again} thread(s)");
    }

    [Fact]
    public async Task GenerateOnAPoolThreadLeavesNoTeamBehind()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"), cancellationToken: TestContext.Current.CancellationToken);
        const string name = "rinna-omp-gen";
        var (withTeam, afterGenerate, generated) = await Task.Run(() =>
        {
            var pool = Thread.CurrentThread;
            Assert.True(pool.IsThreadPoolThread);
            // The name reaches the OS thread, and libgomp's workers inherit it when they are started from here; an
            // earlier test's team on this pool thread would carry another name, so it goes first.
            LibTorchOpenMp.ReleaseTeam();
            pool.Name = name;
            int withTeam = RunParallelWork(name);
            var ids = model.Generate([5, 6, 7], new GenerationConfig { MaxNewTokens = 3, MinNewTokens = 3, PadTokenId = 0 });
            return (withTeam, ThreadsNamed(name), ids.Length);
        }, TestContext.Current.CancellationToken);
        Assert.Equal(6, generated);
        SkipWithoutTeams(withTeam);
        Assert.Equal(1, afterGenerate);
    }

    /// <summary>A libtorch operation large enough for ATen's parallel loop; returns how many threads now carry <paramref name="name"/>.</summary>
    private static int RunParallelWork(string name)
    {
        using var a = ones(1 << 22);
        using var b = a * 2;
        Assert.Equal(2.0 * (1 << 22), b.sum().item<float>());
        return ThreadsNamed(name);
    }

    private static int ThreadsNamed(string name) =>
        Directory.GetDirectories("/proc/self/task").Count(task => File.Exists(Path.Combine(task, "comm"))
            && File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n') == name);

    private static void SkipWithoutTeams(int threadsAfterParallelWork)
    {
        if (!OperatingSystem.IsLinux() || !LibTorchOpenMp.IsAvailable) Assert.Skip("libgomp runs libtorch's parallel work only in Linux builds.");
        if (get_num_threads() < 2) Assert.Skip("libtorch runs on one thread here, so no thread has a team to release.");
        Assert.True(threadsAfterParallelWork > 1, $"a parallel operation left {threadsAfterParallelWork} thread(s) named after its caller; the test cannot see teams");
    }
}
