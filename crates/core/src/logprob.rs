//! The one sequence log-prob kernel. Every estimator input (policy, prior,
//! proposal rescoring) and every evaluator goes through here.

use tch::{Kind, Tensor};

use crate::{Policy, SampleBatch, SamplingConfig};

/// Per-token log-probs of `input_ids` under `logits`, shifted by one.
/// `logits` `[B, T, V]` (position t predicts token t+1), `input_ids` `[B, T]`
/// → `[B, T-1]` in f32 (f64 if the logits are f64), entry t is log p(token t+1).
pub fn token_logprobs(logits: &Tensor, input_ids: &Tensor) -> Tensor {
    let t = input_ids.size()[1];
    let kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let logits = logits.narrow(1, 0, t - 1).to_kind(kind); // [B, T-1, V]
    let targets = input_ids.narrow(1, 1, t - 1); // [B, T-1]
    let picked = logits
        .gather(2, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1); // [B, T-1]
    let normaliser = logits.logsumexp([-1].as_slice(), false); // [B, T-1]
    picked - normaliser
}

/// Sum of completion-token log-probs: `completion_mask` `[B, T]` marks the
/// completion tokens (1) among prompt and padding (0) → `[B]`.
pub fn sequence_logprobs(logits: &Tensor, input_ids: &Tensor, completion_mask: &Tensor) -> Tensor {
    let tok = token_logprobs(logits, input_ids); // [B, T-1]
    let t = input_ids.size()[1];
    let mask = completion_mask.narrow(1, 1, t - 1).to_kind(tok.kind()); // [B, T-1]
    (tok * mask).sum_dim_intlist([-1].as_slice(), false, None)
}

/// Number of completion tokens per row `[B]` (for length normalisation).
pub fn completion_lengths(completion_mask: &Tensor) -> Tensor {
    completion_mask
        .to_kind(Kind::Float)
        .sum_dim_intlist([-1].as_slice(), false, None)
}

/// `log π(y|x)` of every sample in `batch` under `policy` → `[B]`.
/// Runs with gradient if the policy's parameters require it.
pub fn policy_logprobs(policy: &dyn Policy, batch: &SampleBatch) -> Tensor {
    policy.sequence_logprobs(
        &batch.input_ids,
        &batch.attention_mask,
        &batch.completion_mask,
    )
}

/// [`sequence_logprobs`] from hidden states, computing logits only where a
/// completion token is predicted: `hidden` `[B, T, H]`, `logits` maps
/// `[N, H]` → `[N, V]` → `[B]`. A prompt of Tp tokens then costs no
/// `[Tp, V]` logits, no softmax over them and no gradient through them.
pub fn completion_logprobs(
    hidden: &Tensor,
    logits: impl Fn(&Tensor) -> Tensor,
    input_ids: &Tensor,
    completion_mask: &Tensor,
) -> Tensor {
    let (b, t, h) = hidden.size3().expect("hidden is [B, T, H]");
    // Position t predicts token t + 1: the positions before a completion token.
    let predicts = completion_mask.narrow(1, 1, t - 1).reshape([-1]).ne(0); // [B·(T-1)]
    let at = predicts.nonzero().squeeze_dim(1); // [N]
    let states = hidden
        .narrow(1, 0, t - 1)
        .reshape([-1, h])
        .index_select(0, &at); // [N, H]
    let targets = input_ids
        .narrow(1, 1, t - 1)
        .reshape([-1])
        .index_select(0, &at); // [N]
    let logits = logits(&states); // [N, V]
    let kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let logits = logits.to_kind(kind);
    let picked = logits
        .gather(1, &targets.unsqueeze(1), false)
        .squeeze_dim(1); // [N]
    let token = picked - logits.logsumexp([-1].as_slice(), false); // [N]
    let rows = at.divide_scalar_mode(t - 1, "floor"); // [N]
    Tensor::zeros([b], (kind, hidden.device())).index_add(0, &rows, &token)
}

