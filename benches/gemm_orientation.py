#!/usr/bin/env python3
"""Times `x · Wᵀ` (F.linear) against `W · xᵀ` (weight-major) for the f32
GEMM shapes of one SmolLM2-135M decoding step (16 rows), with LibTorch's MKL
on this CPU. `crates/models/src/common.rs::linear` picks the faster route.

    ~/.cache/brain-rs/torch-2.11.0/bin/python benches/gemm_orientation.py [--rows 16] [--threads 2]
"""
import argparse
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=16)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)


def ms(f, reps):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps * 1e3


print(f"rows {a.rows}, {a.threads} threads, torch {torch.__version__}")
print(f"{'weight [out, in]':>18} {'x·Wᵀ ms':>9} {'W·xᵀ ms':>9} {'ratio':>6}")
for out, inp in [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]:
    w = torch.randn(out, inp)
    x = torch.randn(a.rows, inp)
    reps = 20 if out > 10000 else 300
    for _ in range(2):  # alternate so background load hits both alike
        lin = ms(lambda: torch.nn.functional.linear(x, w), reps)
        wm = ms(lambda: (w @ x.t()).t().contiguous(), reps)
    print(f"{str([out, inp]):>18} {lin:9.3f} {wm:9.3f} {lin / wm:6.2f}")
