#!/usr/bin/env bash
# brain-rs against PyTorch + transformers on this machine, one ratio per
# figure measured in one run: the two sides alternate, round after round
# (round 1: ours, peer; round 2: ours, peer; …), with the same model, shapes
# and thread count, so background load hits both alike.
#
#   iteration-brain  one whole BRAIn iteration of MANIFEST (run BRAIN_RUN):
#                    sample → score → prior log-probs → policy forward +
#                    backward + Adam; `runner bench-iteration` (the real
#                    training loop) vs benches/peer/iteration.py
#   iteration-dpo    the same for the DPO-sft run (DPO_RUN)
#   step             the training step alone on fixed batches of the
#                    iteration's shape, with FLOPs and the GEMM rate measured
#                    in the same process: `runner bench-step` vs
#                    benches/peer/step.py (PyTorch eager)
#   sampling         batch 16 × 64 new tokens: `runner bench` vs
#                    benches/hf_generate.py (transformers generate), as
#                    benches/sampling.sh
# Every side reports its peak RSS (VmHWM).
#
#   benches/peer/run.sh                        # ROUNDS=3 THREADS=2 ITERS=4 WARMUP=1
#   ROUNDS=1 BENCHES="step sampling" benches/peer/run.sh
#   APPEND=1 ROUNDS=2 benches/peer/run.sh      # two more rounds into the same raw.jsonl
#
# Writes $OUT (results/bench): raw.jsonl (every round's JSON line of each
# side, with the load average around it and the command), bench.json and
# summary.md (medians, ratios ours ÷ peer, the machine, the commands).
# Installs transformers, gguf and accelerate into the project's Python
# environment (~/.cache/brain-rs/torch-2.11.0, or $BRAIN_RS_TORCH_VENV) if
# missing, as benches/sampling.sh does.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${BRAIN_RS_TORCH_VENV:-$HOME/.cache/brain-rs/torch-2.11.0}
PY=$VENV/bin/python
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-2} ITERS=${ITERS:-4} WARMUP=${WARMUP:-1}
STEPS=${STEPS:-5} BATCH=${BATCH:-16} NEW=${NEW:-64} REPEATS=${REPEATS:-3}
SAMPLE_DTYPE=${SAMPLE_DTYPE:-f32} # weights of the sampling bench, both sides (f32 or bf16)
MANIFEST=${MANIFEST:-experiments/sentiment.toml}
BRAIN_RUN=${BRAIN_RUN:-BRAIn} DPO_RUN=${DPO_RUN:-DPO-sft}
BENCHES=${BENCHES:-iteration-brain iteration-dpo step sampling}
OUT=${OUT:-results/bench}
GGUF=${BRAIN_RS_SMOLLM2_GGUF:-$HOME/.cache/brain-rs/models/SmolLM2-135M-Instruct.Q4_1.gguf}
RM=${RM:-$HOME/.cache/brain-rs/reward-models/sentiment-classifier-quick}

"$PY" -c "import transformers, gguf, accelerate" 2>/dev/null ||
  "$PY" -m pip install -q transformers gguf accelerate
[[ -f "$GGUF" ]] || { echo "no model at $GGUF: run cargo xtask setup" >&2; exit 1; }
# The dev profile suffices: the hot path is LibTorch (opt-level 2 for dependencies).
cargo build -q -p runner
RUNNER=target/debug/runner
mkdir -p "$OUT"
RAW=$OUT/raw.jsonl
FIRST=1
if [[ ${APPEND:-0} == 1 && -s "$RAW" ]]; then
  last=$("$PY" -c "import json, sys; print(max(json.loads(l)['round'] for l in open(sys.argv[1]) if l.strip()))" "$RAW")
  FIRST=$((last + 1))
else
  : >"$RAW"
  : >"$OUT/invocations.txt"
fi
echo "${APPEND:+APPEND=$APPEND }ROUNDS=$ROUNDS THREADS=$THREADS ITERS=$ITERS WARMUP=$WARMUP STEPS=$STEPS SAMPLE_DTYPE=$SAMPLE_DTYPE BENCHES=\"$BENCHES\" benches/peer/run.sh" >>"$OUT/invocations.txt"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# record ROUND SIDE BENCH COMMAND...: runs COMMAND (stdout: one JSON line)
# and appends {round, side, bench, command, loadavg_before/after, result}.
record() {
  local round=$1 side=$2 bench=$3
  shift 3
  local before
  before=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "round $round: $bench, $side: $*" >&2
  "$@" >"$TMP/line" 2>"$TMP/err" || { cat "$TMP/err" >&2; exit 1; }
  "$PY" - "$round" "$side" "$bench" "$before" "$(cut -d' ' -f1-3 /proc/loadavg)" "$*" \
    "$TMP/line" >>"$RAW" <<'EOF'
import json, sys
r, side, bench, before, after, cmd, path = sys.argv[1:]
line = [l for l in open(path) if l.strip().startswith("{")][-1]
print(json.dumps({"round": int(r), "side": side, "bench": bench, "command": cmd,
                  "loadavg_before": before, "loadavg_after": after,
                  "result": json.loads(line)}))
EOF
  cp "$TMP/line" "$TMP/last-$side-$bench.json"
}

