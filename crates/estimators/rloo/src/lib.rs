//! RLOO (Ahmadian et al. 2024, "Back to Basics"): REINFORCE on `n` samples
//! per prompt from the current policy, with the leave-one-out baseline
//! `b_i = mean_{j≠i} R_j` and the sequence-level KL-regularised reward
//! `R_i = r_i − τ·(log q_θ(y_i) − log p(y_i))`. Its expected gradient is
//! `∇ (E_q[r] − τ·KL(q‖p))`, whose maximiser is BRAIn's target
//! `p·exp(r/τ)/Z`.
//!
//! Loss: `−mean_i min(ρ_i A_i, clip(ρ_i, 1 ± ε) A_i)` with `A = R − b`
//! (detached) and `ρ_i = q_θ(y_i)/Q(y_i)`. On-policy (`refresh_every = 1`)
//! `ρ = 1`, and the gradient is exactly that of `−mean_i A_i log q_θ(y_i)`;
//! with older samples the clipped ratio is the PPO-style correction.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{DataPlan, Distribution, Estimator, GroupInputs, Metrics, Plugin, PluginError};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlooConfig {
    /// Samples per prompt (the leave-one-out baseline needs ≥ 2).
    #[serde(default = "default_n")]
    pub n: i64,
    /// KL weight τ on the raw reward: `R = r − τ·log(q/p)`. Unset: the
    /// manifest's goodness model sets the target, `R = log G − log(q/p)`
    /// (with `bt-exp`, `r/τ − log(q/p)`: the same target, the gradient in
    /// units of τ), so BRAIn and RLOO aim at the same `p·G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
    /// Sample from a frozen copy of the policy refreshed every this many
    /// steps (1: on-policy, as published).
    #[serde(default = "one")]
    pub refresh_every: usize,
    /// Clip ε of the importance ratio `q_θ/Q` (matters only for samples
    /// older than the current policy, `refresh_every > 1`).
    #[serde(default = "default_clip")]
    pub clip: f64,
}

fn default_n() -> i64 {
    4
}
fn one() -> usize {
    1
}
fn default_clip() -> f64 {
    0.2
}

pub struct Rloo(pub RlooConfig);

/// The RLOO loss over `[P, n]` groups (mean over samples and prompts) and
/// its metrics.
pub fn rloo_loss(inputs: &GroupInputs, config: &RlooConfig) -> (Tensor, Metrics) {
    let kind = inputs.policy_logp.kind();
    let n = inputs.policy_logp.size()[1];
    // No gradient through R: the policy's log-prob is detached here.
    let log_ratio = inputs.policy_logp.detach() - inputs.prior_logp.to_kind(kind); // [P, n]
    let reward = match config.tau {
        Some(tau) => inputs.reward.to_kind(kind) - &log_ratio * tau,
        None => inputs.log_goodness.to_kind(kind) - &log_ratio,
    }; // [P, n]
    let others = (reward.sum_dim_intlist([-1].as_slice(), true, None) - &reward) / (n - 1) as f64; // [P, n]
    let advantage = &reward - &others; // [P, n]
    let rho = (&inputs.policy_logp - inputs.proposal_logp.to_kind(kind)).exp(); // [P, n]
    let clipped = rho.clamp(1.0 - config.clip, 1.0 + config.clip);
    let surrogate = (&rho * &advantage).minimum(&(&clipped * &advantage)); // [P, n]
    let loss = -surrogate.mean(kind);

    let _guard = tch::no_grad_guard();
    let mean = |t: &Tensor| t.mean(Kind::Double).double_value(&[]);
    let mut m = Metrics::new();
    m.set("loss", loss.double_value(&[]));
    m.set("regularised_reward", mean(&reward));
    m.set("kl_to_prior", mean(&log_ratio));
    m.set("advantage_abs", mean(&advantage.abs()));
    let outside = (rho.detach() - 1.0).abs().gt(config.clip);
    m.set("clipped_fraction", mean(&outside.to_kind(Kind::Double)));
    (loss, m)
}

