#!/usr/bin/env bash
# Runs Rinna.Net.DeviceCheck on a GPU machine that has a Python PyTorch install but no .NET and no network, using that
# install's LibTorch (CUDA) underneath TorchSharp, then times transformers on the same random checkpoint.
#
# Here (with .NET):
#   dotnet publish tests/Rinna.Net.DeviceCheck -c Release -r linux-x64 --self-contained -p:UseHostLibTorch=true -o APP
#   tar -C APP -cJf app.tar.xz .      (and copy tests/fixtures/models beside it)
# There:
#   bash tests/Rinna.Net.DeviceCheck/run-on-pytorch-host.sh app.tar.xz FIXTURES_DIR OUT_DIR
set -uo pipefail
archive=$1 fixtures=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
app=$(mktemp -d) checkpoint=$(mktemp -d)
trap 'rm -rf "$app" "$checkpoint"' EXIT
mkdir -p "$out"

torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || exit 1
python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# The random 3.8B checkpoint is written while the fixture checks run.
python3 "$here/hf_reference.py" make "$checkpoint" > "$out/make.log" 2>&1 &
maker=$!

tar -C "$app" -xJf "$archive" || exit 1
# TorchSharp's bridge was built against LibTorch 2.10; list what it needs that this LibTorch lacks.
if command -v nm > /dev/null; then
  nm -D --undefined-only "$app/libLibTorchSharp.so" | awk '$1 == "U" && $2 !~ /@/ { print $2 }' | sort -u > "$out/needed.txt"
  nm -D --defined-only "$torch_lib"/libtorch*.so "$torch_lib"/libc10*.so 2> /dev/null | awk 'NF == 3 { print $3 }' | sort -u > "$out/defined.txt"
  comm -23 "$out/needed.txt" "$out/defined.txt" > "$out/missing-symbols.txt"
  echo "LibTorchSharp needs $(wc -l < "$out/needed.txt") libtorch symbols; missing here: $(wc -l < "$out/missing-symbols.txt")"
  c++filt < "$out/missing-symbols.txt" | head -20
  rm -f "$out/needed.txt" "$out/defined.txt"
fi

export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$app/Rinna.Net.DeviceCheck" --fixtures "$fixtures" --device cuda:0 2>&1 | tee "$out/devicecheck.log"
status=${PIPESTATUS[0]}

wait $maker || { echo "checkpoint generation failed:"; tail -20 "$out/make.log"; exit 1; }

"$app/Rinna.Net.DeviceCheck" --fixtures "$fixtures" --device cuda:0 --bench "$checkpoint" --out "$out" 2>&1 | grep -E "bench|FAIL|Exception" | tee "$out/bench.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
python3 "$here/hf_reference.py" time "$checkpoint" "$out" 2>&1 | grep -v -i warn | tee "$out/hf.log"

exit $status
