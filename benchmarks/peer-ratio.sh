#!/usr/bin/env bash
# Speed against llama.cpp on the same weights, as ratios of runs taken back to back.
#
# This VM's memory bandwidth drifts by 15-30 % within an hour (neighbours on the host), so a ratio between a run of ours
# and a llama.cpp run taken at another time says little. This script alternates the two, round after round, and prints
# one ratio per round: each pair of numbers was measured minutes apart on the same weights.
#
#   bash benchmarks/peer-ratio.sh [rounds]            # default 3 rounds
#   PHASE=prefill bash benchmarks/peer-ratio.sh 2      # prefill-512 instead of decode
#   PAIRS="BFloat16:f16 Int8:q8_0" bash benchmarks/peer-ratio.sh
#   FINE=8 bash benchmarks/peer-ratio.sh               # decode: each pair 8 times, alternating every ~30 s (see below)
#
# PAIRS lists ours:theirs, a benchmark dtype (BenchmarkCheckpoints.Options) against a GGUF type of the same checkpoint
# (default: Float16:f16 Int8:q8_0; Int8All:q8_0 quantizes the head as Q8_0 does; Nf4:q4_0 is the 4-bit pair, its GGUF
# written by peers/gguf_q4_0.py, Q4_0 head included, as `llama-quantize --pure`; Nf4All:q4_0 quantizes our head too, and
# Nf4AllDq:q4_0 adds double quantization, 4.13 bits a weight against Q4_0's 4.5; Nf4:q4_0-default is against the file
# `llama-quantize` writes by default, its head in Q6_K, made from the f16 GGUF by peers/llamaquantize).
# SHAPE is one of the benchmark shapes (default rinna-4b, the full 36-layer model: its checkpoint takes 7.6 GB of /tmp and
# each GGUF as much again; one decode round of two pairs takes about 6 minutes).
# FINE=N (decode only) loads our model once (Rinna.Net.Benchmarks --serve-decode, the same DecodeToken code as the
# benchmark, timed by a plain stopwatch; it first decodes for 20 s, so that pairs compare steady states) and alternates one 32-token decode of ours with one llama.cpp run (3 x 32 tokens),
# N times per pair, printing every ratio and their median: pairs 30 s apart follow the drift far better than rounds.
# llama.cpp is measured with ../shared/peers (LLamaSharp's build, converted with its own converter): a measuring tool,
# not a dependency of the library. Needs Debian's python3-numpy for the converter. Run it on an idle machine.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/peer-common.sh"
ROUNDS="${1:-3}"
PHASE="${PHASE:-decode}"
PAIRS="${PAIRS:-Float16:f16 Int8:q8_0}"
SHAPE="${SHAPE:-rinna-4b}"

peer_require peer-ratio
case "$PHASE" in
  decode) OURS_METHOD=DecodeToken; PEER_ARGS=(--prefill 64 --decode 32); PEER_FIELD=decode_tok_s_median ;;
  prefill) OURS_METHOD=PrefillToken512; PEER_ARGS=(--prefill 512 --decode 1); PEER_FIELD=prefill_tok_s_median ;;
  *) echo "peer-ratio: PHASE must be decode or prefill, not '$PHASE'" >&2; exit 2 ;;
esac

echo "# building the benchmarks and the llama.cpp peer"
dotnet build -c Release "$ROOT/benchmarks/Rinna.Net.Benchmarks" >/dev/null
peer_build_llamabench

ours() { # ours DTYPE -> tokens/s of OURS_METHOD on SHAPE from BenchmarkDotNet's CSV
  local artifacts="$WORK/bdn-$1"
  rm -rf "$artifacts"
  (cd "$ROOT" && RINNA_BENCH_SHAPES="$SHAPE" RINNA_BENCH_DTYPES="$1" dotnet run -c Release --no-build \
    --project benchmarks/Rinna.Net.Benchmarks -- --filter "*GenerationBenchmarks.$OURS_METHOD*" --artifacts "$artifacts" \
    > "$artifacts.log" 2>&1) || { tail -20 "$artifacts.log" >&2; return 1; }
  $PY - "$artifacts" <<'EOF'
import csv, glob, sys
rows = [r for f in glob.glob(sys.argv[1] + "/results/*-report.csv") for r in csv.DictReader(open(f, encoding="utf-8"))]
if len(rows) != 1: sys.exit(f"expected one benchmark row, found {len(rows)}")
print(rows[0]["Tokens/s"])
EOF
}

