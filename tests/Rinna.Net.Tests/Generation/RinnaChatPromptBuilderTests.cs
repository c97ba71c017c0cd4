using System.Text.Json;
using Rinna.Net.Generation;

namespace Rinna.Net.Tests.Generation;

/// <summary>The prompt strings of rinna's model cards, as stored in the tokenizer fixtures' prompt cases.</summary>
public class RinnaChatPromptBuilderTests
{
    private static string FixturePrompt(string id) =>
        File.ReadLines(Path.Combine(Fixtures.Tokenizer("bilingual-lookalike"), "cases.jsonl"))
            .Select(line => JsonDocument.Parse(line).RootElement)
            .Single(c => c.GetProperty("id").GetString() == id)
            .GetProperty("text").GetString()!;

    [Fact]
    public void BuildsTheBilingualModelCardPrompt()
    {
        var builder = RinnaChatPromptBuilder.ForModel("rinna/bilingual-gpt-neox-4b-instruction-ppo");
        var prompt = builder.BuildPrompt([
            new(RinnaSpeaker.User, "Hello, you are an assistant that helps me learn Japanese."),
            new(RinnaSpeaker.System, "Sure, what can I do for you?"),
            new(RinnaSpeaker.User, "VRはなんですか。"),
        ]);
        Assert.Equal(FixturePrompt("prompt-001"), prompt);
        Assert.Equal("a<NL>b", builder.PostProcess("a<NL>b"));
    }

    [Fact]
    public void BuildsTheJapanese36bModelCardPrompt()
    {
        var builder = RinnaChatPromptBuilder.ForModel("rinna/japanese-gpt-neox-3.6b-instruction-sft");
        var prompt = builder.BuildPrompt([
            new(RinnaSpeaker.User, "コンタクトレンズを慣れるにはどうすればよいですか？"),
            new(RinnaSpeaker.System, "これについて具体的に説明していただけますか？何が難しいのでしょうか？"),
            new(RinnaSpeaker.User, "目が痛いのです。"),
            new(RinnaSpeaker.System, "分かりました、コンタクトレンズをつけると目がかゆくなるということですね。思った以上にレンズを外す必要があるでしょうか？"),
            new(RinnaSpeaker.User, "いえ、レンズは外しませんが、目が赤くなるんです。"),
        ]);
        Assert.Equal(FixturePrompt("prompt-003"), prompt);
        Assert.Equal(FixturePrompt("prompt-004"), builder.BuildPrompt([new(RinnaSpeaker.User, "日本のおすすめの観光地を教えてください。")]));
    }

    [Fact]
    public void The36bFormatWritesNewlinesAsNlTagsAndTurnsThemBack()
    {
        var builder = new RinnaChatPromptBuilder(RinnaChatFormat.JapaneseNewlineTag);
        Assert.Equal("ユーザー: 一行目<NL>二行目<NL>三行目<NL>四行目<NL>システム: ",
            builder.BuildPrompt([new(RinnaSpeaker.User, "一行目\n二行目\r\n三行目\r四行目")]));
        Assert.Equal("はい。\nいいえ。</s>", builder.PostProcess("はい。<NL>いいえ。</s>"));
    }

    [Fact]
    public void TheBilingualFormatKeepsNewlinesInsideUtterances()
    {
        var builder = new RinnaChatPromptBuilder(RinnaChatFormat.Bilingual);
        Assert.Equal("ユーザー: a\nb\nシステム: ", builder.BuildPrompt([new(RinnaSpeaker.User, "a\nb")]));
    }

    [Theory]
    [InlineData("rinna/bilingual-gpt-neox-4b-instruction-sft", RinnaChatFormat.Bilingual)]
    [InlineData("rinna/bilingual-gpt-neox-4b-instruction-ppo", RinnaChatFormat.Bilingual)]
    [InlineData("rinna/japanese-gpt-neox-3.6b-instruction-sft", RinnaChatFormat.JapaneseNewlineTag)]
    [InlineData("rinna/japanese-gpt-neox-3.6b-instruction-sft-v2", RinnaChatFormat.JapaneseNewlineTag)]
    [InlineData("RINNA/Japanese-GPT-NeoX-3.6B-Instruction-PPO", RinnaChatFormat.JapaneseNewlineTag)]
    [InlineData("/models/japanese-gpt-neox-3.6b-instruction-ppo/", RinnaChatFormat.JapaneseNewlineTag)]
    [InlineData(@"C:\models\bilingual-gpt-neox-4b-instruction-ppo", RinnaChatFormat.Bilingual)]
    [InlineData("rinna/bilingual-gpt-neox-4b", null)]
    [InlineData("rinna/japanese-gpt-neox-3.6b", null)]
    [InlineData("EleutherAI/pythia-70m", null)]
    [InlineData("", null)]
    [InlineData(null, null)]
    public void DetectsTheFormatFromTheModelId(string? modelId, RinnaChatFormat? expected) =>
        Assert.Equal(expected, RinnaChatPromptBuilder.DetectFormat(modelId));

