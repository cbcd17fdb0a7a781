#!/usr/bin/env python3
"""results/bench/raw.jsonl (benches/peer/run.sh) → bench.json and summary.md:
per benchmark the median over rounds of each side's figure, the ratio
ours ÷ peer in each round (> 1: brain-rs is faster; for memory, ours ÷
peer of the peak RSS, < 1: brain-rs uses less), the issue's targets, the
phases, the machine and the exact commands."""

import argparse
import json
import platform
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine(threads, records):
    lscpu = sh("lscpu") or ""
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines()
                  if l.startswith("Model name")), platform.processor())
    mem_kb = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    versions = next((r["result"]["versions"] for r in records if "versions" in r["result"]), {})
    dirty = sh("git", "status", "--porcelain")
    return {
        "cpu": model,
        "cores": int(sh("nproc") or 0),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": sh("uname", "-r"),
        "torch": versions.get("torch"),
        "transformers": versions.get("transformers"),
        "threads": threads,
        "rustc": sh("rustc", "--version"),
        "commit": sh("git", "rev-parse", "--short", "HEAD"),
        "working_tree": "modified (uncommitted changes)" if dirty else "clean",
    }


# name → (figure, higher is better)
FIGURES = {
    "iteration-brain": ("seconds_per_iteration", False),
    "iteration-dpo": ("seconds_per_iteration", False),
    "step": ("seconds_per_step", False),
    "sampling": ("tokens_per_s", True),
}
# name → the list of every timed repetition in a result (for the best-of figure)
EACH = {
    "iteration-brain": "iteration_seconds",
    "iteration-dpo": "iteration_seconds",
    "step": "step_seconds",
    "sampling": "runs_tokens_per_s",
}


def best(bench, result):
    """The best repetition of a result: the least-disturbed one on a shared
    machine (fastest time, highest rate)."""
    xs = result.get(EACH[bench]) or []
    if not xs:
        return None
    return max(xs) if FIGURES[bench][1] else min(xs)


def speed_ratio(bench, ours, peer):
    """ours ÷ peer as a speed: > 1 means brain-rs is faster."""
    if ours is None or peer is None:
        return None
    _, higher = FIGURES[bench]
    return ours / peer if higher else peer / ours


