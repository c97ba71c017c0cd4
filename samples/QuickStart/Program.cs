// The model card's Python program, line for line:
//   tokenizer = AutoTokenizer.from_pretrained(model_id, use_fast=False)
//   model = AutoModelForCausalLM.from_pretrained(model_id, load_in_8bit=True, torch_dtype=torch.float16, device_map="auto")
//   token_ids = tokenizer.encode(prompt, add_special_tokens=False, return_tensors="pt")
//   output_ids = model.generate(token_ids, do_sample=True, max_new_tokens=128, temperature=0.7, repetition_penalty=1.1, ...)
//   output = tokenizer.decode(output_ids.tolist()[0][token_ids.size(1):])
// Run: dotnet run --project samples/QuickStart [-- --model rinna/bilingual-gpt-neox-4b-instruction-ppo]
using Rinna.Net;
using Rinna.Net.Generation;
using Rinna.Net.Samples;
using Rinna.Net.Tokenization;
using static TorchSharp.torch;

var modelId = SampleModel.Resolve(args);
Console.WriteLine($"model: {modelId}");

var tokenizer = await AutoTokenizer.FromPretrainedAsync(modelId, new TokenizerOptions { UseFast = false });
using var model = await AutoModelForCausalLM.FromPretrainedAsync(modelId, new ModelLoadOptions
{
    LoadIn8Bit = true,
    TorchDtype = TorchDtype.Float16,
    DeviceMap = "auto",
    DownloadProgress = new SampleModel.ConsoleDownloadProgress(),
});

var chat = RinnaChatPromptBuilder.ForModel(modelId, RinnaChatPromptBuilder.DetectFormat(modelId) ?? RinnaChatFormat.Bilingual);
foreach (var question in new[] { "日本のおすすめの観光地を教えてください。", "What is your favourite book?" })
{
    var prompt = chat.BuildPrompt([new RinnaChatTurn(RinnaSpeaker.User, question)]);
    using var tokenIds = tensor(tokenizer.Encode(prompt, addSpecialTokens: false).Select(i => (long)i).ToArray()).unsqueeze(0);
    var output = model.Generate(tokenIds, tokenizer: tokenizer, config: model.GenerationConfig() with
    {
        DoSample = true,
        MaxNewTokens = 128,
        Temperature = 0.7,
        RepetitionPenalty = 1.1,
        PadTokenId = tokenizer.PadTokenId,
        BosTokenId = tokenizer.BosTokenId,
        EosTokenId = tokenizer.EosTokenId is int eos ? [eos] : null,
        Seed = 42,
    });
    using var outputIds = output.Sequences;
    var newIds = outputIds[0].data<long>().ToArray()[(int)tokenIds.shape[1]..].Select(i => (int)i);
    Console.WriteLine($"\n{prompt}{chat.PostProcess(tokenizer.Decode(newIds))}");
}
