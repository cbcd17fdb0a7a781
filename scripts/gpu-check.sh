#!/usr/bin/env bash
# GPU check on a lent CUDA machine that has PyTorch 2.11 (cu130) but no Rust:
# runs a runner binary built here against that machine's LibTorch.
#   here:  cargo build -p runner && objcopy --strip-debug target/debug/runner target/gpu/runner
#          cp ~/.cache/brain-rs/data/*.{gz,whl} target/gpu/data/   (optional: the text pipeline)
#   there: bash scripts/gpu-check.sh target/gpu/runner "$OUT"
set -euo pipefail
BIN=${1:-target/gpu/runner}
OUT=${2:-${OUT:-/tmp/gpu-check}}
PY=${TORCH_PYTHON:-/opt/torch/.venv/bin/python3}
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi -L || true
"$BIN" list
for dev in cuda cpu; do
  echo "== experiments/exact.toml on $dev"
  TIMEFORMAT="wall seconds on $dev: %R"
  time "$BIN" --quiet experiments/exact.toml --set device=$dev --out "$OUT/exact-$dev"
done

if [ -d target/gpu/data ]; then
  echo "== experiments/tiny-sentiment.toml (text pipeline, tiny Llama) on cuda"
  TIMEFORMAT="wall seconds: %R"
  time BRAIN_RS_DATA=target/gpu/data "$BIN" --quiet experiments/tiny-sentiment.toml --set device=cuda --out "$OUT/tiny-sentiment-cuda"
fi
