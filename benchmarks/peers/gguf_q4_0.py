#!/usr/bin/env python3
"""Q4_0 GGUF of a Hugging Face GPT-NeoX directory, for the 4-bit comparison with llama.cpp.

A measuring tool, not part of the library. ../shared/peers/hf_to_gguf_neox.py (which this repository may not edit)
writes f32/f16/bf16/q8_0; this adds ggml's Q4_0 to it and runs its converter unchanged otherwise. Every 2-D weight,
the output head included, becomes Q4_0, as `llama-quantize --pure Q4_0` does (llama-quantize's default would keep the
head in Q6_K; our `LoadIn4Bit` keeps it in float16, so this file streams fewer bytes per token than ours).

Q4_0 follows ggml's reference quantize_row_q4_0_ref: blocks of 32 along a row; the element of largest magnitude
(the first one on a tie) is `max`, d = max / -8, q = min(15, trunc(x / d + 8.5)); d is stored as float16 and element
j of the block sits in the low nibble of byte j, element j + 16 in its high nibble (18 bytes per block).

  /usr/bin/python3 benchmarks/peers/gguf_q4_0.py MODEL_DIR --outtype q4_0 --outfile model-q4_0.gguf
"""
import importlib.util
import os
import sys

import numpy as np

CONVERTER = os.environ.get("NEOX_CONVERTER") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "peers", "hf_to_gguf_neox.py")
GGML_Q4_0 = 2  # ggml_type
LLAMA_FTYPE_MOSTLY_Q4_0 = 2  # llama_ftype, general.file_type
QK4_0 = 32


def quant_q4_0(rows):
    """float32 [n, k] (k % 32 == 0) -> bytes of Q4_0 blocks (float16 d + 16 bytes of nibbles), row by row."""
    blocks = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, QK4_0)
    first_max = np.abs(blocks).argmax(axis=1)
    d = (blocks[np.arange(blocks.shape[0]), first_max] / np.float32(-8)).astype(np.float32)[:, None]
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    # C's (int8_t) cast truncates toward zero; x / d + 8.5 lies in [0.5, 16.5] here, so trunc is floor.
    q = np.minimum(15, np.trunc(blocks * inv + np.float32(8.5))).astype(np.uint8)
    out = np.empty((blocks.shape[0], 2 + QK4_0 // 2), dtype=np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8)
    out[:, 2:] = q[:, :QK4_0 // 2] | (q[:, QK4_0 // 2:] << 4)
    return out.tobytes()


def load_converter():
    if not os.path.isfile(CONVERTER):
        sys.exit(f"gguf_q4_0: the shared converter is missing: {CONVERTER} (set NEOX_CONVERTER)")
    spec = importlib.util.spec_from_file_location("hf_to_gguf_neox", CONVERTER)
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    return conv


def main():
    conv = load_converter()
    conv.FTYPE["q4_0"] = LLAMA_FTYPE_MOSTLY_Q4_0
    conv.OUT_GGML["q4_0"] = GGML_Q4_0
    nbytes_of, encode_rows = conv.nbytes_of, conv.encode_rows

    def nbytes_q4(ne, gtype):
        if gtype != GGML_Q4_0:
            return nbytes_of(ne, gtype)
        if ne[0] % QK4_0 != 0:
            sys.exit(f"gguf_q4_0: a row of {ne[0]} elements is not a whole number of Q4_0 blocks")
        return int(np.prod(ne)) // QK4_0 * (2 + QK4_0 // 2)

    def encode_q4(x32, gtype):
        return quant_q4_0(x32) if gtype == GGML_Q4_0 else encode_rows(x32, gtype)

    conv.nbytes_of, conv.encode_rows = nbytes_q4, encode_q4
    conv.main()


if __name__ == "__main__":
    main()
