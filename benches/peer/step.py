#!/usr/bin/env python3
"""The training step alone in PyTorch eager, as `runner bench-step` times it
(crates/runner/src/bench.rs): ROWS = prompts × samples sequences of
PROMPT + COMPLETION random tokens, the policy's completion log-probs (the
logits computed at the completion positions only, `logits_to_keep` as TRL's
GRPO trainer does, the same work as the Rust step), the BRAIn loss on fixed
prior / proposal / goodness values, backward, `torch.optim.Adam`; then the
f32 GEMM rate of this machine through the same LibTorch (square matmuls).
Prints one JSON line with the same fields.

FLOPs = 6 · body matmul params · rows · T + 6 · head params · rows ·
COMPLETION + 12 · layers · rows · T² · hidden: forward 2 FLOPs per matmul
weight per token, backward twice that (the output head only where logits
are computed); the attention scores and their weighted sum 4·T²·hidden per
layer and sequence forward, again ×3 with backward. Body matmul params are
the 2-D weights but the embedding lookup and the head; the head is the tied
embedding (or lm_head).
"""

import argparse
import json
import time

import torch

from common import (gemm_rate, load_policy, load_policy_dir, median, peak_rss_mib,
                    sequence_logprobs, sync, versions)


def shape_of(model):
    params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight  # emb itself when tied
    body = sum(p.numel() for p in model.parameters()
               if p.dim() == 2 and p is not emb and p is not head)
    cfg = model.config
    return params, body, head.numel(), cfg.num_hidden_layers, cfg.hidden_size


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf")
    src.add_argument("--model-dir", help="an HF directory (the GPU check's random models)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--completion-tokens", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemm-sizes", default="1024,2048,3072")
    ap.add_argument("--gemm-seconds", type=float, default=2.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    if a.model_dir:
        _, policy = load_policy_dir(a.model_dir, dtype, a.device)
    else:
        _, policy = load_policy(a.gguf)
    dev = a.device
    policy.train()
    opt = torch.optim.Adam(policy.parameters(), lr=a.lr)
    p, n = a.prompts, a.n
    rows, t = p * n, a.prompt_tokens + a.completion_tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(policy.config.vocab_size, (rows, t), generator=g)
    mask = torch.ones_like(ids)
    cmask = torch.zeros_like(ids)
    cmask[:, a.prompt_tokens:] = 1
    logq = torch.randn(p, n, generator=g) * 3 - 40
    prior = torch.randn(p, n, generator=g) * 3 - 40
    log_g = torch.nn.functional.logsigmoid(torch.randn(p, n, generator=g)) / 0.25
    alpha = (prior + log_g - logq).log_softmax(-1).exp()
    ids, mask, cmask, logq, alpha = (x.to(dev) for x in (ids, mask, cmask, logq, alpha))

    names = ["forward", "loss_backward", "optimizer"]
    phases, seconds = {k: [] for k in names}, []
    for i in range(a.warmup + a.iterations):
        t0 = time.perf_counter()
        logp = sequence_logprobs(policy, ids, mask, cmask,
                                 logits_to_keep=a.completion_tokens).view(p, n)
        sync(dev)
        t1 = time.perf_counter()
        loss = -(alpha * (logp - logq).log_softmax(-1)).sum(-1).mean()
        loss.backward()
        sync(dev)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        t3 = time.perf_counter()
        if i >= a.warmup:
            for k, s in zip(names, [t1 - t0, t2 - t1, t3 - t2]):
                phases[k].append(s)
            seconds.append(t3 - t0)
    peak = peak_rss_mib()
    peak_gpu = (torch.cuda.max_memory_allocated() / 2**20
                if str(dev).startswith("cuda") else None)
    gemm, gemm_each = gemm_rate([int(s) for s in a.gemm_sizes.split(",")], a.gemm_seconds,
                                dev, dtype)
    params, body, head, layers, hidden = shape_of(policy)
    flops = (6 * body * rows * t + 6 * head * rows * a.completion_tokens
             + 12 * layers * rows * t * t * hidden)
    step = median(seconds)
    achieved = flops / step / 1e9
    print(json.dumps({
        "impl": "pytorch eager",
        "versions": versions(),
        "bench": "step",
        "estimator": "brain",
        "device": str(dev),
        "dtype": a.dtype,
        "threads": torch.get_num_threads(),
        "lr": a.lr,
        "optimizer": "adam",
        "rows": rows,
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "sequence_length": t,
        "params": params,
        "body_matmul_params": body,
        "head_params": head,
        "layers": layers,
        "hidden": hidden,
        "flops": flops,
        "flop_formula": "6*body_matmul_params*rows*T + 6*head_params*rows*completion_tokens + 12*layers*rows*T^2*hidden",
        "warmup": a.warmup,
        "iterations": a.iterations,
        "seconds_per_step": step,
        "step_seconds": seconds,
        "phases": {k: median(v) for k, v in phases.items()},
        "phase_seconds": phases,
        "tokens_per_s": rows * t / step,
        "gflops": achieved,
        "gemm_gflops": gemm,
        "gemm_gflops_by_size": gemm_each,
        "fraction_of_gemm": achieved / gemm,
        "compute_bound_seconds": flops / (gemm * 1e9),
        "step_over_bound": step / (flops / (gemm * 1e9)),
        "peak_rss_mb": peak,
        "peak_gpu_allocated_mib": peak_gpu,
    }))


if __name__ == "__main__":
    main()
