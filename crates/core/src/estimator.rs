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
}

pub trait Estimator: Send + Sync {
    /// Samples drawn per prompt (`n`).
    fn samples_per_prompt(&self) -> i64;

    /// Refresh the proposal to the current policy every K steps (`None`: the
    /// proposal stays the prior).
    fn proposal_refresh_every(&self) -> Option<usize> {
        None
    }

    /// Scalar loss to minimise (mean over prompts) and metrics for logging.
    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics);
}
