// llamaquantize: what `llama-quantize SOURCE.gguf TARGET.gguf TYPE` writes, through LLamaSharp's binding of
// llama_model_quantize with llama.cpp's default settings. The point is its default tensor mix: for Q4_0 it writes the
// output head as Q6_K (the file llama.cpp users get), where peers/gguf_q4_0.py writes it as Q4_0 (`--pure`).
//
//   llamaquantize SOURCE.gguf TARGET.gguf q4_0 [--threads 2]
using System;
using System.Globalization;
using LLama;
using LLama.Native;

if (args.Length is not (3 or 5) || (args.Length == 5 && args[3] != "--threads"))
{
    Console.Error.WriteLine("usage: llamaquantize SOURCE.gguf TARGET.gguf TYPE [--threads N]   (TYPE as llama-quantize spells it, e.g. q4_0)");
    return 2;
}
int threads = args.Length == 5 ? int.Parse(args[4], CultureInfo.InvariantCulture) : Environment.ProcessorCount;
NativeLibraryConfig.All.WithLogCallback((level, message) =>
{
    if (level == LLamaLogLevel.Error) Console.Error.Write(message);
});
// Loads LLamaSharp's build of llama.cpp for this CPU; the quantizer's own imports would not look for it.
NativeApi.llama_empty_call();
// quantizeOutputTensor: llama-quantize's default (llama_model_quantize_default_params); LLamaSharp's default is false,
// which would leave the head in the source's float16.
bool done = LLamaQuantizer.Quantize(args[0], args[1], args[2], threads, allowRequantize: false, quantizeOutputTensor: true);
if (!done)
{
    Console.Error.WriteLine($"llamaquantize: llama.cpp could not quantize {args[0]} to {args[2]}");
    return 1;
}
return 0;