/// `log Q(y|x)` of every sample in `batch` under the distribution that
/// `config` (temperature, top-k, top-p) makes of `policy`: the density the
/// sampler records, recomputed for samples drawn elsewhere (mixtures) → `[B]`.
pub fn sampling_logprobs(
    policy: &dyn Policy,
    batch: &SampleBatch,
    config: &SamplingConfig,
) -> Tensor {
    let logits = policy.forward(&batch.input_ids, &batch.attention_mask); // [B, T, V]
    let (b, t, v) = logits.size3().expect("logits are [B, T, V]");
    let logq = config
        .sampling_logprobs(&logits.view([b * t, v]))
        .view([b, t, v]); // [B, T, V]
    let tok = logq
        .narrow(1, 0, t - 1)
        .gather(2, &batch.input_ids.narrow(1, 1, t - 1).unsqueeze(-1), false)
        .squeeze_dim(-1); // [B, T-1]
    let mask = batch
        .completion_mask
        .narrow(1, 1, t - 1)
        .to_kind(tok.kind());
    // Masked positions may hold −∞ (filtered tokens); zero them before summing.
    tok.where_self(&mask.ne(0.0), &tok.zeros_like())
        .sum_dim_intlist([-1].as_slice(), false, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_prompt_and_padding_and_shifts_by_one() {
        // Two rows, T = 4, V = 3. Row 0: prompt [0], completion [1, 2], pad.
        let logits = Tensor::randn([2, 4, 3], (Kind::Double, tch::Device::Cpu));
        let ids = Tensor::from_slice(&[0i64, 1, 2, 0, 2, 2, 1, 0]).view([2, 4]);
        let cmask = Tensor::from_slice(&[0i64, 1, 1, 0, 0, 0, 1, 1]).view([2, 4]);
        let got = sequence_logprobs(&logits, &ids, &cmask);
        let lsm = logits.log_softmax(-1, Kind::Double);
        let lp = |b: i64, t: i64, v: i64| lsm.double_value(&[b, t, v]);
        let want0 = lp(0, 0, 1) + lp(0, 1, 2);
        let want1 = lp(1, 1, 1) + lp(1, 2, 0);
        assert!((got.double_value(&[0]) - want0).abs() < 1e-12);
        assert!((got.double_value(&[1]) - want1).abs() < 1e-12);
    }

    /// Logits for the completion positions alone give the full computation's
    /// log-probs and gradients; a row with no completion token gets 0.
    #[test]
    fn completion_positions_alone_give_the_same_logprobs_and_gradients() {
        tch::manual_seed(3);
        let opts = (Kind::Double, tch::Device::Cpu);
        let hidden = Tensor::randn([3, 5, 4], opts).set_requires_grad(true);
        let head = Tensor::randn([7, 4], opts).set_requires_grad(true);
        let ids =
            Tensor::from_slice(&[0i64, 3, 6, 1, 2, 5, 5, 2, 0, 0, 4, 4, 4, 4, 4]).view([3, 5]);
        let cmask =
            Tensor::from_slice(&[0i64, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]).view([3, 5]);
        let full = sequence_logprobs(&hidden.matmul(&head.tr()), &ids, &cmask);
        let part = completion_logprobs(&hidden, |h| h.matmul(&head.tr()), &ids, &cmask);
        assert!(
            part.allclose(&full, 1e-12, 1e-12, false),
            "{part:?} vs {full:?}"
        );
        assert_eq!(part.double_value(&[2]), 0.0);
        let grads = |y: Tensor| {
            let g = Tensor::run_backward(&[y.sum(Kind::Double)], &[&hidden, &head], false, false);
            (g[0].shallow_clone(), g[1].shallow_clone())
        };
        let (gh_full, gw_full) = grads(full);
        let (gh_part, gw_part) = grads(part);
        assert!(gh_part.allclose(&gh_full, 1e-12, 1e-12, false));
        assert!(gw_part.allclose(&gw_full, 1e-12, 1e-12, false));
    }
}
