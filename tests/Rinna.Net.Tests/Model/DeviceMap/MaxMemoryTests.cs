using Rinna.Net.Model.DeviceMap;

namespace Rinna.Net.Tests.Model.DeviceMap;

public class MaxMemoryTests
{
    [Theory]
    [InlineData("10GiB", 10L << 30)]
    [InlineData("10gib", 10L << 30)]
    [InlineData("500MB", 500_000_000L)]
    [InlineData("1.5 GB", 1_500_000_000L)]
    [InlineData("2KiB", 2048L)]
    [InlineData("3TB", 3_000_000_000_000L)]
    [InlineData("4096", 4096L)]
    [InlineData("7B", 7L)]
    [InlineData("0.5KiB", 512L)]
    public void ParsesSizesLikeTransformers(string text, long bytes) => Assert.Equal(bytes, MaxMemory.ParseSize(text));

    [Theory]
    [InlineData("")]
    [InlineData("GiB")]
    [InlineData("-5GB")]
    [InlineData("ten GB")]
    [InlineData("5 PB")]
    [InlineData("99999999999999TiB")]
    public void RejectsBadSizesNamingThem(string text)
    {
        var error = Assert.Throws<ArgumentException>(() => MaxMemory.ParseSize(text));
        Assert.Contains($"'{text}'", error.Message);
    }

    [Fact]
    public void NormalizesDeviceNames()
    {
        var budget = new MaxMemory { { "0", "1KB" }, { "cuda:1", 5 }, { "CPU", "2KB" } };
        Assert.Equal(1000, budget["cuda:0"]);
        Assert.Equal(5, budget["cuda:1"]);
        Assert.Equal(2000, budget["cpu"]);
        Assert.Equal(3, budget.Count);
    }

    [Fact]
    public void RejectsDuplicatesBadDevicesAndNegativeBudgets()
    {
        Assert.Throws<ArgumentException>(() => new MaxMemory { { "0", 1 }, { "cuda:0", 2 } });
        Assert.Contains("'gpu0'", Assert.Throws<ArgumentException>(() => new MaxMemory { { "gpu0", 1 } }).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new MaxMemory { { "cpu", -1 } });
    }
}