def fmt(x, digits=2):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--invocation", default="benches/peer/run.sh")
    a = ap.parse_args()
    records = [json.loads(l) for l in open(a.raw) if l.strip()]
    by = defaultdict(lambda: defaultdict(dict))  # bench → round → side → result
    for r in records:
        by[r["bench"]][r["round"]][r["side"]] = r["result"]

    summary = {}
    for bench, rounds in by.items():
        figure, _ = FIGURES[bench]
        per_round = []
        for rnd in sorted(rounds):
            sides = rounds[rnd]
            o, p = sides.get("ours", {}).get(figure), sides.get("peer", {}).get(figure)
            ob = best(bench, sides["ours"]) if "ours" in sides else None
            pb = best(bench, sides["peer"]) if "peer" in sides else None
            per_round.append({"round": rnd, "ours": o, "peer": p,
                              "ratio": speed_ratio(bench, o, p),
                              "ours_best": ob, "peer_best": pb,
                              "ratio_best": speed_ratio(bench, ob, pb)})
        ours_m = med([x["ours"] for x in per_round])
        peer_m = med([x["peer"] for x in per_round])
        s = {
            "figure": figure,
            "rounds": per_round,
            "ours_median": ours_m,
            "peer_median": peer_m,
            "ratio_of_medians": speed_ratio(bench, ours_m, peer_m),
            "median_ratio": med([x["ratio"] for x in per_round]),
            "ours_best": (min if not FIGURES[bench][1] else max)(
                [x["ours_best"] for x in per_round if x["ours_best"] is not None], default=None),
            "peer_best": (min if not FIGURES[bench][1] else max)(
                [x["peer_best"] for x in per_round if x["peer_best"] is not None], default=None),
        }
        s["ratio_best"] = speed_ratio(bench, s["ours_best"], s["peer_best"])
        for side in ("ours", "peer"):
            res = [rounds[r][side] for r in sorted(rounds) if side in rounds[r]]
            if not res:
                continue
            extra = {}
            for key in ("peak_rss_mb", "peak_rss_iter_mb", "peak_rss_load_mb", "rss_after_load_mb",
                        "gflops", "gemm_gflops", "fraction_of_gemm", "step_over_bound",
                        "compute_bound_seconds", "flops", "load_seconds", "tokens_per_s"):
                if any(key in x for x in res):
                    extra[key] = med([x.get(key) for x in res])
            if any("phases" in x for x in res):
                names = list(res[0].get("phases", {}))
                extra["phases"] = {k: med([x["phases"].get(k) for x in res]) for k in names}
            if any("completion_tokens" in x and isinstance(x["completion_tokens"], list)
                   for x in res):
                extra["completion_tokens_per_iteration"] = med(
                    [t for x in res for t in x["completion_tokens"]])
                extra["rows_per_iteration"] = med([t for x in res for t in x["rows"]])
            if "impl" in res[0]:
                extra["impl"] = res[0]["impl"]
            s[side] = extra
        summary[bench] = s

    loads = [(r["round"], r["side"], r["bench"], r["loadavg_before"], r["loadavg_after"])
             for r in records]
    commands = {}
    for r in records:
        commands.setdefault(f'{r["bench"]} ({r["side"]})', r["command"])
    mach = machine(a.threads, records)
    out = Path(a.out)
    (out / "bench.json").write_text(json.dumps({
        "machine": mach, "invocation": a.invocation, "summary": summary,
        "commands": commands, "records": records,
    }, indent=1) + "\n")

    md = ["# brain-rs vs PyTorch + transformers on this machine", ""]
    md.append(f"`{a.invocation}`: {len({r['round'] for r in records})} alternating round(s) "
              "(each round: ours, then the peer, benchmark by benchmark), "
              "same model (SmolLM2-135M-Instruct Q4_1 GGUF dequantised to f32), shapes and "
              "thread count. Ratios are ours ÷ peer as speed: > 1 means brain-rs is faster; "
              "memory ratios are ours ÷ peer of the peak RSS (< 1: brain-rs uses less).")
    md.append("")
    md.append("## Machine")
    md.append("")
    for k, v in mach.items():
        md.append(f"- {k}: {v}")
    md.append("- load average (1, 5, 15 min) before → after each measurement (the machine "
              "is shared; other sessions were compiling at times):")
    for rnd, side, bench, b, e in loads:
        md.append(f"  - round {rnd}, {bench}, {side}: {b} → {e}")
    md.append("")

    md.append("## Targets (issue 12)")
    md.append("")
    md.append("`measured` is the median over rounds of each round's ratio of medians; "
              "`best of` compares each side's fastest repetition over all rounds, the least "
              "disturbed by other work on this shared machine.")
    md.append("")
    md.append("| target | measured (median of rounds) | per round | best of | met (median) |")
    md.append("|---|--:|---|--:|---|")

    def row(label, value, rounds, ok, best_value=None):
        md.append(f"| {label} | {fmt(value)} | {', '.join(fmt(x) for x in rounds)} | "
                  f"{fmt(best_value)} | "
                  f"{'yes' if ok else ('no' if ok is not None else '–')} |")

    def ratios(bench):
        return [x["ratio"] for x in summary[bench]["rounds"]]

    if "iteration-brain" in summary:
        s = summary["iteration-brain"]
        v = s["median_ratio"]
        row("whole BRAIn iteration ≥ 1.5× the peer", v, ratios("iteration-brain"),
            None if v is None else v >= 1.5, s["ratio_best"])
    if "iteration-dpo" in summary:
        s = summary["iteration-dpo"]
        v = s["median_ratio"]
        row("whole DPO-sft iteration (no target; for reference)", v, ratios("iteration-dpo"), None,
            s["ratio_best"])
    if "step" in summary:
        s = summary["step"]
        v = s["median_ratio"]
        row("training step ≥ 1.1× PyTorch eager", v, ratios("step"),
            None if v is None else v >= 1.1, s["ratio_best"])
        b = s.get("ours", {}).get("step_over_bound")
        row("training step within 1.3× of the compute bound (step ÷ FLOPs/GEMM rate)", b,
            [x.get("step_over_bound") for x in
             [by["step"][r].get("ours", {}) for r in sorted(by["step"])]],
            None if b is None else b <= 1.3,
            None if not s.get("ours_best") else s["ours_best"] / s["ours"]["compute_bound_seconds"])
    if "sampling" in summary:
        v = summary["sampling"]["median_ratio"]
        row("sampling 16 × 64 ≥ 3× transformers generate", v, ratios("sampling"),
            None if v is None else v >= 3.0, summary["sampling"]["ratio_best"])
    if "iteration-brain" in summary:
        s = summary["iteration-brain"]
        o, p = s.get("ours", {}).get("peak_rss_iter_mb"), s.get("peer", {}).get("peak_rss_iter_mb")
        rr = [None if not (by["iteration-brain"][r].get("ours") and by["iteration-brain"][r].get("peer"))
              else by["iteration-brain"][r]["ours"]["peak_rss_iter_mb"] /
              by["iteration-brain"][r]["peer"]["peak_rss_iter_mb"]
              for r in sorted(by["iteration-brain"])]
        v = o / p if o and p else None
        row("peak RSS of the BRAIn iteration ≤ 0.7× PyTorch's (ours ÷ peer)", v, rr,
            None if v is None else v <= 0.7)
    md.append("")

    md.append("## Figures")
    md.append("")
    md.append("| benchmark | figure | ours (median) | peer (median) | ratio of medians | "
              "per-round ratios | ours (best) | peer (best) | ratio of bests |")
    md.append("|---|---|--:|--:|--:|---|--:|--:|--:|")
    for bench, s in summary.items():
        md.append(f"| {bench} | {s['figure']} | {fmt(s['ours_median'], 3)} | "
                  f"{fmt(s['peer_median'], 3)} | {fmt(s['ratio_of_medians'])} | "
                  f"{', '.join(fmt(x['ratio']) for x in s['rounds'])} | "
                  f"{fmt(s['ours_best'], 3)} | {fmt(s['peer_best'], 3)} | "
                  f"{fmt(s['ratio_best'])} |")
    md.append("")
    md.append("Every repetition (seconds, or tokens/s for sampling), round by round:")
    md.append("")
    for r in records:
        xs = r["result"].get(EACH[r["bench"]]) or []
        md.append(f"- round {r['round']}, {r['bench']}, {r['side']}: "
                  f"{', '.join(fmt(x) for x in xs)}")
    md.append("")
    for bench in ("iteration-brain", "iteration-dpo"):
        if bench not in summary:
            continue
        s = summary[bench]
        md.append(f"### {bench}: phases (seconds per iteration, median of rounds)")
        md.append("")
        order = ["refresh", "sample", "sample_model", "score", "prior_logprobs",
                 "policy_forward", "backward_step", "other"]
        seen = set(s.get("ours", {}).get("phases", {})) | set(s.get("peer", {}).get("phases", {}))
        names = [k for k in order if k in seen] + sorted(seen - set(order))
        md.append("| phase | ours | peer |")
        md.append("|---|--:|--:|")
        for k in names:
            md.append(f"| {k} | {fmt(s.get('ours', {}).get('phases', {}).get(k), 3)} | "
                      f"{fmt(s.get('peer', {}).get('phases', {}).get(k), 3)} |")
        md.append(f"| **total** | {fmt(s['ours_median'], 3)} | {fmt(s['peer_median'], 3)} |")
        for side in ("ours", "peer"):
            x = s.get(side, {})
            md.append(f"| rows / completion tokens per iteration ({side}) | "
                      f"{fmt(x.get('rows_per_iteration'))} / "
                      f"{fmt(x.get('completion_tokens_per_iteration'))} | |")
        md.append("")
    if "step" in summary:
        s = summary["step"]
        o, p = s.get("ours", {}), s.get("peer", {})
        md.append("### step: FLOPs and the GEMM rate")
        md.append("")
        rec = next(r["result"] for r in records if r["bench"] == "step" and r["side"] == "ours")
        md.append(f"Shape: {rec['rows']} rows × {rec['sequence_length']} tokens "
                  f"({rec['prompt_tokens']} prompt + {rec['completion_tokens']} completion); "
                  f"{rec['params']:,} parameters: {rec['body_matmul_params']:,} in the body's "
                  f"matmuls, {rec['head_params']:,} in the output head (the tied embedding), "
                  f"{rec['layers']} layers, hidden {rec['hidden']}. Both sides compute logits "
                  "at the completion positions only. FLOPs = 6·body·rows·T + "
                  "6·head·rows·completion + 12·layers·rows·T²·hidden (forward 2 per weight "
                  "per token, backward 4; attention 4·T²·hidden per layer and row forward, "
                  f"×3 with backward) = {rec['flops']:.3e} per step. The GEMM rate is the "
                  "fastest single square f32 matmul (sizes "
                  f"{', '.join(str(g[0]) for g in rec['gemm_gflops_by_size'])}, each repeated "
                  "for a few seconds) measured through LibTorch in the same process, on each "
                  "side; the mean rate over the repetitions is in bench.json.")
        md.append("")
        md.append("| | ours | peer |")
        md.append("|---|--:|--:|")
        for k, label in [("tokens_per_s", "tokens/s"), ("gflops", "GFLOP/s reached"),
                         ("gemm_gflops", "GEMM GFLOP/s (measured)"),
                         ("fraction_of_gemm", "fraction of the GEMM rate"),
                         ("compute_bound_seconds", "compute bound (s)"),
                         ("step_over_bound", "step ÷ compute bound")]:
            md.append(f"| {label} | {fmt(o.get(k), 3)} | {fmt(p.get(k), 3)} |")
        for k in list(dict.fromkeys(list(o.get("phases", {})) + list(p.get("phases", {})))):
            md.append(f"| phase: {k} (s) | {fmt(o.get('phases', {}).get(k), 3)} | "
                      f"{fmt(p.get('phases', {}).get(k), 3)} |")
        md.append(f"| **step (s)** | {fmt(s['ours_median'], 3)} | {fmt(s['peer_median'], 3)} |")
        md.append("")

    md.append("## Peak RSS (MiB, median of rounds)")
    md.append("")
    md.append("`peak iteration` is VmHWM counted from the end of loading (reset through "
              "/proc/self/clear_refs), `peak process` the whole process's (loading included).")
    md.append("")
    md.append("| benchmark | ours peak iteration | peer peak iteration | ratio | ours peak process | "
              "peer peak process | ratio |")
    md.append("|---|--:|--:|--:|--:|--:|--:|")
    for bench, s in summary.items():
        o, p = s.get("ours", {}), s.get("peer", {})

        def r(k):
            return o[k] / p[k] if o.get(k) and p.get(k) else None
        md.append(f"| {bench} | {fmt(o.get('peak_rss_iter_mb'), 0)} | "
                  f"{fmt(p.get('peak_rss_iter_mb'), 0)} | {fmt(r('peak_rss_iter_mb'))} | "
                  f"{fmt(o.get('peak_rss_mb'), 0)} | {fmt(p.get('peak_rss_mb'), 0)} | "
                  f"{fmt(r('peak_rss_mb'))} |")
    md.append("")

    md.append("## What each side does")
    md.append("")
    md.append(
        "- **ours** (`runner bench-iteration`): the project's training loop "
        "(`runner::train::train`: refresh → batcher → estimator loss → backward → "
        "update check → Adam), with the prior, policy and reward model wrapped in timers; "
        "phases: `refresh` (copy into the proposal), `sample` (sampling and decoding the "
        "texts; `sample_model` is its model share: prefill + decoding steps), `score`, "
        "`prior_logprobs` (prior or proposal forwards the batcher makes; 0 when the "
        "sampler's log-probs are reused), `policy_forward`, `backward_step` (loss, "
        "backward, finiteness check, Adam).")
    md.append(
        "- **peer** (`benches/peer/iteration.py`): transformers `generate` (sampling, "
        "temperature 1, no top-k/top-p, EOS stops a row) on the same prompts (ours writes "
        "them), the same classifier RM in torch (checked equal to `runner score` to 1e-6), "
        "a frozen deep copy as the reference, `torch.optim.Adam`; logits at completion "
        "positions only (`logits_to_keep`), as ours. BRAIn as TRL's GRPO trainer "
        "computes log-probs, on all samples, log Q from generate's scores; DPO-sft as "
        "TRL's DPO trainer: the best and worst sample per prompt, one concatenated forward "
        "of the pairs (8 rows, where our loop forwards all 16 samples). Where the samples "
        "came from the prior by plain sampling (DPO-sft; BRAIn before its first refresh) "
        "both sides take the prior log-probs from the sampler (generate's scores) instead "
        "of a reference forward. No gradient clipping or finiteness check on the peer.")
    md.append(
        "- **step**: fixed random tokens of the iteration's shape, logits at completion "
        "positions on both sides, BRAIn loss, backward, Adam; ours also runs the loop's "
        "update check.")
    md.append("")
    md.append("## Commands")
    md.append("")
    md.append("```sh")
    md.append(a.invocation)
    for k, v in commands.items():
        md.append(f"# {k}")
        md.append(v)
    md.append("```")
    md.append("")
    (out / "summary.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
