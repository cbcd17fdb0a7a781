#!/usr/bin/env python3
"""Writes a random-initialised Llama-family HF directory (config.json,
model.safetensors, the tiny fixture tokenizer) of a named shape, so the GPU
check can time real model sizes without carrying any weights:

    python benches/peer/random_model.py --shape smollm2-135m --out DIR
    python benches/peer/random_model.py --shape llama-1b --dtype bf16 --device cuda --out DIR
    python benches/peer/random_model.py --shape llama-1b --layers 2 --vocab 8192 --out DIR  # CPU try-out

Weights are N(0, 0.02) (norms 1), seeded; the tokenizer is
tests/fixtures/tiny-llama's (300 ids, below every shape's vocabulary), so
prompts tokenize the same for the runner and for transformers. Only torch is
needed: the safetensors file is written directly when the `safetensors`
package is missing (its format is an 8-byte header length, a JSON header and
the raw little-endian tensors).
"""

import argparse
import json
import os
import shutil
import struct

import torch

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct's config.
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         rope_theta=100000.0, tie_word_embeddings=True),
    # meta-llama/Llama-3.2-1B's shape (1.24B parameters).
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     rope_theta=500000.0, tie_word_embeddings=True),
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "tiny-llama")


def tensors(cfg, dtype, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // heads

    def normal(*shape):
        return (torch.randn(*shape, generator=gen, device=device) * 0.02).to(dtype)

    out = {"model.embed_tokens.weight": normal(cfg["vocab_size"], h),
           "model.norm.weight": torch.ones(h, dtype=dtype, device=device)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = torch.ones(h, dtype=dtype, device=device)
        out[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=dtype, device=device)
        out[p + "self_attn.q_proj.weight"] = normal(heads * hd, h)
        out[p + "self_attn.k_proj.weight"] = normal(kv * hd, h)
        out[p + "self_attn.v_proj.weight"] = normal(kv * hd, h)
        out[p + "self_attn.o_proj.weight"] = normal(h, heads * hd)
        out[p + "mlp.gate_proj.weight"] = normal(inter, h)
        out[p + "mlp.up_proj.weight"] = normal(inter, h)
        out[p + "mlp.down_proj.weight"] = normal(h, inter)
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = normal(cfg["vocab_size"], h)
    return out


def save(named, path):
    named = {k: v.contiguous().cpu() for k, v in named.items()}
    try:
        from safetensors.torch import save_file
        save_file(named, path, metadata={"format": "pt"})
        return
    except ImportError:
        pass
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for k, v in named.items():
        raw = v.view(torch.uint8).numpy().tobytes() if v.numel() else b""
        header[k] = {"dtype": names[v.dtype], "shape": list(v.shape),
                     "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--device", default="cpu", help="where to draw the weights (cuda is faster)")
    ap.add_argument("--layers", type=int, help="cut the depth (CPU try-outs)")
    ap.add_argument("--vocab", type=int, help="cut the vocabulary (CPU try-outs; ≥ 300)")
    ap.add_argument("--max-positions", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    shape = dict(SHAPES[a.shape])
    if a.layers:
        shape["num_hidden_layers"] = a.layers
    if a.vocab:
        shape["vocab_size"] = max(a.vocab, 300)
    theta = shape.pop("rope_theta")
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
               rms_norm_eps=1e-5, max_position_embeddings=a.max_positions,
               head_dim=shape["hidden_size"] // shape["num_attention_heads"],
               attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=2,
               pad_token_id=0, rope_theta=theta, torch_dtype={"f32": "float32", "bf16": "bfloat16",
                                                              "f16": "float16"}[a.dtype],
               **shape)
    os.makedirs(a.out, exist_ok=True)
    named = tensors(cfg, DTYPES[a.dtype], a.device, a.seed)
    save(named, os.path.join(a.out, "model.safetensors"))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURE, name), os.path.join(a.out, name))
    params = sum(t.numel() for t in named.values())
    print(json.dumps({"shape": a.shape, "dir": a.out, "params": params, "dtype": a.dtype,
                      "layers": cfg["num_hidden_layers"], "vocab": cfg["vocab_size"]}))


if __name__ == "__main__":
    main()
