namespace Rinna.Net.Samples;

/// <summary>Where the samples find their model: a --model argument, or the demo model that ships in samples/models.</summary>
internal static class SampleModel
{
    public const string DemoFolder = "samples/models/rinna-demo";

    /// <summary>The value of <c>--model</c>, or the shipped demo model's directory.</summary>
    public static string Resolve(string[] args)
    {
        var index = Array.IndexOf(args, "--model");
        if (index >= 0 && index + 1 < args.Length) return args[index + 1];
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, DemoFolder);
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException($"The demo model ({DemoFolder}) was not found above {AppContext.BaseDirectory}; pass --model <id or directory>.");
    }

    public static string? Option(string[] args, string name)
    {
        var index = Array.IndexOf(args, name);
        return index >= 0 && index + 1 < args.Length ? args[index + 1] : null;
    }

    /// <summary>A one-line console progress bar for downloads.</summary>
    public sealed class ConsoleDownloadProgress : IProgress<Hub.DownloadProgress>
    {
        private string? lastLine;

        public void Report(Hub.DownloadProgress value)
        {
            double fraction = value.TotalBytes > 0 ? (double)value.BytesDownloaded / value.TotalBytes : 0;
            int filled = (int)(fraction * 30);
            var line = $"\r{value.File,-32} [{new string('#', filled)}{new string('.', 30 - filled)}] {fraction,6:P1} " +
                       $"{value.BytesDownloaded / 1e6,9:F1}/{value.TotalBytes / 1e6:F1} MB {value.BytesPerSecond / 1e6,6:F1} MB/s";
            if (line == lastLine) return;
            lastLine = line;
            Console.Error.Write(line);
            if (value.BytesDownloaded >= value.TotalBytes) Console.Error.WriteLine();
        }
    }
}
