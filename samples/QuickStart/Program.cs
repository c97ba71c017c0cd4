// rinna's model card, in C# and in the same shape: tokenizer → ids → generate → decode. The Python it mirrors:
//   tokenizer = AutoTokenizer.from_pretrained(model_id, use_fast=False)
//   model = AutoModelForCausalLM.from_pretrained(model_id, load_in_8bit=True, torch_dtype=torch.float16, device_map="auto")
//   token_ids = tokenizer.encode(prompt, add_special_tokens=False, return_tensors="pt")
//   output_ids = model.generate(token_ids.to(model.device), do_sample=True, max_new_tokens=128, temperature=0.7,
//                               repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id,
//                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
//   output = tokenizer.decode(output_ids.tolist()[0][token_ids.size(1):], skip_special_tokens=True)
//   output = output.replace("<NL>", "\n")  # the japanese-gpt-neox-3.6b models write newlines as <NL>
// Run: dotnet run --project samples/QuickStart [-- --model rinna/bilingual-gpt-neox-4b-instruction-ppo]
using Rinna.Net;
using Rinna.Net.Generation;
using Rinna.Net.Samples;
using Rinna.Net.Tokenization;

var arguments = SampleArguments.Parse(args, """
    usage: QuickStart [--model ID|DIR]
      --model   a Hugging Face model id or a local model directory (default: the demo model in samples/models)
    """, optionNames: ["--model"]);
var modelId = SampleModel.Resolve(arguments);
Console.WriteLine($"model: {modelId}");

var tokenizer = await AutoTokenizer.FromPretrainedAsync(modelId, new TokenizerOptions { UseFast = false });
using var model = await AutoModelForCausalLM.FromPretrainedAsync(modelId, new ModelLoadOptions
{
    LoadIn8Bit = true,
    TorchDtype = TorchDtype.Float16,
    DeviceMap = "auto",
    DownloadProgress = new SampleModel.ConsoleDownloadProgress(),
});

var chat = RinnaChatPromptBuilder.ForModel(modelId);
foreach (var question in new[] { "日本のおすすめの観光地を教えてください。", "What is your favourite book?" })
{
    var prompt = chat.BuildPrompt([new RinnaChatTurn(RinnaSpeaker.User, question)]);
    var tokenIds = tokenizer.Encode(prompt, addSpecialTokens: false);
    var outputIds = model.Generate(tokenIds, model.GenerationConfig() with
    {
        DoSample = true,
        MaxNewTokens = 128,
        Temperature = 0.7,
        RepetitionPenalty = 1.1,
        PadTokenId = tokenizer.PadTokenId,
        BosTokenId = tokenizer.BosTokenId,
        EosTokenId = tokenizer.EosTokenId is int eos ? [eos] : null,
        Seed = 42, // the same answers on every run
    });
    var output = tokenizer.Decode(outputIds[tokenIds.Length..], skipSpecialTokens: true);
    Console.WriteLine($"\n{prompt}{chat.PostProcess(output)}");
}
