namespace TrainDemoModel;

/// <summary>The bilingual training corpus of ../shared/corpus: Japanese books, English books and chat dialogues.</summary>
internal sealed record Corpus(IReadOnlyList<string[]> JapaneseBooks, IReadOnlyList<string[]> EnglishBooks, IReadOnlyList<string> Dialogues)
{
    public static Corpus Load(string directory)
    {
        static List<string[]> Books(string folder) => Directory.GetFiles(folder, "*.txt").Order(StringComparer.Ordinal)
            .Select(f => File.ReadAllText(f).Split('\n').Where(line => line.Length > 0).ToArray()).ToList();

        // Dialogues are "ユーザー: …\nシステム: …" blocks separated by a blank line.
        var dialogues = File.ReadAllText(Path.Combine(directory, "chat", "dialogues.txt"))
            .Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
        return new Corpus(Books(Path.Combine(directory, "ja")), Books(Path.Combine(directory, "en")), dialogues);
    }

    /// <summary>Every paragraph and every dialogue line: the tokenizer's training sentences.</summary>
    public IEnumerable<string> Sentences() =>
        JapaneseBooks.SelectMany(b => b).Concat(EnglishBooks.SelectMany(b => b)).Concat(Dialogues.SelectMany(d => d.Split('\n')));

    /// <summary>Finds ../shared/corpus by walking up from the working directory.</summary>
    public static string Locate()
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "corpus");
            if (Directory.Exists(candidate)) return candidate;
            candidate = Path.Combine(dir.FullName, "..", "shared", "corpus");
            if (Directory.Exists(candidate)) return Path.GetFullPath(candidate);
        }
        throw new DirectoryNotFoundException("cannot find shared/corpus above the working directory; pass --corpus.");
    }
}
