"""What the peer benchmarks share: peak RSS, the GGUF policy loaded through
transformers, sequence log-probs, the sentiment classifier reward model and
the GEMM rate. Every figure mirrors a field of the matching `runner bench-*`
JSON line (crates/runner/src/bench.rs)."""

import re
import statistics
import time
from pathlib import Path

import torch
import transformers


def _status_mib(field):
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) / 1024 if m else None


def peak_rss_mib():
    """VmHWM: peak resident memory so far (or since reset_peak_rss), MiB."""
    return _status_mib("VmHWM:")


def rss_mib():
    return _status_mib("VmRSS:")


def reset_peak_rss():
    """Restarts the VmHWM count from the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def load_policy(gguf):
    """The GGUF through transformers' own GGUF support (gguf-py dequantizes
    it), in f32, and its tokenizer."""
    path = Path(gguf).expanduser()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return tok, model


def left_pad(rows, pad_id):
    """Left-padded ids and attention mask [B, T] of token-id lists."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, t - len(r):] = 1
    return ids, mask


def selective_log_softmax(logits, index):
    """log_softmax(logits)[..., index] without materialising the whole
    log-softmax (TRL's trl.trainer.utils.selective_log_softmax for f32)."""
    picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(model, ids, mask, completion_mask, logits_to_keep=None):
    """Sum of completion-token log-probs [B]. `logits_to_keep` (TRL's GRPO
    idiom) computes the LM head only over the last positions, which must
    cover every completion token."""
    if logits_to_keep is None:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # [B, T-1, V]
        targets, cmask = ids[:, 1:], completion_mask[:, 1:]
    else:
        k = logits_to_keep
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=k + 1).logits[:, :-1]
        targets, cmask = ids[:, -k:], completion_mask[:, -k:]
    tok = selective_log_softmax(logits.float(), targets)
    return (tok * cmask).sum(-1)


class ClassifierRm:
    """The sentiment classifier reward model as crates/rewards/src/scalar.rs
    reads it: a BERT body (BertModel, no pooler), the mean of the last hidden
    states over the tokens it is given (`"brain_rs_pooling": "mean"` in
    config.json), and the `classifier` linear head; one label, so the reward
    is its logit.

    Texts are tokenised as the `tokenizers` library applies the directory's
    tokenizer.json: special tokens added and, when tokenizer.json says so
    (the MiniLM one says `"padding": {"strategy": {"Fixed": 128}}`), padded
    with [PAD] to that length. scalar.rs marks every id the tokenizer returns
    as a real token (attention mask 1), so the pads are attended and averaged
    over: this does the same, and reproduces `runner score` to float
    rounding. The reward model was trained reading them so."""

    def __init__(self, path, max_len=512):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(path).expanduser()
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.body = transformers.BertModel.from_pretrained(path, add_pooling_layer=False)
        self.body.eval()
        weights = load_file(str(path / "model.safetensors"))
        w, b = weights["classifier.weight"], weights["classifier.bias"]
        self.head = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)
        self.max_len = max_len

    @torch.no_grad()
    def score(self, texts):
        rows = []
        for e in self.tok.encode_batch(texts, add_special_tokens=True):
            ids = e.ids
            if len(ids) > self.max_len:  # keep the final [SEP], as scalar.rs does
                ids = ids[: self.max_len - 1] + ids[-1:]
            rows.append(ids)
        t = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), t), dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        h = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return self.head(pooled)[:, 0]


def load_policy_dir(path, dtype=torch.float32, device="cpu"):
    """An HF directory (config.json, model.safetensors, tokenizer) in `dtype`
    on `device`, and its tokenizer: the GPU check's random models."""
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return tok, model


def sync(device):
    """Waits for queued device work, so a timer reads finished work."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def gemm_rate(sizes, seconds, device="cpu", dtype=torch.float32):
    """This machine's GEMM rate (GFLOP/s) in `dtype` (f32 by default), as
    `runner bench-step` measures it: square matmuls repeated for `seconds`
    per size; the fastest single matmul of the best size, and each size's
    [n, fastest, mean]."""
    each = []
    with torch.no_grad():
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            a @ b  # warm-up
            sync(device)
            flop = 2 * n**3
            start, reps, fastest = time.perf_counter(), 0, float("inf")
            while reps == 0 or time.perf_counter() - start < seconds:
                t = time.perf_counter()
                a @ b
                sync(device)
                fastest = min(fastest, time.perf_counter() - t)
                reps += 1
            mean = (time.perf_counter() - start) / reps
            each.append([n, flop / fastest / 1e9, flop / mean / 1e9])
    return max(r for _, r, _ in each), each