impl Estimator for Rloo {
    fn plan(&self) -> DataPlan {
        DataPlan::sample(Distribution::Proposal, self.0.n).refresh_every(self.0.refresh_every)
    }

    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics) {
        rloo_loss(inputs, &self.0)
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Estimator>, PluginError> {
    build_from_config(de, |c: &RlooConfig| {
        if c.n < 2 {
            return Err(PluginError::invalid(
                "n",
                format!(
                    "the leave-one-out baseline needs at least 2 samples per prompt, got {}",
                    c.n
                ),
            ));
        }
        align_core::manifest::limits::at_most(
            c.n,
            align_core::manifest::limits::MAX_SAMPLES,
            "samples per prompt",
        )
        .map_err(|e| PluginError::invalid("n", e))?;
        if let Some(tau) = c.tau.filter(|t| !(*t >= 0.0 && t.is_finite())) {
            return Err(PluginError::invalid(
                "tau",
                format!("must be ≥ 0, got {tau}"),
            ));
        }
        if c.refresh_every == 0 {
            return Err(PluginError::invalid(
                "refresh_every",
                "RLOO samples from the policy: refresh at least every step or every few (≥ 1)",
            ));
        }
        if !(c.clip > 0.0 && c.clip < 1.0) {
            return Err(PluginError::invalid(
                "clip",
                format!("must be in (0, 1), got {}", c.clip),
            ));
        }
        Ok(Box::new(Rloo(c.clone())) as Box<dyn Estimator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "rloo",
        description: "RLOO: REINFORCE on policy samples, leave-one-out baseline, KL-regularised reward",
        constructor: Constructor::Estimator(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(policy: &[f64], prior: &[f64], reward: &[f64], n: i64) -> GroupInputs {
        let p = policy.len() as i64 / n;
        let t = |xs: &[f64]| Tensor::from_slice(xs).view([p, n]);
        GroupInputs {
            policy_logp: t(policy).set_requires_grad(true),
            proposal_logp: t(policy),
            prior_logp: t(prior),
            log_goodness: t(reward) * 2.0,
            reward: t(reward),
            lengths: t(policy).ones_like(),
            reference_policy_logp: None,
        }
    }

    fn config(tau: Option<f64>) -> RlooConfig {
        RlooConfig {
            n: 3,
            tau,
            refresh_every: 1,
            clip: 0.2,
        }
    }

    /// One prompt by hand: log q = (−1, −2, −3), log p = (−1.5, −1.5, −2),
    /// r = (1, 0, 2), τ = 0.5: R = r − τ(log q − log p) = (0.75, 0.25, 2.5);
    /// baselines (leave one out) = (1.375, 1.625, 0.5); A = (−0.625, −1.375,
    /// 2.0). On-policy the loss is −mean A (ρ = 1) and ∂/∂ log q = −A/3.
    #[test]
    fn hand_computed_case() {
        let g = group(
            &[-1.0, -2.0, -3.0],
            &[-1.5, -1.5, -2.0],
            &[1.0, 0.0, 2.0],
            3,
        );
        let (loss, m) = rloo_loss(&g, &config(Some(0.5)));
        let a = [-0.625, -1.375, 2.0];
        assert!((loss.double_value(&[]) + a.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        assert!((m.get("regularised_reward").unwrap() - 3.5 / 3.0).abs() < 1e-12);
        loss.backward();
        let grad = Vec::<f64>::try_from(g.policy_logp.grad().view([-1])).unwrap();
        for (g, a) in grad.iter().zip(a) {
            assert!((g + a / 3.0).abs() < 1e-12, "{grad:?}");
        }
    }

    /// Without `tau`, the goodness model's log G stands in for r/τ.
    #[test]
    fn without_tau_the_goodness_sets_the_target() {
        let g = group(
            &[-1.0, -2.0, -3.0],
            &[-1.5, -1.5, -2.0],
            &[1.0, 0.0, 2.0],
            3,
        );
        let (a, _) = rloo_loss(&g, &config(None)); // log G = 2r: the target of τ = 0.5
        let (b, _) = rloo_loss(&g, &config(Some(0.5)));
        assert!((a.double_value(&[]) - 2.0 * b.double_value(&[])).abs() < 1e-12);
    }

    #[test]
    fn gradient_matches_finite_differences_off_policy_too() {
        let prior = [-1.0, -2.5, -0.5, -1.7, -3.0, -0.2];
        let reward = [0.3, 1.1, -0.4, 0.9, 0.0, 2.0];
        let x = [-1.2, -2.0, -0.9, -1.5, -2.8, -0.6];
        // Samples drawn by an older proposal: some ratios inside the clip
        // range, some outside.
        let proposal = [-1.25, -1.7, -0.9, -1.9, -2.8, -0.5];
        let build = |x: &[f64]| {
            let mut g = group(x, &prior, &reward, 3);
            g.proposal_logp = Tensor::from_slice(&proposal).view([2, 3]);
            g
        };
        let c = config(Some(0.3));
        let g = build(&x);
        let (loss, m) = rloo_loss(&g, &c);
        assert!(m.get("clipped_fraction").unwrap() > 0.0);
        loss.backward();
        let grad = Vec::<f64>::try_from(g.policy_logp.grad().view([-1])).unwrap();
        // The advantage carries no gradient: differentiate the surrogate with
        // the advantage held at its value at x.
        let eps = 1e-6;
        for k in 0..x.len() {
            let f = |d: f64| {
                let mut y = x;
                y[k] += d;
                surrogate_at(&build(&y), &build(&x), &c)
            };
            let numeric = (f(eps) - f(-eps)) / (2.0 * eps);
            assert!(
                (numeric - grad[k]).abs() < 1e-6,
                "coordinate {k}: autograd {} vs numeric {numeric}",
                grad[k]
            );
        }
    }

    /// The loss at policy log-probs `g.policy_logp` with the advantage taken
    /// at `at` (RLOO's advantage carries no gradient).
    fn surrogate_at(g: &GroupInputs, at: &GroupInputs, c: &RlooConfig) -> f64 {
        let n = at.policy_logp.size()[1];
        let log_ratio = at.policy_logp.detach() - &at.prior_logp;
        let r = &at.reward - log_ratio * c.tau.unwrap();
        let others = (r.sum_dim_intlist([-1].as_slice(), true, None) - &r) / (n - 1) as f64;
        let a = r - others;
        let rho = (&g.policy_logp - &g.proposal_logp).exp();
        let clipped = rho.clamp(1.0 - c.clip, 1.0 + c.clip);
        -(&rho * &a)
            .minimum(&(clipped * &a))
            .mean(Kind::Double)
            .double_value(&[])
    }
}
