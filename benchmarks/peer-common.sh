# Sourced by the scripts that measure us against llama.cpp (peer-ratio.sh, batch-peer.sh, machine-table.sh): where the
# peer tools and the generated weights live, and how each side's weights are made. Not run on its own.
#
# Needs ../shared/peers beside the repository (the GGUF converter and the llamabench console) and Debian's
# python3-numpy (/usr/bin/python3). llama.cpp comes from LLamaSharp's NuGet packages: a measuring tool, never a
# dependency of the library.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/../shared/peers"
WORK="${PEER_WORK:-${TMPDIR:-/tmp}/rinna-net-peer}"
PY=/usr/bin/python3

# ISA=avx2 measures both sides as on a CPU with AVX2, FMA and F16C but no AVX-512 or VNNI (the CI machine's kind): each
# runtime is told to stop at AVX2. .NET's intrinsics then report AVX-512 and AVX-VNNI absent, so our kernels take their
# AVX2/Vector256 paths and LLamaSharp, which asks .NET, loads its avx2 build of llama.cpp; libtorch's kernels, MKL
# (float prompts) and oneDNN (bfloat16 and int8 GEMMs) are capped by their own switches. Capped, oneDNN's int8 GEMM
# saturates as it does on a real CPU without VNNI, and the library then keeps int8 products off it (docs/quantization.md).
# Same cores and memory, so it shows the kernels, not another chip.
case "${ISA:-native}" in
  native) ;;
  avx2) export DOTNET_EnableAVX512=0 DOTNET_EnableAVXVNNI=0 DOTNET_EnableAVX10v1=0 DOTNET_EnableAVX10v2=0 \
      ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  *) echo "ISA must be native or avx2, not '$ISA'" >&2; exit 2 ;;
esac

peer_require() { # peer_require SCRIPT_NAME: fail early when the shared peer tools are not beside the repository
  [ -d "$PEERS" ] || { echo "$1: $PEERS is missing (the shared peer benchmark must sit next to the repository)" >&2; exit 1; }
  mkdir -p "$WORK"
}

peer_cpu() { # one line naming the CPU and its load, for every printed figure
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, flags:$(grep -m1 '^flags' /proc/cpuinfo \
    | tr ' ' '\n' | grep -E '^(avx2|f16c|fma|avx512f|avx512_vnni|avx512_bf16|avx_vnni|asimd|asimddp)$' | tr '\n' ' ' | sed 's/ $//;s/^/ /')${ISA:+, limited to $ISA in every runtime (ISA=$ISA)}, load $(cut -d' ' -f1-3 /proc/loadavg)"
}

peer_build_llamabench() { # builds ../shared/peers/llamabench into $WORK/llamabench/out
  mkdir -p "$WORK/llamabench"
  cp "$PEERS/llamabench/Program.cs" "$PEERS/llamabench/llamabench.csproj" "$WORK/llamabench/"
  dotnet build -c Release "$WORK/llamabench/llamabench.csproj" -o "$WORK/llamabench/out" >/dev/null
}

peer_checkpoint() { # peer_checkpoint SHAPE: prints the directory of the random checkpoint the benchmarks generate
  local dir="${TMPDIR:-/tmp}/rinna-net-bench/$1"
  if [ ! -f "$dir/.complete" ]; then
    # A run that measures nothing writes it (BenchmarkCheckpoints.Ensure).
    (cd "$ROOT" && RINNA_BENCH_SHAPES="$1" dotnet run -c Release --no-build --project benchmarks/Rinna.Net.Benchmarks -- \
      --filter '*NoSuchBenchmark*' --artifacts "$WORK/bdn-none" > "$WORK/checkpoint.log" 2>&1) || true
    [ -f "$dir/.complete" ] || { echo "no benchmark checkpoint at $dir (see $WORK/checkpoint.log)" >&2; exit 1; }
  fi
  echo "$dir"
}

peer_gguf() { # peer_gguf SHAPE TYPE: prints the GGUF of SHAPE's checkpoint in TYPE (f16, bf16, q8_0, q4_0, q4_0-default), converting once
  local gguf="$WORK/$1-$2.gguf" converter="$PEERS/hf_to_gguf_neox.py" checkpoint source
  if [ ! -f "$gguf" ] && [ "$2" = q4_0-default ]; then
    # llama-quantize's own mix from the F16 file: Q4_0 with the head in Q6_K, what llama.cpp users run as "Q4_0".
    source="$(peer_gguf "$1" f16)"
    dotnet build -c Release "$ROOT/benchmarks/peers/llamaquantize/llamaquantize.csproj" -o "$WORK/llamaquantize" >/dev/null
    echo "# quantizing $source to Q4_0 with llama.cpp's quantizer" >&2
    dotnet "$WORK/llamaquantize/llamaquantize.dll" "$source" "$gguf.tmp" q4_0 --threads "$(nproc)" >&2
    mv "$gguf.tmp" "$gguf"
  fi
  if [ ! -f "$gguf" ]; then
    checkpoint="$(peer_checkpoint "$1")"
    [ "$2" = q4_0 ] && converter="$ROOT/benchmarks/peers/gguf_q4_0.py" # the shared converter has no Q4_0
    echo "# converting $checkpoint to $2" >&2
    $PY "$converter" "$checkpoint" --outtype "$2" --outfile "$gguf.tmp" >/dev/null
    mv "$gguf.tmp" "$gguf"
  fi
  echo "$gguf"
}