# The peer's flags for the run that ours just timed (its estimator's and
# goodness model's settings, lr, samples, lengths).
peer_flags() {
  "$PY" - "$1" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
s = v["sampling"]
assert s.get("temperature", 1.0) == 1.0 and s.get("top_k") is None and s.get("top_p") is None, \
    f"the peer samples plainly (temperature 1, no top-k/top-p), the run with {s}"
assert v["estimator"] in ("brain", "dpo"), v["estimator"]
f = ["--estimator", v["estimator"], "--run", v["run"], "--n", v["samples_per_prompt"],
     "--max-new-tokens", v["max_new_tokens"], "--lr", repr(v["lr"]), "--seed", v["seed"]]
if v["estimator"] == "brain":
    assert v["goodness"] == "classifier", v["goodness"]
    c = v["estimator_config"]
    assert c.get("baseline", "self-normalized") == "self-normalized" and \
        c.get("target", "softmax") == "softmax" and not c.get("length_normalize") and \
        not c.get("prior_fraction"), f"the peer implements plain BRAIn, not {c}"
    f += ["--tau", v["goodness_config"]["tau"], "--refresh-every", v["refresh_every"] or 0]
else:
    c = v["estimator_config"]
    assert c.get("source", "sft-sample-rank") == "sft-sample-rank" and \
        c.get("pairs", "best-vs-worst") == "best-vs-worst" and not c.get("label_smoothing"), c
    f += ["--beta", c.get("beta", 0.1)]
print(" ".join(str(x) for x in f))
EOF
}

# Prompt tokens of the step bench: the median over the iterations' steps of
# the longest prompt of the step (the batch's left-padded width).
prompt_tokens() {
  if [[ -f "$OUT/prompts-$BRAIN_RUN.jsonl" ]]; then
    "$PY" -c "import json, statistics, sys; print(round(statistics.median(max(len(p) for p in json.loads(l)['prompts']) for l in open(sys.argv[1]) if l.strip())))" "$OUT/prompts-$BRAIN_RUN.jsonl"
  else
    echo 6
  fi
}

iteration() { # ROUND RUN BENCH
  local round=$1 run=$2 bench=$3
  record "$round" ours "$bench" "$RUNNER" bench-iteration "$MANIFEST" --set device=cpu \
    --run "$run" --threads "$THREADS" --iterations "$ITERS" --warmup "$WARMUP" \
    --prompts-out "$OUT/prompts-$run.jsonl"
  # shellcheck disable=SC2046
  record "$round" peer "$bench" "$PY" benches/peer/iteration.py --gguf "$GGUF" --rm "$RM" \
    --prompts "$OUT/prompts-$run.jsonl" --threads "$THREADS" --iterations "$ITERS" \
    --warmup "$WARMUP" $(peer_flags "$TMP/last-ours-$bench.json")
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$FIRST" $((FIRST + ROUNDS - 1))); do
  for bench in $BENCHES; do
    case $bench in
      iteration-brain) iteration "$round" "$BRAIN_RUN" "$bench" ;;
      iteration-dpo) iteration "$round" "$DPO_RUN" "$bench" ;;
      step)
        pt=$(prompt_tokens)
        record "$round" ours step "$RUNNER" bench-step "$MANIFEST" --set device=cpu \
          --run "$BRAIN_RUN" --threads "$THREADS" --iterations "$STEPS" --warmup "$WARMUP" \
          --prompt-tokens "$pt"
        v=$TMP/last-ours-step.json
        read -r prompts n comp lr < <("$PY" -c "import json,sys; v=json.load(open(sys.argv[1])); print(v['prompts'], v['samples_per_prompt'], v['completion_tokens'], repr(v['lr']))" "$v")
        record "$round" peer step "$PY" benches/peer/step.py --gguf "$GGUF" --prompts "$prompts" \
          --n "$n" --prompt-tokens "$pt" --completion-tokens "$comp" --lr "$lr" \
          --threads "$THREADS" --iterations "$STEPS" --warmup "$WARMUP"
        ;;
      sampling)
        hf_dtype=()
        [[ $SAMPLE_DTYPE == f32 ]] || hf_dtype=(--dtype "$SAMPLE_DTYPE")
        record "$round" ours sampling "$RUNNER" bench --model "$GGUF" --device cpu \
          --threads "$THREADS" --batch "$BATCH" --new-tokens "$NEW" --repeats "$REPEATS" \
          --dtype "$SAMPLE_DTYPE"
        record "$round" peer sampling "$PY" benches/hf_generate.py --gguf "$GGUF" \
          --threads "$THREADS" --batch "$BATCH" --new-tokens "$NEW" --repeats "$REPEATS" \
          "${hf_dtype[@]}"
        ;;
      *) echo "unknown bench $bench" >&2; exit 2 ;;
    esac
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PY" benches/peer/summarize.py "$RAW" "$OUT" --threads "$THREADS" \
  --invocation "$(paste -sd';' "$OUT/invocations.txt" | sed 's/;/; /g')"
