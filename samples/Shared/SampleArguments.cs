using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Reflection;

namespace Rinna.Net.Samples;

/// <summary>
/// A sample's command line: <c>--name value</c> options, <c>--name</c> switches and free text, checked against what the
/// sample accepts. A bad command line ends the program with a one-line message on stderr and exit code 2, and from
/// then on an exception for bad input (a missing model, a malformed file) ends it with one line and exit code 1, not a
/// stack trace; <c>--help</c> prints the usage and exits with 0.
/// </summary>
internal sealed class SampleArguments
{
    /// <summary>The exit code of a command line the sample cannot use.</summary>
    public const int UsageExitCode = 2;

    /// <summary>The exit code of input the sample cannot use: a missing model directory, a malformed file.</summary>
    public const int ErrorExitCode = 1;

    private readonly Dictionary<string, string> options = new(StringComparer.Ordinal);
    private readonly HashSet<string> switches = new(StringComparer.Ordinal);

    /// <summary>Free-text arguments, in order (only where the sample allows them).</summary>
    public IReadOnlyList<string> Positional { get; private set; } = [];

    /// <summary>
    /// Parses <paramref name="args"/>: <paramref name="optionNames"/> take a value, <paramref name="switchNames"/> do not,
    /// free text is accepted only with <paramref name="allowPositional"/>; <paramref name="usage"/> is what <c>--help</c> prints.
    /// </summary>
    public static SampleArguments Parse(string[] args, string usage, string[] optionNames, string[]? switchNames = null, bool allowPositional = false)
    {
        ReportBadInputInOneLine();
        var parsed = new SampleArguments();
        var positional = new List<string>();
        for (var i = 0; i < args.Length; i++)
        {
            var arg = args[i];
            if (arg is "--help" or "-h")
            {
                Console.WriteLine(usage);
                Environment.Exit(0);
            }
            if (optionNames.Contains(arg))
            {
                if (i + 1 >= args.Length) Fail($"{arg} needs a value.");
                parsed.options[arg] = args[++i];
            }
            else if (switchNames?.Contains(arg) == true) parsed.switches.Add(arg);
            else if (arg.StartsWith('-') || !allowPositional) Fail($"unknown argument '{arg}'.");
            else positional.Add(arg);
        }
        parsed.Positional = positional;
        return parsed;
    }

    /// <summary>The value of an option, or <c>null</c> when it is not given.</summary>
    public string? Option(string name) => options.GetValueOrDefault(name);

    /// <summary>Whether a switch is given.</summary>
    public bool Has(string name) => switches.Contains(name);

    /// <summary>The value of a numeric option, or <paramref name="fallback"/>.</summary>
    public double Number(string name, double fallback) => Parsed(name, fallback, NumberStyles.Float, "a number", double.TryParse);

    /// <summary>The value of an integer option, or <paramref name="fallback"/>.</summary>
    public int Integer(string name, int fallback) => Parsed(name, fallback, NumberStyles.Integer, "a whole number", int.TryParse);

    /// <summary>The value of a 64-bit integer option, or <c>null</c>.</summary>
    public long? Long(string name) => Option(name) is null ? null : Parsed(name, 0L, NumberStyles.Integer, "a whole number", long.TryParse);

    /// <summary>The value of an option that must be one of <paramref name="choices"/>, or <paramref name="fallback"/>.</summary>
    public T Choice<T>(string name, T fallback, IReadOnlyDictionary<string, T> choices)
    {
        if (Option(name) is not { } text) return fallback;
        if (choices.TryGetValue(text, out var value)) return value;
        Fail($"{name} {text}: expected {string.Join(", ", choices.Keys)}.");
        return default;
    }

    /// <summary>Prints the message and the way to get help on one line, then exits with <see cref="UsageExitCode"/>.</summary>
    [DoesNotReturn]
    public static void Fail(string message)
    {
        Console.Error.WriteLine($"{ProgramName}: {message.TrimEnd('.')}; --help shows the usage.");
        Environment.Exit(UsageExitCode);
        throw new UnreachableException();
    }

    private static string ProgramName => Assembly.GetEntryAssembly()?.GetName().Name ?? "sample";

    // A missing model, a malformed file or an unreachable hub is the user's input, not a bug in the sample: say what
    // is wrong in one line. Any other exception keeps the runtime's report with its stack trace.
    private static void ReportBadInputInOneLine() => AppDomain.CurrentDomain.UnhandledException += (_, e) =>
    {
        var error = e.ExceptionObject as Exception;
        while (error is AggregateException { InnerExceptions.Count: 1 } aggregate) error = aggregate.InnerException;
        if (error is not (RinnaException or ArgumentException or IOException or UnauthorizedAccessException or HttpRequestException)) return;
        Console.Error.WriteLine($"{ProgramName}: {error.Message.ReplaceLineEndings(" ")}");
        Environment.Exit(ErrorExitCode);
    };

    private delegate bool TryParse<T>(string text, NumberStyles style, IFormatProvider provider, out T value);

    private T Parsed<T>(string name, T fallback, NumberStyles style, string expected, TryParse<T> tryParse)
    {
        if (Option(name) is not { } text) return fallback;
        if (!tryParse(text, style, CultureInfo.InvariantCulture, out var value)) Fail($"{name} {text}: expected {expected}.");
        return value;
    }
}
