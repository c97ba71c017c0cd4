namespace TrainDemoModel;

/// <summary>The bilingual training corpus of ../shared/corpus: Japanese books, English books and chat dialogues.</summary>
internal sealed record Corpus(IReadOnlyList<string[]> JapaneseBooks, IReadOnlyList<string[]> EnglishBooks, IReadOnlyList<string> Dialogues)
{
    /// <summary>Share of each file held out from training (its last paragraphs, or its last dialogues).</summary>
    public const double HeldOutShare = 0.05;

    public static Corpus Load(string directory)
    {
        static List<string[]> Books(string folder) => Directory.GetFiles(folder, "*.txt").Order(StringComparer.Ordinal)
            .Select(f => File.ReadAllText(f).Split('\n').Where(line => line.Length > 0).ToArray()).ToList();

        // Dialogues are "ユーザー: …\nシステム: …" blocks separated by a blank line.
        var dialogues = File.ReadAllText(Path.Combine(directory, "chat", "dialogues.txt"))
            .Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
        return new Corpus(Books(Path.Combine(directory, "ja")), Books(Path.Combine(directory, "en")), dialogues);
    }

    /// <summary>
    /// The text the tokenizer and the model train on (<c>Training</c>) and the text neither sees (<c>HeldOut</c>): the
    /// last <see cref="HeldOutShare"/> of each book's paragraphs and of the dialogues.
    /// </summary>
    public (Corpus Training, Corpus HeldOut) Split()
    {
        static int Kept(int count) => count - (int)Math.Ceiling(count * HeldOutShare);
        return (
            new Corpus(JapaneseBooks.Select(b => b[..Kept(b.Length)]).ToList(), EnglishBooks.Select(b => b[..Kept(b.Length)]).ToList(),
                Dialogues.Take(Kept(Dialogues.Count)).ToList()),
            new Corpus(JapaneseBooks.Select(b => b[Kept(b.Length)..]).ToList(), EnglishBooks.Select(b => b[Kept(b.Length)..]).ToList(),
                Dialogues.Skip(Kept(Dialogues.Count)).ToList()));
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

    /// <summary>
    /// SentencePiece's <c>nmt_nfkc</c> rule as real SentencePiece compiled it: the repository's bilingual look-alike
    /// tokenizer fixture (made by spm_train with rinna's settings), found by walking up to the solution.
    /// </summary>
    public static string LocateNormalizerModel()
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "fixtures", "tokenizers", "bilingual-lookalike", "spiece.model");
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException("cannot find tests/fixtures/tokenizers/bilingual-lookalike/spiece.model above the working directory; pass --normalizer-from.");
    }
}