    [Fact]
    public void AnExplicitFormatOverridesDetectionAndUnknownModelsNeedOne()
    {
        Assert.Equal(RinnaChatFormat.Bilingual,
            RinnaChatPromptBuilder.ForModel("rinna/japanese-gpt-neox-3.6b-instruction-ppo", RinnaChatFormat.Bilingual).Format);
        Assert.Equal(RinnaChatFormat.JapaneseNewlineTag,
            RinnaChatPromptBuilder.ForModel("my/finetune", RinnaChatFormat.JapaneseNewlineTag).Format);
        Assert.Throws<ArgumentException>(() => RinnaChatPromptBuilder.ForModel("my/finetune"));
    }

    [Fact]
    public void ALocalDirectoryWithoutARinnaNameGetsTheBilingualFormat()
    {
        Assert.Null(RinnaChatPromptBuilder.DetectFormat(Fixtures.DemoModel));
        Assert.Equal(RinnaChatFormat.Bilingual, RinnaChatPromptBuilder.ForModel(Fixtures.DemoModel).Format);
        Assert.Equal(RinnaChatFormat.JapaneseNewlineTag,
            RinnaChatPromptBuilder.ForModel(Fixtures.DemoModel, RinnaChatFormat.JapaneseNewlineTag).Format);
    }

