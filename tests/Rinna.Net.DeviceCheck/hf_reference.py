"""Hugging Face transformers' side of the GPU check (run-on-pytorch-host.sh).

  python3 hf_reference.py make DIR        writes a random rinna/bilingual-gpt-neox-4b-shaped float16 checkpoint
  python3 hf_reference.py time DIR OUT    times transformers on it like Rinna.Net.DeviceCheck's Timing, and compares
                                          its last-position logits with the ours-*.f32 files DeviceCheck wrote to OUT
"""
import json
import os
import statistics
import sys
import time

import torch

# rinna/bilingual-gpt-neox-4b: sequential residual, full rotary, 65,536-token vocabulary (as benchmarks/ModelShapes.cs).
CONFIG = {
    "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": 65536, "hidden_size": 2816,
    "num_hidden_layers": 36, "num_attention_heads": 22, "intermediate_size": 11264, "hidden_act": "gelu",
    "rotary_pct": 1.0, "rotary_emb_base": 10000, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
    "use_parallel_residual": False, "tie_word_embeddings": False, "bos_token_id": 2, "eos_token_id": 3,
    "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float16",
}
CONTEXT, DECODE_STEPS, PREFILL, REPETITIONS = 64, 64, 512, 3


def make(directory):
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    gen = torch.Generator(device="cuda").manual_seed(7)

    def randn(*shape):
        return (torch.randn(*shape, generator=gen, device="cuda") * 0.02).half().cpu()

    tensors = {"gpt_neox.embed_in.weight": randn(v, h), "embed_out.weight": randn(v, h),
               "gpt_neox.final_layer_norm.weight": torch.ones(h).half(), "gpt_neox.final_layer_norm.bias": torch.zeros(h).half()}
    for n in range(CONFIG["num_hidden_layers"]):
        p = f"gpt_neox.layers.{n}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[p + norm + ".weight"] = torch.ones(h).half()
            tensors[p + norm + ".bias"] = torch.zeros(h).half()
        for name, (rows, cols) in {"attention.query_key_value": (3 * h, h), "attention.dense": (h, h),
                                   "mlp.dense_h_to_4h": (i, h), "mlp.dense_4h_to_h": (h, i)}.items():
            tensors[p + name + ".weight"] = randn(rows, cols)
            tensors[p + name + ".bias"] = randn(rows)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)


def prompt(n):
    return torch.tensor([[4 + i * 7919 % (CONFIG["vocab_size"] - 4) for i in range(n)]], device="cuda")


def median(run):
    run()
    return statistics.median(run() for _ in range(REPETITIONS))


@torch.inference_mode()
def timing(directory, out, dtype_name):
    from transformers import AutoModelForCausalLM
    dtype = getattr(torch, dtype_name)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, device_map="cuda:0")
    load = time.perf_counter() - start
    context, prefill = prompt(CONTEXT), prompt(PREFILL)
    logits = model(context).logits[0, -1].float().cpu()
    ours = os.path.join(out, f"ours-{dtype_name}.f32")
    if os.path.exists(ours):
        mine = torch.frombuffer(bytearray(open(ours, "rb").read()), dtype=torch.float32)
        rel = ((mine - logits).norm() / logits.norm()).item()
        print(f"HF {dtype_name}: Rinna.Net's last-position logits vs transformers' relative L2 {rel:.2e}, "
              f"argmax {int(mine.argmax())} vs {int(logits.argmax())}")
    if dtype_name == "float16":
        int8 = os.path.join(out, "ours-int8.f32")
        if os.path.exists(int8):
            mine = torch.frombuffer(bytearray(open(int8, "rb").read()), dtype=torch.float32)
            print(f"HF float16 vs Rinna.Net int8: relative L2 {((mine - logits).norm() / logits.norm()).item():.2e}")

    def prefill_once():
        t = time.perf_counter()
        model(prefill, logits_to_keep=1).logits.cpu()
        return time.perf_counter() - t

    def decode_once():
        output = model(context, use_cache=True, logits_to_keep=1)
        cache, token = output.past_key_values, output.logits[0, -1].argmax()
        t = time.perf_counter()
        for _ in range(DECODE_STEPS):
            output = model(token.view(1, 1), past_key_values=cache, use_cache=True)
            cache, token = output.past_key_values, output.logits[0, -1].argmax()
            token.item()
        return time.perf_counter() - t

    p, d = median(prefill_once), median(decode_once)
    print(f"HF {dtype_name} on cuda:0: load {load:.1f} s, prefill-{PREFILL} {PREFILL / p:.0f} tok/s, decode {DECODE_STEPS / d:.1f} tok/s "
          f"({d / DECODE_STEPS * 1000:.2f} ms/token; medians of {REPETITIONS} after a warm-up)", flush=True)
    del model
    torch.cuda.empty_cache()


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        import transformers
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
        for name in ("float16", "bfloat16"):
            timing(sys.argv[2], sys.argv[3], name)
