using System.Globalization;
using Rinna.Net.Native;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Native;

/// <summary>Float16 linear weights are loaded onto transparent huge pages, which made float16 decode 5–28 % faster.</summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class Float16HugePagesTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("rinna-f16-thp-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    [Fact]
    public async Task Float16LinearWeightsAreBackedByHugePages()
    {
        HugePageProbe.SkipUnlessAvailable();
        HugePageProbe.SaveFloat16Model(directory, layers: 1);

        long fallbacksBefore = HugePageFaultFallbacks();
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(directory, new ModelLoadOptions { TorchDtype = TorchDtype.Float16 });
        long fallbacks = HugePageFaultFallbacks() - fallbacksBefore;

        var weight = model.named_parameters().Single(p => p.name == "gpt_neox.layers.0.mlp.dense_h_to_4h.weight").parameter;
        Assert.Equal(ScalarType.Float16, weight.dtype);
        var (flags, hugeBytes) = HugePageProbe.Around(weight);
        // "hg": the mapping carries MADV_HUGEPAGE, which is this library's part.
        Assert.Contains("hg", flags.Split(' '));
        // The kernel's part: huge pages, unless it had no free 2 MiB block at that moment and said so by falling back.
        Assert.True(hugeBytes >= 2 << 20 || fallbacks > 0,
            $"the 8 MB float16 weight's mapping has {hugeBytes} bytes of anonymous huge pages and the kernel reported no fallback");
    }

    [Fact]
    public void PopulateGivesHugePagesToHeapMemoryThatWasUsedBefore()
    {
        HugePageProbe.SkipUnlessAvailable();
        // Leave touched memory in the heap, as any busy process has: after large frees glibc raises its mmap threshold
        // and hands that memory out again, already mapped in small pages, which advice alone does not change.
        for (int round = 0; round < 3; round++)
        {
            var churn = Enumerable.Range(0, 20).Select(_ => ones(4L << 20, ScalarType.Float16)).ToList();
            churn.ForEach(t => t.Dispose());
        }
        long fallbacksBefore = HugePageFaultFallbacks();
        using var weight = empty(4L << 20, ScalarType.Float16);

        NativeHeap.Populate(weight, hugePages: true);

        long fallbacks = HugePageFaultFallbacks() - fallbacksBefore;
        var (flags, hugeBytes) = HugePageProbe.Around(weight);
        Assert.Contains("hg", flags.Split(' '));
        Assert.True(hugeBytes >= 2 << 20 || fallbacks > 0,
            $"an 8 MB tensor on reused heap memory has {hugeBytes} bytes of anonymous huge pages and the kernel reported no fallback");
    }

    private static long HugePageFaultFallbacks() =>
        File.ReadLines("/proc/vmstat").Where(l => l.StartsWith("thp_fault_fallback ", StringComparison.Ordinal))
            .Select(l => long.Parse(l.Split(' ')[1], CultureInfo.InvariantCulture)).SingleOrDefault();
}
