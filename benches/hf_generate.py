#!/usr/bin/env python3
"""HF transformers `generate` throughput on the same model, batch, length and
thread count as `runner bench` (see benches/sampling.sh, which runs both).

Loads the GGUF through transformers' own GGUF support (gguf-py dequantizes it
to f32; `--dtype bf16` then casts the model to bf16), samples `batch` rows of
`new_tokens` tokens from one prompt with temperature 1 and no top-k/top-p
(transformers' default top_k=50 is turned off), never stopping at EOS, and
prints one JSON line like `runner bench`. `--model-dir DIR` loads an HF
directory instead (the GPU check's random models), on `--device`.
"""

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf")
    src.add_argument("--model-dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--prompt", default="What is the capital of France?")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    if a.model_dir:
        path = Path(a.model_dir)
        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        path = Path(a.gguf)
        tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype,
        )
    model.to(a.device).eval()
    ids = tok(a.prompt, return_tensors="pt").input_ids.repeat(a.batch, 1).to(a.device)
    mask = torch.ones_like(ids)
    cuda = a.device.startswith("cuda")

    def run(seed):
        torch.manual_seed(seed)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                top_k=0, top_p=1.0, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            )
        if cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - start
        new = out.shape[1] - ids.shape[1]
        assert new == a.new_tokens, new
        return a.batch * new / secs

    run(0)  # warm-up
    rates = sorted(run(s) for s in range(1, a.repeats + 1))
    print(json.dumps({
        "impl": f"transformers {transformers.__version__} generate (torch {torch.__version__})",
        "model": str(path), "dtype": {"f32": "F32", "bf16": "Bf16"}[a.dtype], "threads": torch.get_num_threads(),
        "batch": a.batch, "new_tokens": a.new_tokens, "prompt_tokens": ids.shape[1],
        "tokens_per_s": statistics.median(rates), "runs_tokens_per_s": rates,
        "bench": "sampling", "peak_rss_mb": peak_rss_mib(), "device": a.device,
    }))


def peak_rss_mib():
    """VmHWM (peak resident memory) in MiB, as `runner bench` reports it."""
    try:
        m = re.search(r"^VmHWM:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) / 1024 if m else None


if __name__ == "__main__":
    main()