theirs() { # theirs GGUF_TYPE -> median tokens/s of llama.cpp on the same checkpoint
  local gguf="$WORK/$SHAPE-$1.gguf" log="$WORK/llama-$1.log"
  dotnet "$WORK/llamabench/out/llamabench.dll" bench --model "$gguf" --threads 2 "${PEER_ARGS[@]}" --reps 3 > "$log" 2>&1 \
    || { tail -20 "$log" >&2; return 1; }
  grep '^RESULT' "$log" | tr ' ' '\n' | sed -n "s/^$PEER_FIELD=//p"
}

CHECKPOINT="$(peer_checkpoint "$SHAPE")"
for pair in $PAIRS; do peer_gguf "$SHAPE" "${pair#*:}" >/dev/null; done

evict() { # evict FILE...: drop files from the page cache, so that llama.cpp's mmap of its GGUF does not compete with them
  $PY -c "
import os, sys
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)" "$@"
}

fine() { # fine DTYPE GGUF_TYPE: FINE alternations of one decode of ours (model loaded once) and one llama.cpp run
  local dtype=$1 type=$2 line ours_rate theirs_rate ratios=()
  coproc OURS { cd "$ROOT" && exec dotnet run -c Release --no-build --project benchmarks/Rinna.Net.Benchmarks -- \
    --serve-decode "$SHAPE" "$dtype" 2> "$WORK/serve-$dtype.log"; }
  while read -r line <&"${OURS[0]}"; do [ "$line" = READY ] && break; done
  [ "$line" = READY ] || { tail -20 "$WORK/serve-$dtype.log" >&2; return 1; }
  # Our weights are in memory now; the checkpoint's cached pages would only push llama.cpp's GGUF out.
  evict "$CHECKPOINT"/*.safetensors $(ls "$WORK/$SHAPE"-*.gguf | grep -v -- "-$type.gguf")
  for i in $(seq 1 "$FINE"); do
    echo go >&"${OURS[1]}"
    read -r ours_rate <&"${OURS[0]}"
    theirs_rate="$(theirs "$type")"
    ratios+=("$($PY -c "print(f'{float(\"$ours_rate\") / float(\"$theirs_rate\"):.3f}')")")
    printf '%-6s %-9s %-10s %-8s %10s %10s %7s\n' "$i" "$(date -u +%H:%M:%S)" "$dtype" "$type" "$ours_rate" "$theirs_rate" "${ratios[-1]}"
  done
  exec {OURS[1]}>&-
  wait "$OURS_PID" || true
  echo "# $dtype vs $type: median ratio $($PY -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "${ratios[@]}") of ${#ratios[@]}"
}

echo "# $PHASE tokens/s on $SHAPE, 2 threads; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${FINE:-}" ]; then
  [ "$PHASE" = decode ] || { echo "peer-ratio: FINE measures decode only" >&2; exit 2; }
  printf '%-6s %-9s %-10s %-8s %10s %10s %7s\n' pair utc ours theirs ours_tok/s llama_tok/s ratio
  for pair in $PAIRS; do fine "${pair%%:*}" "${pair#*:}"; done
  echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  exit 0
fi
printf '%-6s %-6s %-10s %-8s %10s %10s %7s\n' round utc ours theirs ours_tok/s llama_tok/s ratio
for round in $(seq 1 "$ROUNDS"); do
  for pair in $PAIRS; do
    dtype="${pair%%:*}" type="${pair#*:}"
    theirs_rate="$(theirs "$type")"
    ours_rate="$(ours "$dtype")"
    ratio="$($PY -c "print(f'{float(\"$ours_rate\") / float(\"$theirs_rate\"):.2f}')")"
    printf '%-6s %-6s %-10s %-8s %10s %10s %7s\n' "$round" "$(date -u +%H:%M)" "$dtype" "$type" "$ours_rate" "$theirs_rate" "$ratio"
  done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
