//! Estimators are pure functions of sequence log-prob tensors: they never see
//! logits or models, so each one is a small, testable loss function.

use tch::Tensor;

use crate::Metrics;

/// Per-prompt groups of `n` samples: every tensor is `[P, n]`, f32 or f64.
pub struct GroupInputs {
    /// `log q_θ(y|x)` under the policy being trained (carries the gradient).
    pub policy_logp: Tensor,
    /// `log Q(y|x)` under the exact distribution the samples were drawn from.
    pub proposal_logp: Tensor,
    /// `log p(y|x)` under the prior / reference policy.
    pub prior_logp: Tensor,
    /// `log p(G = 1 | x, y)` from the goodness model.
    pub log_goodness: Tensor,
    /// Raw reward-model scores (ranking-based estimators use these).
    pub reward: Tensor,
    /// Completion lengths in tokens (for length normalisation).
    pub lengths: Tensor,
    /// `log q_θ(y_ref|x)` `[P]` of each prompt's reference (gold / SFT) output,
    /// when the estimator asked for it ([`Estimator::needs_reference`]).
    pub reference_policy_logp: Option<Tensor>,
}

impl GroupInputs {
    /// Keeps the samples at `index` `[P, k]` of every `[P, n]` tensor.
    pub fn select(&self, index: &Tensor) -> GroupInputs {
        let pick = |t: &Tensor| t.gather(1, index, false);
        GroupInputs {
            policy_logp: pick(&self.policy_logp),
            proposal_logp: pick(&self.proposal_logp),
            prior_logp: pick(&self.prior_logp),
            log_goodness: pick(&self.log_goodness),
            reward: pick(&self.reward),
            lengths: pick(&self.lengths),
            reference_policy_logp: self
                .reference_policy_logp
                .as_ref()
                .map(Tensor::shallow_clone),
        }
    }
}

pub trait Estimator: Send + Sync {
    /// Samples drawn per prompt (`n`).
    fn samples_per_prompt(&self) -> i64;

    /// Refresh the proposal to the current policy every K steps (`None`: the
    /// proposal stays the prior).
    fn proposal_refresh_every(&self) -> Option<usize> {
        None
    }

    /// Once the proposal has been refreshed, draw this fraction of each
    /// prompt's samples from the prior and the rest from the proposal; every
    /// sample's `proposal_logp` is then the mixture density.
    fn prior_fraction(&self) -> f64 {
        0.0
    }

    /// Train on the task's preference pairs (chosen first, rejected second,
    /// `reward` 1 and 0) instead of sampling: DPO's "direct" mode.
    fn uses_dataset_pairs(&self) -> bool {
        false
    }

    /// Whether [`GroupInputs::reference_policy_logp`] must be filled in (the
    /// task must then provide reference outputs).
    fn needs_reference(&self) -> bool {
        false
    }

    /// Chooses which of the `n` samples per prompt to train on, from their
    /// rewards `[P, n]` (e.g. RSO's rejection sampler), before the policy
    /// scores them: indices `[P, k]`. `None` keeps all. Deterministic in `seed`.
    fn subsample(&self, _reward: &Tensor, _seed: u64) -> Option<Tensor> {
        None
    }

    /// Scalar loss to minimise (mean over prompts) and metrics for logging.
    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics);
}

/// Which reward-ranked pairs to build from each prompt's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairs {
    /// One pair per prompt: highest- against lowest-reward sample.
    BestVsWorst,
    /// Every ordered pair with distinct rewards.
    All,
}

/// Reward-ranked pairs over `[P, n]` groups, as masks for pairwise losses.
///
/// Returns `valid` `[P, n, n]` (1 where sample i is chosen over sample j) so a
/// pairwise loss `f(x_i, x_j)` evaluated on `x.unsqueeze(2), x.unsqueeze(1)`
/// is averaged as `(f · valid).sum() / valid.sum()`.
pub fn pair_mask(reward: &Tensor, pairs: Pairs) -> Tensor {
    let reward = reward.detach();
    let kind = reward.kind();
    let better = reward.unsqueeze(2).gt_tensor(&reward.unsqueeze(1)); // [P, n, n]
    match pairs {
        Pairs::All => better.to_kind(kind),
        Pairs::BestVsWorst => {
            let n = reward.size()[1];
            let best = reward.argmax(-1, false).one_hot(n).unsqueeze(2); // [P, n, 1]
            let worst = reward.argmin(-1, false).one_hot(n).unsqueeze(1); // [P, 1, n]
            (best * worst).to_kind(kind) * better.to_kind(kind)
        }
    }
}

/// Mean of a pairwise quantity `[P, n, n]` over the pairs in `valid`.
pub fn pair_mean(values: &Tensor, valid: &Tensor) -> Tensor {
    let kind = values.kind();
    (values * valid).sum(kind) / valid.sum(kind).clamp_min(1.0)
}
