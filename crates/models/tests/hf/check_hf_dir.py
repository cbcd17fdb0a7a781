#!/usr/bin/env python3
"""Loads an HF directory this crate saved with transformers and compares
its logits with the ones this crate computed.

    python check_hf_dir.py MODEL_DIR OURS.safetensors

OURS.safetensors holds `input_ids`, `attention_mask` and `logits` (from
Rust). Prints one JSON line (the largest error over real positions, the
keys transformers found missing or unexpected) and exits 1 if any
|ours - theirs| > 1e-4 * |theirs| + 1e-5 or a weight was missing. Run by
crates/models/tests/export.rs, f32 on the CPU with eager attention.
"""

import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

model_dir, ours_file = sys.argv[1:3]
t = load_file(ours_file)
model, info = AutoModelForCausalLM.from_pretrained(
    model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
)
model.eval()
mask = t["attention_mask"]
# Left padding: positions count real tokens only, as ours do.
position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
with torch.no_grad():
    logits = model(
        input_ids=t["input_ids"], attention_mask=mask, position_ids=position_ids
    ).logits
real = mask.bool().unsqueeze(-1).expand_as(logits)
err = (t["logits"] - logits).abs()
excess = (err - (1e-4 * logits.abs() + 1e-5)).masked_select(real).max().item()
report = {
    "architecture": type(model).__name__,
    "max_abs_err": err.masked_select(real).max().item(),
    "missing_keys": sorted(info["missing_keys"]),
    "unexpected_keys": sorted(info["unexpected_keys"]),
}
print(json.dumps(report))
sys.exit(0 if excess <= 0 and not report["missing_keys"] else 1)
