#!/usr/bin/env python3
"""One BRAIn or DPO-sft iteration of experiments/sentiment.toml written the
way a PyTorch + transformers (TRL-style) trainer writes it, timed like
`runner bench-iteration` (crates/runner/src/bench.rs) and printing the same
JSON fields.

An iteration, for P prompts (the ones `runner bench-iteration
--prompts-out` wrote, so both sides see the same prompts) × n samples:

- sample: `model.generate(do_sample=True, temperature=1, top_k=0, top_p=1,
  num_return_sequences=n)` from the proposal (BRAIn: the prior, then a
  deep copy of the policy every `refresh_every` steps; DPO-sft: the prior),
  up to `max_new_tokens`, stopping at EOS; BRAIn reads log Q(y|x) from
  generate's scores (`compute_transition_scores`), as the Rust sampler
  records it;
- score: the sentiment classifier RM (BERT body, mean pooling, linear head,
  as crates/rewards/src/scalar.rs) on the decoded completions;
  log G = log σ(r) / τ;
- prior log-probs: a no-grad forward of the frozen reference copy, except
  where the samples came from the prior itself by plain sampling (DPO-sft;
  BRAIn before its first refresh): then generate's scores are log p already
  and are reused, as brain-rs's batcher reuses its sampler's
  (`--no-reuse-sampler-logprobs` always runs the forward, as TRL does);
- policy forward with gradient, the loss, backward, `torch.optim.Adam`
  (PyTorch's defaults: β = (0.9, 0.999), ε = 1e-8, no weight decay), as
  align_core::optim.

Both compute logits at the completion positions only (`logits_to_keep`, as
TRL's GRPO trainer does and its DPO trainer's `use_logits_to_keep`; the Rust
side does the same). BRAIn follows TRL's GRPO trainer: log-probs of all P·n
samples, loss −Σ α log β (../shared/ALGORITHMS.md). DPO-sft follows TRL's
DPO trainer: the reward's best and worst sample of each prompt (prompts
whose samples all tie carry no pair, as in align_core::pair_mask) as chosen
/ rejected, one concatenated forward of the 2·pairs sequences (the Rust
loop forwards all P·n samples and masks the pairs in the loss), sigmoid
loss with β.
"""

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F

