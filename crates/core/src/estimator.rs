//! Estimators are pure functions of sequence log-prob tensors: they never see
//! logits or models, so each one is a small, testable loss function. What
//! data they read is a value, their [`DataPlan`].

use tch::Tensor;

use crate::plan::DataPlan;
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
    /// when the estimator's plan asks for it ([`DataPlan::reference_logp`]).
    pub reference_policy_logp: Option<Tensor>,
}

/// An estimator: the data it trains on, declared once, and a pure loss over
/// that data. The training loop reads nothing else from it.
pub trait Estimator: Send + Sync {
    /// What each step's [`GroupInputs`] hold: how many candidates per prompt,
    /// from which distribution, which subset the loss reads, whether it needs
    /// the reference outputs.
    fn plan(&self) -> DataPlan;

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
