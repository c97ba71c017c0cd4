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
