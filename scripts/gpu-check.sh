#!/usr/bin/env bash
# Every GPU check in one call, for a lent CUDA machine that has PyTorch 2.11
# (cu130) but no Rust and no network; well under 10 minutes on an H100/H200.
# It also runs here with `--device cpu` (shapes cut, same code paths), so the
# script is known to work before it meets a GPU.
#
#   here:  cargo build -p runner --features nccl && mkdir -p target/gpu &&
#          objcopy --strip-debug target/debug/runner target/gpu/runner
#          bash scripts/gpu-check.sh --device cpu target/gpu/runner /tmp/gpu-check
#   there: bash scripts/gpu-check.sh target/gpu/runner "$OUT"      (carry target/gpu)
#
# What it measures, each side by side with PyTorch/transformers on the same
# machine, on random-initialised SmolLM2-135M-shaped and Llama-3.2-1B-shaped
# models (benches/peer/random_model.py writes them there: nothing large
# travels), bf16 weights and activations on CUDA (f32 here):
#   - sampling tokens/s, batch 16 × 64 new tokens, against `generate`;
#   - the training step (BRAIn's loss, forward + backward + Adam with f32
#     moments and f32 master weights), tokens/s, model FLOP utilisation
#     against the GPU's dense bf16 peak (PEAK_TFLOPS, default 989 for an
#     H100/H200 SXM) and against the bf16 GEMM rate measured there;
#   - peak GPU memory of each process (nvidia-smi, sampled every 100 ms, the
#     same way for both sides);
#   - the 1B step again with gradient checkpointing (its peak GPU memory);
#   - NCCL (`runner nccl-check`, world size 1): exact bf16 and f32 sums of
#     CUDA tensors, the training loop's bf16 gradient sum through it (exact),
#     and a timed 256 MiB bf16 all-reduce, through the wheel's libnccl; then
#     the 1B step with BRAIN_NCCL=on, its gradients summed through NCCL (the
#     `gradient_sum` phase). On the CPU: only that NCCL loads.
#   - experiments/exact.toml on the device (the whole pipeline, toy task).
# Every figure is a JSON line in $OUT/gpu-check.jsonl; the summary table is
# printed at the end and written to $OUT/summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
if [[ ${1:-} == --device ]]; then
  DEVICE=$2
  shift 2
fi
BIN=${1:-target/gpu/runner}
OUT=${2:-${OUT:-/tmp/gpu-check}}
PY=${TORCH_PYTHON:-/opt/torch/.venv/bin/python3}
[[ -x $PY ]] || PY=${BRAIN_RS_TORCH_VENV:-$HOME/.cache/brain-rs/torch-2.11.0}/bin/python
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$OUT"
LOG=$OUT/gpu-check.jsonl
: >"$LOG"
START=$SECONDS

if [[ $DEVICE == cuda ]]; then
  DTYPE=bf16 BATCH=16 NEW=64 REPEATS=3 ROUNDS=2
  PROMPT=448 COMPLETION=64 ITERS=3 GEMM=4096,8192
  declare -A CUT=([smollm2-135m]="" [llama-1b]="")
else
  # The CPU try-out: same code paths, shapes small enough for 2 cores.
  DTYPE=f32 BATCH=4 NEW=8 REPEATS=1 ROUNDS=1
  PROMPT=24 COMPLETION=8 ITERS=1 GEMM=512
  declare -A CUT=([smollm2-135m]="--layers 2" [llama-1b]="--layers 1 --vocab 8192")
fi
THREADS=$(nproc)

echo "== machine"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: $DEVICE run"
"$PY" - <<'EOF' | tee -a "$LOG"
import json, platform, torch
try:
    import transformers; tf = transformers.__version__
except Exception as e:
    tf = f"missing ({type(e).__name__})"
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(json.dumps({"bench": "machine", "torch": torch.__version__, "transformers": tf,
                  "cuda": torch.version.cuda, "gpu": gpu, "python": platform.python_version()}))
EOF
"$BIN" list >/dev/null || { echo "FAILED: $BIN does not start (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"; exit 1; }

# Peak memory.used of the GPU while a command runs, minus what was in use
# before it (MiB), appended to that command's JSON line as `peak_gpu_mib`.
with_gpu_peak() {
  if [[ $DEVICE != cuda ]] || ! command -v nvidia-smi >/dev/null; then
    "$@"
    return
  fi
  local base samples pid out rc
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  samples=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$samples" &
  pid=$!
  out=$("$@")
  rc=$?
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  local peak
  peak=$(sort -n "$samples" | tail -1)
  rm -f "$samples"
  echo "$out" | "$PY" -c '
import json, sys
base, peak = float(sys.argv[1]), float(sys.argv[2] or 0)
for line in sys.stdin:
    if line.startswith("{"):
        r = json.loads(line); r["peak_gpu_mib"] = peak - base; print(json.dumps(r))
    else:
        print(line, end="")' "$base" "${peak:-0}"
  return $rc
}

# Runs one measurement: its JSON lines go to the log (tagged with the model
# and side), its stderr to $OUT/NAME.err; a failure is reported, not fatal.
measure() {
  local name=$1 model=$2 side=$3
  shift 3
  local out
  if out=$(with_gpu_peak "$@" 2>"$OUT/$name.err"); then
    echo "$out" | grep '^{' | "$PY" -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line); r.update(shape=sys.argv[1], side=sys.argv[2]); print(json.dumps(r))' "$model" "$side" | tee -a "$LOG" | cut -c1-160
  else
    echo "FAILED: $name (see $OUT/$name.err):"
    tail -5 "$OUT/$name.err"
  fi
}