    [Theory]
    [InlineData("config.json", """{"_name_or_path": "rinna/japanese-gpt-neox-3.6b-instruction-ppo"}""", RinnaChatFormat.JapaneseNewlineTag)]
    [InlineData("tokenizer_config.json", """{"name_or_path": "rinna/bilingual-gpt-neox-4b-instruction-sft"}""", RinnaChatFormat.Bilingual)]
    [InlineData("config.json", """{"_name_or_path": "rinna/japanese-gpt-neox-3.6b"}""", RinnaChatFormat.Bilingual)]
    [InlineData("config.json", "{ not json", RinnaChatFormat.Bilingual)]
    [InlineData("config.json", "[1, 2]", RinnaChatFormat.Bilingual)]
    public void ALocalDirectoryIsRecognisedByTheModelIdItsFilesRecord(string file, string json, RinnaChatFormat expected)
    {
        var directory = Directory.CreateTempSubdirectory("rinna-format-");
        try
        {
            File.WriteAllText(Path.Combine(directory.FullName, file), json);
            Assert.Equal(expected, RinnaChatPromptBuilder.ForModel(directory.FullName).Format);
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    [Fact]
    public void AConversationMustBeNonEmptyAndEndWithTheUser()
    {
        var builder = new RinnaChatPromptBuilder(RinnaChatFormat.Bilingual);
        Assert.Throws<ArgumentException>(() => builder.BuildPrompt([]));
        Assert.Throws<ArgumentException>(() => builder.BuildPrompt([new(RinnaSpeaker.User, "a"), new(RinnaSpeaker.System, "b")]));
        Assert.Throws<ArgumentException>(() => builder.BuildPrompt([new(RinnaSpeaker.User, null!)]));
    }
}

public class RinnaChatOutputStreamTests
{
    [Theory]
    [InlineData(RinnaChatFormat.JapaneseNewlineTag)]
    [InlineData(RinnaChatFormat.Bilingual)]
    public void StreamingGivesThePostProcessedTextHoweverTheOutputIsSplit(RinnaChatFormat format)
    {
        var builder = new RinnaChatPromptBuilder(format);
        const string output = "はい。<NL>1. <N<NL><NL>x<NL";
        for (var first = 0; first <= output.Length; first++)
            for (var second = first; second <= output.Length; second++)
            {
                var stream = builder.CreateOutputStream();
                var text = stream.Push(output[..first]) + stream.Push(output[first..second]) + stream.Push(output[second..]) + stream.Flush();
                Assert.Equal(builder.PostProcess(output), text);
            }
    }

    [Fact]
    public void APartialTagIsHeldUntilDecided()
    {
        var stream = new RinnaChatPromptBuilder(RinnaChatFormat.JapaneseNewlineTag).CreateOutputStream();
        Assert.Equal("a", stream.Push("a<N"));
        Assert.Equal("\nb", stream.Push("L>b"));
        Assert.Equal("", stream.Push("<"));
        Assert.Equal("<", stream.Flush());
    }
}

/// <summary>Fitting a conversation to a context window, with one token per character so the arithmetic is visible.</summary>
public class RinnaChatPromptFittingTests
{
    private static readonly RinnaChatPromptBuilder Builder = new(RinnaChatFormat.Bilingual);

    private static int Characters(string text) => text.Length;

    private static List<RinnaChatTurn> Conversation(int exchanges)
    {
        var turns = new List<RinnaChatTurn>();
        for (int i = 0; i < exchanges; i++)
        {
            turns.Add(new(RinnaSpeaker.User, $"question {i:00}"));
            turns.Add(new(RinnaSpeaker.System, $"answer {i:00}"));
        }
        turns.Add(new(RinnaSpeaker.User, "the latest question"));
        return turns;
    }

    [Fact]
    public void AConversationThatFitsIsTheWholePrompt()
    {
        var turns = Conversation(3);
        var fitted = Builder.BuildPrompt(turns, null, Characters, contextLength: 1000, maxNewTokens: 50);
        Assert.Equal(Builder.BuildPrompt(turns), fitted.Text);
        Assert.Equal(fitted.Text.Length, fitted.PromptTokens);
        Assert.Equal(0, fitted.DroppedTurns);
        Assert.Equal(50, fitted.MaxNewTokens);
        Assert.False(fitted.MaxNewTokensClamped);
    }

    [Theory]
    [InlineData(120, 20)]
    [InlineData(200, 40)]
    [InlineData(400, 100)]
    public void TheFewestOldestExchangesAreDroppedKeepingInstructionsAndTheLatestMessage(int context, int maxNewTokens)
    {
        var turns = Conversation(20);
        var fitted = Builder.BuildPrompt(turns, "Be brief.", Characters, context, maxNewTokens);
        int reserve = Math.Min(maxNewTokens, context / 4);

        Assert.True(fitted.DroppedTurns > 0);
        Assert.Equal(0, fitted.DroppedTurns % 2); // whole exchanges: the prompt still starts with a user turn
        Assert.StartsWith("ユーザー: Be brief.\nquestion", fitted.Text);
        Assert.EndsWith("ユーザー: the latest question\nシステム: ", fitted.Text);
        Assert.True(fitted.PromptTokens + reserve <= context);
        // One exchange more would not have fitted.
        var kept = turns.Skip(fitted.DroppedTurns - 2).ToList();
        kept[0] = kept[0] with { Text = "Be brief.\n" + kept[0].Text };
        Assert.True(Builder.BuildPrompt(kept).Length + reserve > context);
        Assert.Equal(Math.Min(maxNewTokens, context - fitted.PromptTokens), fitted.MaxNewTokens);
    }

    [Fact]
    public void TheAnswerIsClampedToTheRoomThatIsLeft()
    {
        var turns = Conversation(0);
        int promptLength = Builder.BuildPrompt(turns).Length;
        var fitted = Builder.BuildPrompt(turns, null, Characters, contextLength: promptLength + 10, maxNewTokens: 1_000_000);
        Assert.Equal(10, fitted.MaxNewTokens);
        Assert.True(fitted.MaxNewTokensClamped);
        Assert.Equal(0, fitted.DroppedTurns);
    }

    [Fact]
    public void ThrowPolicyRefusesInsteadOfDropping()
    {
        var error = Assert.Throws<ArgumentException>(() =>
            Builder.BuildPrompt(Conversation(20), null, Characters, 120, 20, ContextOverflowPolicy.Throw));
        Assert.Contains("context of 120 tokens", error.Message);
    }

    [Fact]
    public void ALatestMessageLongerThanTheContextIsRefusedSayingSo()
    {
        var turns = new List<RinnaChatTurn> { new(RinnaSpeaker.User, "hi"), new(RinnaSpeaker.System, "hello"), new(RinnaSpeaker.User, new string('x', 500)) };
        var error = Assert.Throws<ArgumentException>(() => Builder.BuildPrompt(turns, null, Characters, 256, 16));
        Assert.Contains("latest message alone", error.Message);
    }

    [Fact]
    public void TurnMarkersAreTheSpeakerLabels()
    {
        Assert.Equal(["ユーザー:", "システム:"], new RinnaChatPromptBuilder(RinnaChatFormat.Bilingual).TurnMarkers);
        Assert.Equal(["ユーザー:", "システム:"], new RinnaChatPromptBuilder(RinnaChatFormat.JapaneseNewlineTag).TurnMarkers);
    }
}
