#!/usr/bin/env python3
"""HF transformers `generate` throughput on the same model, batch, length and
thread count as `runner bench` (see benches/sampling.sh, which runs both).

Loads the GGUF through transformers' own GGUF support (gguf-py dequantizes it
to f32), samples `batch` rows of `new_tokens` tokens from one prompt with
temperature 1 and no top-k/top-p (transformers' default top_k=50 is turned
off), never stopping at EOS, and prints one JSON line like `runner bench`.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", default="What is the capital of France?")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    path = Path(a.gguf)
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    ids = tok(a.prompt, return_tensors="pt").input_ids.repeat(a.batch, 1)
    mask = torch.ones_like(ids)

    def run(seed):
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                top_k=0, top_p=1.0, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            )
        secs = time.perf_counter() - start
        new = out.shape[1] - ids.shape[1]
        assert new == a.new_tokens, new
        return a.batch * new / secs

    run(0)  # warm-up
    rates = sorted(run(s) for s in range(1, a.repeats + 1))
    print(json.dumps({
        "impl": f"transformers {transformers.__version__} generate (torch {torch.__version__})",
        "model": str(path), "dtype": "F32", "threads": torch.get_num_threads(),
        "batch": a.batch, "new_tokens": a.new_tokens, "prompt_tokens": ids.shape[1],
        "tokens_per_s": statistics.median(rates), "runs_tokens_per_s": rates,
    }))


if __name__ == "__main__":
    main()
