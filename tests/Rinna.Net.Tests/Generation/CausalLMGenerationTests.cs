using Rinna.Net.Generation;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Generation;

/// <summary>Generate over token ids: the model card's ids in, prompt-plus-new ids out, the same as the tensor call.</summary>
public class CausalLMGenerationTests
{
    [Fact]
    public async Task IdsInGiveThePromptAndTheTensorCallsNewIdsOut()
    {
        using var model = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model("tiny-neox-rinna"));
        var config = model.GenerationConfig() with { DoSample = false, MaxNewTokens = 6, EosTokenId = null };
        int[] prompt = [2, 17, 301, 45];

        // An int[] (what Encode returns) and any other list both bind without a cast.
        var fromArray = model.Generate(prompt, config);
        var fromList = model.Generate(prompt.ToList(), config);

        using var ids = tensor(prompt.Select(i => (long)i).ToArray()).unsqueeze(0);
        using var sequences = model.Generate(ids, config).Sequences;
        var expected = sequences[0].data<long>().Select(i => (int)i).ToArray();
        Assert.Equal(prompt.Length + 6, fromArray.Length);
        Assert.Equal(prompt, fromArray[..prompt.Length]);
        Assert.Equal(expected, fromArray);
        Assert.Equal(expected, fromList);
    }
}
