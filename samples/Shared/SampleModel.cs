namespace Rinna.Net.Samples;

/// <summary>Where the samples find their model: a --model argument, or the demo model that ships in samples/models.</summary>
internal static class SampleModel
{
    public const string DemoFolder = "samples/models/rinna-demo";

    /// <summary>
    /// The value of <c>--model</c>, or the shipped demo model's directory. A value that looks like a path (not an
    /// <c>org/name</c> hub id) must be an existing directory, so a mistyped folder is reported here, not as a hub error.
    /// </summary>
    public static string Resolve(SampleArguments arguments)
    {
        if (arguments.Option("--model") is { } model)
        {
            var looksLikePath = Path.IsPathRooted(model) || model.StartsWith('.') || model.Contains('\\') || model.Count(c => c == '/') > 1;
            if (looksLikePath && !Directory.Exists(model)) SampleArguments.Fail($"--model {model}: no such directory.");
            return model;
        }
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, DemoFolder);
            if (Directory.Exists(candidate)) return candidate;
        }
        SampleArguments.Fail($"the demo model ({DemoFolder}) was not found above {AppContext.BaseDirectory}; pass --model <id or directory>.");
        return "";
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
