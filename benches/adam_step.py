#!/usr/bin/env python3
"""One Adam step over SmolLM2-135M's weight shapes (f32, 2 threads), three
ways, alternating, in the same LibTorch the Rust side calls through tch:

- `temporaries`: the update as crates/core/src/optim.rs first wrote it
  (`m·β1 + g·(1−β1)`, `√v/√bc2 + ε`, `m·(−lr/bc1)/denom`: fresh tensors);
- `scratch`: as it is now (`lerp_`, every intermediate in one reused buffer);
- `torch.optim.Adam` (foreach=False, PyTorch's CPU default).

    ~/.cache/brain-rs/torch-2.11.0/bin/python benches/adam_step.py

Prints seconds per step, the median of ROUNDS rounds of 3 steps each.
"""

import statistics
import sys
import time

import torch

torch.set_num_threads(2)
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
layer = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
shapes = [(49152, 576)] + layer * 30
gen = torch.Generator().manual_seed(0)
ps = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
gs = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
ms = [torch.zeros_like(p) for p in ps]
vs = [torch.zeros_like(p) for p in ps]
b1, b2, eps, lr = 0.9, 0.999, 1e-8, 5e-5


def temporaries(t):
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    for p, g, m, v in zip(ps, gs, ms, vs):
        m.mul_(b1)
        m.add_(g * (1 - b1))
        v.mul_(b2)
        v.addcmul_(g * (1 - b2), g)
        denom = v.sqrt() / bc2**0.5 + eps
        p.add_(m * -(lr / bc1) / denom)


scratch = torch.empty(max(p.numel() for p in ps))


def in_scratch(t):
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    for p, g, m, v in zip(ps, gs, ms, vs):
        s = scratch[: p.numel()].view(p.shape)
        m.lerp_(g, 1 - b1)
        torch.mul(g, 1 - b2, out=s)
        v.mul_(b2).addcmul_(s, g)
        torch.sqrt(v, out=s)
        s.div_(bc2**0.5).add_(eps).mul_(-bc1 / lr)
        p.addcdiv_(m, s)


params = [p.clone().requires_grad_() for p in ps]
for p, g in zip(params, gs):
    p.grad = g
opt = torch.optim.Adam(params, lr=lr, foreach=False)

sides = {"temporaries": temporaries, "scratch": in_scratch, "torch.optim.Adam": lambda t: opt.step()}
times = {k: [] for k in sides}
for f in sides.values():
    f(1)  # allocates the moments
for r in range(ROUNDS):
    for name, f in sides.items():
        start = time.perf_counter()
        for t in range(2, 5):
            f(t)
        times[name].append((time.perf_counter() - start) / 3)
for name, ts in times.items():
    print(f"{name:18} {statistics.median(ts):6.2f} s/step  rounds {[round(x, 2) for x in ts]}")
torch_s = statistics.median(times["torch.optim.Adam"])
for name in ("temporaries", "scratch"):
    print(f"torch.optim.Adam ÷ {name}: {torch_s / statistics.median(times[name]):.2f}×")