from common import (ClassifierRm, left_pad, load_policy, median, peak_rss_mib,
                    reset_peak_rss, rss_mib, sequence_logprobs, versions)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--rm", required=True, help="the classifier reward model's HF directory")
    ap.add_argument("--prompts", required=True,
                    help="JSONL of {step, n, prompts}: runner bench-iteration --prompts-out")
    ap.add_argument("--estimator", choices=["brain", "dpo"], required=True)
    ap.add_argument("--run", default=None, help="the name to report")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--tau", type=float, default=0.25, help="classifier goodness temperature")
    ap.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
    ap.add_argument("--refresh-every", type=int, default=4, help="BRAIn's proposal refresh")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-reuse-sampler-logprobs", dest="reuse", action="store_false",
                    help="always run the reference forward for the prior log-probs, as TRL "
                         "does, even where the samples came from the prior itself")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    started = time.perf_counter()

    steps = [json.loads(line) for line in open(a.prompts) if line.strip()]
    tok, policy = load_policy(a.gguf)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.train()
    rm = ClassifierRm(a.rm)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    opt = torch.optim.Adam(policy.parameters(), lr=a.lr)
    proposal = ref
    load_seconds = time.perf_counter() - started
    rss_loaded, peak_load = rss_mib(), peak_rss_mib()
    reset = reset_peak_rss()

    records, losses = [], []
    for step in range(a.warmup + a.iterations):
        ph = dict.fromkeys(["refresh", "sample", "score", "prior_logprobs", "policy_forward",
                            "backward_step"], 0.0)
        t0 = time.perf_counter()
        if a.estimator == "brain" and a.refresh_every > 0 and step > 0 and step % a.refresh_every == 0:
            proposal = copy.deepcopy(policy).eval().requires_grad_(False)
        t1 = time.perf_counter()
        ph["refresh"] = t1 - t0

        prompts = steps[step % len(steps)]["prompts"]
        p, n = len(prompts), a.n
        ids, mask = left_pad(prompts, pad)
        torch.manual_seed(a.seed * 1_000_003 + step)
        with torch.no_grad():
            out = proposal.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, max_new_tokens=a.max_new_tokens, num_return_sequences=n,
                pad_token_id=pad, eos_token_id=eos, return_dict_in_generate=True,
                output_scores=a.estimator == "brain" or a.reuse,
            )
        seq = out.sequences  # [P·n, Tp + L], prompt-major
        tp = ids.shape[1]
        completion = seq[:, tp:]
        is_eos = completion == eos
        # Completion tokens up to and including the first EOS.
        cmask_c = ((is_eos.long().cumsum(1) - is_eos.long()) == 0).long()
        attn = torch.cat([mask.repeat_interleave(n, 0), cmask_c], 1)
        cmask = torch.cat([torch.zeros_like(mask.repeat_interleave(n, 0)), cmask_c], 1)
        if a.estimator == "brain" or a.reuse:
            with torch.no_grad():
                step_logq = proposal.compute_transition_scores(seq, out.scores,
                                                               normalize_logits=True)
                logq = (step_logq.masked_fill(cmask_c == 0, 0.0)).sum(1)  # [P·n]
        # Plain sampling from the prior: what generate scored is log p itself.
        from_prior = a.reuse and proposal is ref
        texts = tok.batch_decode(completion.masked_fill(cmask_c == 0, pad),
                                 skip_special_tokens=True)
        t2 = time.perf_counter()
        ph["sample"] = t2 - t1

        reward = rm.score(texts)  # [P·n]
        t3 = time.perf_counter()
        ph["score"] = t3 - t2
        length = completion.shape[1]

        if a.estimator == "brain":
            if from_prior:
                prior_logp = logq
            else:
                with torch.no_grad():
                    prior_logp = sequence_logprobs(ref, seq, attn, cmask, logits_to_keep=length)
            t4 = time.perf_counter()
            policy_logp = sequence_logprobs(policy, seq, attn, cmask, logits_to_keep=length)
            t5 = time.perf_counter()
            log_g = F.logsigmoid(reward) / a.tau
            log_w = (prior_logp + log_g - logq).view(p, n)
            alpha = log_w.log_softmax(-1).exp()
            log_beta = (policy_logp - logq).view(p, n).log_softmax(-1)
            loss = -(alpha * log_beta).sum(-1).mean()
        else:
            r = reward.view(p, n)
            best, worst = r.argmax(1), r.argmin(1)
            keep = r.gather(1, best[:, None])[:, 0] > r.gather(1, worst[:, None])[:, 0]
            base = torch.arange(p) * n
            chosen, rejected = (base + best)[keep], (base + worst)[keep]
            rows = torch.cat([chosen, rejected])
            k = len(chosen)
            if from_prior:
                ref_logp = logq[rows]
            else:
                with torch.no_grad():
                    ref_logp = sequence_logprobs(ref, seq[rows], attn[rows], cmask[rows],
                                                 logits_to_keep=length)
            t4 = time.perf_counter()
            pol_logp = sequence_logprobs(policy, seq[rows], attn[rows], cmask[rows],
                                         logits_to_keep=length)
            t5 = time.perf_counter()
            margin = (pol_logp[:k] - ref_logp[:k]) - (pol_logp[k:] - ref_logp[k:])
            loss = -F.logsigmoid(a.beta * margin).mean() if k > 0 else pol_logp.sum() * 0.0
        ph["prior_logprobs"] = t4 - t3
        ph["policy_forward"] = t5 - t4
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        ph["backward_step"] = t6 - t5
        losses.append(loss.item())
        records.append({
            "total": t6 - t0, "phases": ph, "rows": int(seq.shape[0]),
            "completion_tokens": int(cmask_c.sum()), "sequence_length": int(seq.shape[1]),
        })

    peak_iter = peak_rss_mib()
    timed = records[a.warmup:]
    seconds = [r["total"] for r in timed]
    names = list(timed[0]["phases"])
    print(json.dumps({
        "impl": "pytorch+transformers",
        "versions": versions(),
        "bench": "iteration",
        "run": a.run or {"brain": "BRAIn", "dpo": "DPO-sft"}[a.estimator],
        "estimator": a.estimator,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "seed": a.seed,
        "lr": a.lr,
        "optimizer": "adam",
        "reuse_sampler_logprobs": a.reuse,
        "prompts_per_step": len(steps[0]["prompts"]),
        "samples_per_prompt": a.n,
        "max_new_tokens": a.max_new_tokens,
        "refresh_every": a.refresh_every if a.estimator == "brain" else None,
        "warmup": a.warmup,
        "iterations": a.iterations,
        "seconds_per_iteration": median(seconds),
        "iteration_seconds": seconds,
        "phases": {k: median([r["phases"][k] for r in timed]) for k in names},
        "phase_seconds": {k: [r["phases"][k] for r in timed] for k in names},
        "rows": [r["rows"] for r in timed],
        "completion_tokens": [r["completion_tokens"] for r in timed],
        "sequence_length": [r["sequence_length"] for r in timed],
        "loss": losses,
        "load_seconds": load_seconds,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_load_mb": peak_load,
        "peak_rss_iter_mb": peak_iter if reset else None,
        "peak_rss_mb": max(x for x in (peak_load, peak_iter) if x is not None),
    }))


if __name__ == "__main__":
    main()