for shape in smollm2-135m llama-1b; do
  dir=$OUT/models/$shape
  echo "== $shape: random weights ($DTYPE) in $dir"
  # shellcheck disable=SC2086  # CUT holds options
  "$PY" benches/peer/random_model.py --shape "$shape" --dtype "$DTYPE" \
    --device "$DEVICE" --out "$dir" ${CUT[$shape]} | tee -a "$LOG" || continue

  echo "== $shape: sampling, batch $BATCH × $NEW new tokens"
  for round in $(seq "$ROUNDS"); do
    measure "sample-ours-$shape-$round" "$shape" brain-rs \
      "$BIN" bench --model "$dir" --device "$DEVICE" --dtype "$DTYPE" --threads "$THREADS" \
      --batch "$BATCH" --new-tokens "$NEW" --repeats "$REPEATS"
    measure "sample-peer-$shape-$round" "$shape" transformers \
      "$PY" benches/hf_generate.py --model-dir "$dir" --device "$DEVICE" --dtype "$DTYPE" \
      --threads "$THREADS" --batch "$BATCH" --new-tokens "$NEW" --repeats "$REPEATS"
  done

  echo "== $shape: training step, 32 rows × ($PROMPT + $COMPLETION) tokens"
  for round in $(seq "$ROUNDS"); do
    measure "step-ours-$shape-$round" "$shape" brain-rs \
      "$BIN" bench-step scripts/gpu-check/step.toml --set model.hf.path="$dir" \
      --set device="$DEVICE" --set model.hf.dtype="$DTYPE" --threads "$THREADS" \
      --prompt-tokens "$PROMPT" --completion-tokens "$COMPLETION" --iterations "$ITERS" \
      --gemm-sizes "$GEMM"
    measure "step-peer-$shape-$round" "$shape" pytorch \
      "$PY" benches/peer/step.py --model-dir "$dir" --device "$DEVICE" --dtype "$DTYPE" \
      --threads "$THREADS" --prompts 8 --n 4 --prompt-tokens "$PROMPT" \
      --completion-tokens "$COMPLETION" --iterations "$ITERS" --gemm-sizes "$GEMM"
  done
  if [[ $shape == llama-1b ]]; then
    echo "== $shape: the same step with gradient checkpointing"
    measure "step-ours-$shape-checkpointing" "$shape-checkpointing" brain-rs \
      "$BIN" bench-step scripts/gpu-check/step.toml --set model.hf.path="$dir" \
      --set device="$DEVICE" --set model.hf.dtype="$DTYPE" --threads "$THREADS" \
      --set model.hf.gradient_checkpointing=true \
      --prompt-tokens "$PROMPT" --completion-tokens "$COMPLETION" --iterations "$ITERS" \
      --gemm-sizes "$GEMM"
  fi
done

echo "== NCCL: world size 1, exact bf16 and f32 sums, a timed bf16 all-reduce"
# cudarc opens `libnccl.so`; the wheel ships `libnccl.so.2`: link it by that name.
NCCL_DIR=$(mktemp -d)
"$PY" -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib", "libnccl.so.2"))' \
  | xargs -I{} ln -sf {} "$NCCL_DIR/libnccl.so"
CUDART_DIR=$("$PY" -c 'import os, nvidia.cu13 as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null)
if [[ $DEVICE == cuda ]]; then
  LD_LIBRARY_PATH="$NCCL_DIR:$CUDART_DIR:$LD_LIBRARY_PATH" "$BIN" nccl-check --mib 256 \
    2>"$OUT/nccl.err" | tee -a "$LOG" || { echo "FAILED: nccl-check:"; tail -5 "$OUT/nccl.err"; }
  echo "== llama-1b: the training step with its bf16 gradients summed through NCCL"
  LD_LIBRARY_PATH="$NCCL_DIR:$CUDART_DIR:$LD_LIBRARY_PATH" BRAIN_NCCL=on \
    measure "step-ours-llama-1b-nccl" "llama-1b-nccl" brain-rs \
    "$BIN" bench-step scripts/gpu-check/step.toml --set model.hf.path="$OUT/models/llama-1b" \
    --set device="$DEVICE" --set model.hf.dtype="$DTYPE" --threads "$THREADS" \
    --prompt-tokens "$PROMPT" --completion-tokens "$COMPLETION" --iterations "$ITERS" \
    --gemm-sizes "$GEMM"
else
  # No GPU: NCCL and the CUDA runtime load, and the first CUDA call is refused.
  LD_LIBRARY_PATH="$NCCL_DIR:$CUDART_DIR:$LD_LIBRARY_PATH" "$BIN" nccl-check --device cuda:0 2>&1 |
    sed 's/^/  (expected without a GPU) /'
fi

echo "== experiments/exact.toml on $DEVICE (the whole pipeline)"
TIMEFORMAT="wall seconds: %R"
time "$BIN" --quiet experiments/exact.toml --set device="$DEVICE" --set train.steps=100 \
  --out "$OUT/exact-$DEVICE" && head -12 "$OUT/exact-$DEVICE/summary.md"

echo "== summary ($((SECONDS - START)) s)"
"$PY" benches/peer/gpu_summary.py "$LOG" "${PEAK_TFLOPS:-989}" | tee "$OUT/summary.md"
