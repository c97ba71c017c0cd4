#!/usr/bin/env bash
# Continuous batching against llama.cpp's batched decoding on the same weights: aggregate greedy tokens/s of 8 streams
# and of 1, ours (ContinuousBatchingBenchmarks) between two runs of llama.cpp (benchmarks/peers/llamabatch, llama_decode
# over 8 sequences per batch as LLamaSharp's BatchedExecutor runs it), same prompts' lengths and 32 new tokens each.
#
#   bash benchmarks/batch-peer.sh                         # rinna-4b-L4: Float16 vs F16, Int8 vs Q8_0
#   SHAPE=pythia-160m PAIRS="Float16:f16" bash benchmarks/batch-peer.sh
#
# Needs ../shared/peers beside the repository (the GGUF converter) and Debian's python3-numpy; llamabatch restores
# LLamaSharp 0.30 from NuGet. A measuring tool, not a dependency of the library. Run it on an otherwise idle machine.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/peer-common.sh"
PAIRS="${PAIRS:-Float16:f16 Int8:q8_0}"
SHAPE="${SHAPE:-rinna-4b-L4}"

peer_require batch-peer
echo "# $(peer_cpu)"
echo "# building the benchmarks and llamabatch"
dotnet build -c Release "$ROOT/benchmarks/Rinna.Net.Benchmarks" >/dev/null
dotnet build -c Release "$ROOT/benchmarks/peers/llamabatch/llamabatch.csproj" -o "$WORK/llamabatch" >/dev/null

theirs() { # theirs GGUF_TYPE
  dotnet "$WORK/llamabatch/llamabatch.dll" --model "$WORK/$SHAPE-$1.gguf" --threads 2 --streams 1,8 --reps 5 | grep -E '^(RESULT|RATIO)' | sed "s/^/llama.cpp $1 /"
}

for pair in $PAIRS; do
  ours="${pair%%:*}" type="${pair#*:}"
  peer_gguf "$SHAPE" "$type" >/dev/null
  theirs "$type"
  (cd "$ROOT" && RINNA_BENCH_SHAPES="$SHAPE" RINNA_BENCH_DTYPES="$ours" dotnet run -c Release --no-build \
    --project benchmarks/Rinna.Net.Benchmarks -- --short --filter '*ContinuousBatching*' --artifacts "$WORK/bdn-batch-$ours" \
    > "$WORK/bdn-batch-$ours.log" 2>&1) || { tail -20 "$WORK/bdn-batch-$ours.log" >&2; exit 1; }
  grep -E '^\| (OneStream|EightStreams)' "$WORK/bdn-batch-$ours.log" | sed "s/^/ours $ours /"
  grep -h 'per-token latency' "$WORK/bdn-batch-$ours.log" | sort -u | sed "s/^/ours $ours /"
  theirs "$type"
done
