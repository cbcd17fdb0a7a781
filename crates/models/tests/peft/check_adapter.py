#!/usr/bin/env python3
"""Loads an adapter this crate saved onto its base model with PEFT and
compares the logits with the ones this crate computed.

    python check_adapter.py BASE_DIR ADAPTER_DIR OURS.safetensors

OURS.safetensors holds `input_ids`, `attention_mask`, `position_ids` and
`logits` (the adapted model's, from Rust). Prints one JSON line (the largest
error over real positions, and the largest change the adapter makes to the
base logits, so a no-op adapter cannot pass unnoticed) and exits 1 if any
|ours - peft| > 1e-4 * |peft| + 1e-5. Run by crates/models/tests/lora.rs
when `peft` is importable (torch 2.11.0, transformers 5.24.0, peft 0.21.2
here), f32 on the CPU with eager attention.
"""

import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

base_dir, adapter_dir, ours_file = sys.argv[1:4]
t = load_file(ours_file)
model = AutoModelForCausalLM.from_pretrained(
    base_dir, dtype=torch.float32, attn_implementation="eager"
)
model.eval()
inputs = dict(
    input_ids=t["input_ids"], attention_mask=t["attention_mask"], position_ids=t["position_ids"]
)
with torch.no_grad():
    base = model(**inputs).logits
peft = PeftModel.from_pretrained(model, adapter_dir)
peft.eval()
with torch.no_grad():
    logits = peft(**inputs).logits
real = t["attention_mask"].bool().unsqueeze(-1).expand_as(logits)
err = (t["logits"] - logits).abs()
excess = (err - (1e-4 * logits.abs() + 1e-5)).masked_select(real).max().item()
report = {
    "max_abs_err": err.masked_select(real).max().item(),
    "adapter_effect": (logits - base).abs().masked_select(real).max().item(),
    "peft_modules": sum(1 for n, _ in peft.named_modules() if n.endswith("lora_A")),
}
print(json.dumps(report))
sys.exit(0 if excess <= 0 and report["adapter_effect"] > 1e-3 else 1)
