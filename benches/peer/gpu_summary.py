#!/usr/bin/env python3
"""The GPU check's table (scripts/gpu-check.sh): per model shape, each side's
median over rounds of sampling tokens/s, training-step tokens/s, model FLOP
utilisation (the step's FLOPs per second over PEAK_TFLOPS, and over the bf16
GEMM rate measured in the same run where there is one) and peak memory, with
the ratio ours ÷ peer.

    python benches/peer/gpu_summary.py OUT/gpu-check.jsonl [PEAK_TFLOPS]
"""

import json
import statistics
import sys


def main():
    path = sys.argv[1]
    peak = float(sys.argv[2]) if len(sys.argv) > 2 else 989.0
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    machine = next((r for r in rows if r.get("bench") == "machine"), {})
    print(f"GPU: {machine.get('gpu')}; torch {machine.get('torch')}, "
          f"transformers {machine.get('transformers')}; peak {peak:g} TFLOP/s (dense bf16)\n")
    print("| shape | work | brain-rs | peer | ours ÷ peer |")
    print("|---|---|---:|---:|---:|")
    shapes = sorted({r["shape"] for r in rows if "shape" in r and "side" in r})
    for shape in shapes:
        def pick(bench, side, field):
            xs = [r[field] for r in rows if r.get("shape") == shape and r.get("bench") == bench
                  and r.get("side") == side and r.get(field) is not None]
            return statistics.median(xs) if xs else None

        def line(work, bench, field, scale=1.0, fmt="{:.1f}", higher_is_better=True):
            ours = pick(bench, "brain-rs", field)
            peer = pick(bench, "pytorch" if bench == "step" else "transformers", field)
            show = lambda x: "—" if x is None else fmt.format(x * scale)
            ratio = "—"
            if ours and peer:
                ratio = f"{(ours / peer) if higher_is_better else (peer / ours):.2f}×"
            print(f"| {shape} | {work} | {show(ours)} | {show(peer)} | {ratio} |")

        line("sampling tokens/s", "sampling", "tokens_per_s")
        line("training-step tokens/s", "step", "tokens_per_s")
        line(f"MFU (% of {peak:g} TFLOP/s)", "step", "gflops", scale=100 / (peak * 1e3), fmt="{:.1f}%")
        line("step ÷ measured GEMM rate", "step", "fraction_of_gemm", scale=100, fmt="{:.1f}%")
        line("peak GPU memory, sampling (MiB)", "sampling", "peak_gpu_mib", fmt="{:.0f}",
             higher_is_better=False)
        line("peak GPU memory, step (MiB)", "step", "peak_gpu_mib", fmt="{:.0f}",
             higher_is_better=False)
        line("peak RSS, step (MiB)", "step", "peak_rss_mb", fmt="{:.0f}", higher_is_better=False)
    print("\nMemory rows: ratio = peer ÷ ours (> 1: we use less). "
          "`llama-1b-checkpointing`: ours with gradient checkpointing, `llama-1b-nccl`: ours "
          "with the gradients through NCCL (no peer rows).")
    for r in rows:
        if r.get("check") == "nccl":
            sums = ", ".join(f"{k} {v['wrong']} wrong of {v['elements']}"
                             for k, v in r["exact_sums"].items())
            g = r.get("loop_gradients", {})
            print(f"\nNCCL {r['nccl_version']}, rank {r['rank']} of {r['world_size']} on "
                  f"{r['device']}: {sums}; the loop's {g.get('kind')} gradient sum "
                  f"{g.get('wrong')} wrong of {g.get('elements')}; {r['timed_bf16_mib']} MiB "
                  f"bf16 all-reduce in {r['median_seconds'] * 1e3:.2f} ms (median).")
    for r in rows:
        if r.get("bench") == "step" and r.get("gradient_sum") == "nccl":
            print(f"\n{r['shape']}: the step with its gradients summed through NCCL "
                  f"(world size 1): {r['seconds_per_step']:.3f} s, of which the sum "
                  f"{r['phases']['gradient_sum'] * 1e3:.1f} ms.")


if __name__ == "__main__":
    main()
