using Rinna.Net.Native;
using Xunit;

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
}
