#!/usr/bin/env python3
"""What the training loop's non-finite update check costs per step, for a
model of PARAMS f32 parameters (default 135M, SmolLM2-135M's size), with
LibTorch's CPU kernels through PyTorch (the kernels tch calls):

- "bound": what `Optimizer::update_is_finite` does, one `aminmax` pass over
  each of the gradient, the weights and Adam's two moments;
- "copies": computing Adam's update out of place and checking it (the first
  version, and still the check for half-precision weights).

The two sides alternate for ROUNDS rounds so background load hits both.

    ~/.cache/brain-rs/torch-2.11.0/bin/python benches/update_check.py
"""

import os
import time

import torch

PARAMS = int(os.environ.get("PARAMS", 135_000_000))
THREADS = int(os.environ.get("THREADS", 2))
ROUNDS = int(os.environ.get("ROUNDS", 3))
B1, B2, EPS, LR, T = 0.9, 0.999, 1e-8, 1e-3, 10

torch.set_num_threads(THREADS)
torch.manual_seed(0)
w = torch.randn(PARAMS)
g = torch.randn(PARAMS)
m = torch.randn(PARAMS) * 0.1
v = torch.rand(PARAMS) * 0.01


def bound():
    ext = [torch.aminmax(x) for x in (g, w, m, v)]
    return all(torch.isfinite(lo) and torch.isfinite(hi) for lo, hi in ext)


def copies():
    m2 = m.clone() * B1 + g * (1 - B1)
    v2 = v.clone() * B2 + g * g * (1 - B2)
    delta = m2 * (-LR / (1 - B1**T)) / (v2.sqrt() / (1 - B2**T) ** 0.5 + EPS)
    return all(bool(torch.isfinite(x).all()) for x in (m2, v2, w + delta))


for r in range(ROUNDS):
    for name, f in (("bound", bound), ("copies", copies)):
        start = time.perf_counter()
        assert f()
        print(f"round {r + 1} {name:6s} {time.perf_counter() - start:.3f} s")
