#!/usr/bin/env bash
# This machine's table: each dtype or quantization against llama.cpp on the same weights, for decode, prefill-512,
# load time and peak memory, with the ratio and the decode roofline (read bandwidth / bytes a step reads).
#
#   bash benchmarks/machine-table.sh                       # rinna-4b (36 layers): Float16:f16 Int8:q8_0 Nf4:q4_0
#   SHAPE=pythia-160m ROUNDS=3 bash benchmarks/machine-table.sh
#   PAIRS="BFloat16:bf16 Float16:f16" bash benchmarks/machine-table.sh
#   ISA=avx2 bash benchmarks/machine-table.sh              # as on an AVX2 + FMA + F16C CPU (see peer-common.sh)
#
# PAIRS lists ours:theirs as in peer-ratio.sh. Each round measures our row (Rinna.Net.Benchmarks --machine-row: one
# process, load then prefill-512 and decode, medians of 3) and then llama.cpp's (llamabench, a decode run and a
# prefill-512 run, both without mmap so that load reads the file as ours does and the file's pages do not count in its
# peak memory); a cell is the median over ROUNDS (default 1). Both loads start from a warm page cache. Ours
# quantizes while loading (as transformers does); llama.cpp reads weights quantized beforehand. Full rinna-4b: about
# 5 minutes per pair and round, 7.6 GB of /tmp for the checkpoint and 2-4 GB per GGUF. Put the output in
# docs/performance.md (one table per ISA) and benchmarks/RESULTS.md. Run it on an otherwise idle machine.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/peer-common.sh"
PAIRS="${PAIRS:-Float16:f16 Int8:q8_0 Nf4:q4_0}"
SHAPE="${SHAPE:-rinna-4b}"
ROUNDS="${ROUNDS:-1}"
RAW="$WORK/machine-table-$SHAPE${ISA:+-$ISA}.txt"

peer_require machine-table
echo "# building the benchmarks and the llama.cpp peer" >&2
dotnet build -c Release "$ROOT/benchmarks/Rinna.Net.Benchmarks" >/dev/null
peer_build_llamabench
CHECKPOINT="$(peer_checkpoint "$SHAPE")"
for pair in $PAIRS; do peer_gguf "$SHAPE" "${pair#*:}" >/dev/null; done
LLAMA=(dotnet "$WORK/llamabench/out/llamabench.dll")

: > "$RAW"
echo "cpu $(peer_cpu)" >> "$RAW"
"${LLAMA[@]}" membw --mb 1024 --reps 5 | grep '^RESULT membw threads=2' | sed 's/^RESULT membw/membw/' >> "$RAW"
for round in $(seq 1 "$ROUNDS"); do
  for pair in $PAIRS; do
    ours="${pair%%:*}" type="${pair#*:}" gguf="$WORK/$SHAPE-${pair#*:}.gguf"
    echo "# round $round: $ours" >&2
    cat "$CHECKPOINT"/*.safetensors > /dev/null
    out="$(cd "$ROOT" && dotnet run -c Release --no-build --project benchmarks/Rinna.Net.Benchmarks -- --machine-row "$SHAPE" "$ours" 3 \
      2> "$WORK/machine-row.log")" || { tail -20 "$WORK/machine-row.log" >&2; exit 1; }
    line="$(grep '^RESULT' <<< "$out")" || { echo "$out" | tail -20 >&2; exit 1; }
    grep -q '^kernels ' "$RAW" || grep '^KERNELS' <<< "$out" | sed 's/^KERNELS/kernels/' >> "$RAW"
    echo "ours $ours $type ${line#RESULT }" >> "$RAW"
    echo "# round $round: llama.cpp $type" >&2
    cat "$gguf" > /dev/null
    "${LLAMA[@]}" bench --model "$gguf" --threads 2 --prefill 64 --decode 32 --reps 3 --no-mmap > "$WORK/llama-row.log" 2>&1 \
      || { tail -20 "$WORK/llama-row.log" >&2; exit 1; }
    decode="$(grep -h -E '^(# model=|load_s=|RESULT|peak_rss_MB=)' "$WORK/llama-row.log" | tr '\n' ' ')"
    "${LLAMA[@]}" bench --model "$gguf" --threads 2 --prefill 512 --decode 1 --reps 3 --no-mmap > "$WORK/llama-row.log" 2>&1 \
      || { tail -20 "$WORK/llama-row.log" >&2; exit 1; }
    prefill="$(grep -h '^RESULT' "$WORK/llama-row.log" | tr ' ' '\n' | sed -n 's/^prefill_tok_s_median=/prefill512_tok_s=/p')"
    # Ours loads, prefills 512 tokens and decodes in one process, so llama.cpp's peak is the larger of its two runs.
    prefill="$prefill $(grep -h '^peak_rss_MB=' "$WORK/llama-row.log" | sed 's/^/prefill512_/')"
    echo "theirs $ours $type $decode $prefill" >> "$RAW"
  done
done

$PY "$ROOT/benchmarks/peers/machine_table.py" "$RAW" "$CHECKPOINT/config.json" "$SHAPE"
