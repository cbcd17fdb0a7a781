//! BRAIn (Pandey et al., ICML 2024): distil the reward-conditioned posterior
//! `p(y|x)·p(G=1|x,y)/Z` into the policy by self-normalised importance sampling
//! over `n` proposal samples per prompt, with the self-normalised baseline.
//! See ALGORITHMS.md for the formulas implemented here.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{DataPlan, Distribution, Estimator, GroupInputs, Metrics, Plugin, PluginError};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// BRAIn: weights `α_i − β_i` (self-normalised policy ratios as baseline).
    SelfNormalized,
    /// DPG (Khalifa et al. 2021): weights `α_i`.
    None,
    /// GDC++ (Korbak et al. 2022): weights `α_i − w'_i / n`, `w'_i = q_θ(y_i)/Q(y_i)`.
    Importance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// α = softmax of the log importance weights.
    Softmax,
    /// α = one-hot on the sample with the largest importance weight.
    Argmax,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrainConfig {
    /// Samples per prompt.
    #[serde(default = "default_n")]
    pub n: i64,
    #[serde(default = "default_baseline")]
    pub baseline: Baseline,
    #[serde(default = "default_target")]
    pub target: Target,
    /// Refresh the proposal to the current policy every this many steps
    /// (0: keep sampling from the prior).
    #[serde(default)]
    pub refresh_every: usize,
    /// Divide the policy, proposal and prior sequence log-probs by the
    /// completion length before forming the weights.
    #[serde(default)]
    pub length_normalize: bool,
    /// After a refresh, pool samples: this fraction of the `n` from the prior,
    /// the rest from the refreshed proposal, weighted by the mixture density.
    #[serde(default)]
    pub prior_fraction: f64,
}

fn default_n() -> i64 {
    8
}
fn default_baseline() -> Baseline {
    Baseline::SelfNormalized
}
fn default_target() -> Target {
    Target::Softmax
}

pub struct Brain(pub BrainConfig);

/// The BRAIn loss over `[P, n]` groups (mean over prompts) and its metrics.
///
/// `L = −Σ_i α_i log β_i` with `α = softmax(log p + log G − log Q)` (no gradient)
/// and `β = softmax(log q_θ − log Q)`; its gradient is `−Σ_i (α_i − β_i) ∇ log q_θ(y_i)`.
pub fn brain_loss(inputs: &GroupInputs, baseline: Baseline, target: Target) -> (Tensor, Metrics) {
    let n = inputs.policy_logp.size()[1];
    let kind = inputs.policy_logp.kind();
    let log_w = (&inputs.prior_logp + &inputs.log_goodness - &inputs.proposal_logp)
        .detach()
        .to_kind(kind); // [P, n]
    let log_alpha = log_w.log_softmax(-1, kind); // [P, n]
    let alpha = match target {
        Target::Softmax => log_alpha.exp(),
        Target::Argmax => log_w.argmax(-1, false).one_hot(n).to_kind(kind), // [P, n]
    };
    let policy_ratio = &inputs.policy_logp - inputs.proposal_logp.to_kind(kind); // [P, n]
    let log_beta = policy_ratio.log_softmax(-1, kind); // [P, n]
    let per_prompt = match baseline {
        Baseline::SelfNormalized => {
            -(&alpha * &log_beta).sum_dim_intlist([-1].as_slice(), false, None)
        }
        Baseline::None => {
            -(&alpha * &inputs.policy_logp).sum_dim_intlist([-1].as_slice(), false, None)
        }
        Baseline::Importance => {
            // Σ_i w'_i ∇log q_θ(y_i) = ∇ Σ_i w'_i, so this loss (no stop-gradient)
            // has exactly the GDC++ gradient −Σ_i (α_i − w'_i/n) ∇log q_θ(y_i).
            let w = policy_ratio.exp(); // [P, n]
            (w / n as f64 - &alpha * &inputs.policy_logp).sum_dim_intlist(
                [-1].as_slice(),
                false,
                None,
            )
        }
    }; // [P]
    let loss = per_prompt.mean(kind);

    let _guard = tch::no_grad_guard();
    let beta = log_beta.detach().exp();
    let sum = |t: Tensor| {
        t.sum_dim_intlist([-1].as_slice(), false, None)
            .mean(Kind::Double)
            .double_value(&[])
    };
    let mut m = Metrics::new();
    m.set("loss", loss.double_value(&[]));
    // ESS of α: 1/Σα² (1 … n), from the softmax weights whatever the target.
    let soft_alpha = log_alpha.exp();
    m.set(
        "ess_alpha",
        (soft_alpha
            .pow_tensor_scalar(2)
            .sum_dim_intlist([-1].as_slice(), false, None))
        .reciprocal()
        .mean(Kind::Double)
        .double_value(&[]),
    );
    m.set("entropy_alpha", sum(-(&soft_alpha * &log_alpha)));
    m.set("entropy_beta", sum(-(&beta * log_beta.detach())));
    // Self-normalised KL(α ‖ β): the objective BRAIn's gradient is unbiased for.
    m.set("sn_kl", sum(&soft_alpha * (&log_alpha - log_beta.detach())));
    (loss, m)
}

impl Estimator for Brain {
    fn plan(&self) -> DataPlan {
        let from = if self.0.prior_fraction > 0.0 {
            Distribution::Mixture {
                prior_fraction: self.0.prior_fraction,
            }
        } else {
            Distribution::Proposal
        };
        DataPlan::sample(from, self.0.n).refresh_every(self.0.refresh_every)
    }

    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics) {
        if !self.0.length_normalize {
            return brain_loss(inputs, self.0.baseline, self.0.target);
        }
        let len = inputs
            .lengths
            .clamp_min(1.0)
            .to_kind(inputs.policy_logp.kind());
        let normalized = GroupInputs {
            policy_logp: &inputs.policy_logp / &len,
            proposal_logp: &inputs.proposal_logp / &len,
            prior_logp: &inputs.prior_logp / &len,
            log_goodness: inputs.log_goodness.shallow_clone(),
            reward: inputs.reward.shallow_clone(),
            lengths: inputs.lengths.shallow_clone(),
            reference_policy_logp: None,
        };
        brain_loss(&normalized, self.0.baseline, self.0.target)
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Estimator>, PluginError> {
    build_from_config(de, |c: &BrainConfig| {
        if c.n < 2 {
            return Err(PluginError::invalid(
                "n",
                format!("BRAIn needs at least 2 samples per prompt, got {}", c.n),
            ));
        }
        align_core::manifest::limits::at_most(
            c.n,
            align_core::manifest::limits::MAX_SAMPLES,
            "samples per prompt",
        )
        .map_err(|e| PluginError::invalid("n", e))?;
        if !(0.0..1.0).contains(&c.prior_fraction) {
            return Err(PluginError::invalid(
                "prior_fraction",
                format!("must be in [0, 1), got {}", c.prior_fraction),
            ));
        }
        if c.prior_fraction > 0.0 && c.refresh_every == 0 {
            return Err(PluginError::invalid(
                "prior_fraction",
                "pools the prior with a refreshed proposal: set `refresh_every` too",
            ));
        }
        Ok(Box::new(Brain(c.clone())) as Box<dyn Estimator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "brain",
        description: "BRAIn: self-normalised importance-sampled distillation of the reward-conditioned posterior",
        constructor: Constructor::Estimator(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn group(
        policy: &[f64],
        proposal: &[f64],
        prior: &[f64],
        goodness: &[f64],
        p: i64,
        n: i64,
    ) -> GroupInputs {
        let t = |xs: &[f64]| Tensor::from_slice(xs).view([p, n]);
        GroupInputs {
            policy_logp: t(policy).set_requires_grad(true),
            proposal_logp: t(proposal),
            prior_logp: t(prior),
            log_goodness: t(goodness),
            reward: t(goodness),
            lengths: Tensor::ones([p, n], (Kind::Double, Device::Cpu)),
            reference_policy_logp: None,
        }
    }

    /// ALGORITHMS.md "Reduction to DPO": Q = p, n = 2, argmax target is DPO with
    /// β = 1 on the reward-ranked pair: equal losses and equal gradients.
    #[test]
    fn reduces_to_dpo_with_beta_one() {
        let (p, n) = (3, 2);
        let policy = [-1.2, -0.3, -2.0, -0.7, -0.1, -3.3];
        let prior = [-1.0, -0.9, -1.5, -1.1, -0.4, -2.0];
        let reward = [0.3, 1.2, -0.5, -0.6, 2.0, 0.1];
        let b = group(&policy, &prior, &prior, &reward, p, n);
        let (brain, _) = brain_loss(&b, Baseline::SelfNormalized, Target::Argmax);
        brain.backward();
        let d = group(&policy, &prior, &prior, &reward, p, n);
        let config = dpo::DpoConfig {
            source: dpo::PairSource::SftSampleRank,
            beta: 1.0,
            label_smoothing: 0.0,
            n: 2,
            pairs: dpo::Pairs::BestVsWorst,
        };
        let (dpo_loss, _) = dpo::dpo_group_loss(&d, &config);
        dpo_loss.backward();
        assert!((brain.double_value(&[]) - dpo_loss.double_value(&[])).abs() < 1e-12);
        assert!(b
            .policy_logp
            .grad()
            .allclose(&d.policy_logp.grad(), 1e-12, 1e-12, false));
        // And both equal the closed form −mean log σ(s_w − s_l), s = log q − log p.
        let mut want = 0.0;
        for i in 0..3 {
            let s = |j: usize| policy[2 * i + j] - prior[2 * i + j];
            let (w, l) = if reward[2 * i] > reward[2 * i + 1] {
                (0, 1)
            } else {
                (1, 0)
            };
            want += (1.0 + (-(s(w) - s(l))).exp()).ln() / 3.0;
        }
        assert!((brain.double_value(&[]) - want).abs() < 1e-12);
    }

    /// The self-normalised loss's gradient is −(α − β)/P per sample.
    #[test]
    fn gradient_is_alpha_minus_beta() {
        let (p, n) = (1, 4);
        let b = group(
            &[-1.0, -2.0, -0.5, -3.0],
            &[-1.5, -1.0, -2.0, -1.2],
            &[-1.1, -1.9, -0.7, -2.5],
            &[0.2, -0.3, 1.0, 0.0],
            p,
            n,
        );
        let (loss, m) = brain_loss(&b, Baseline::SelfNormalized, Target::Softmax);
        loss.backward();
        let log_w = &b.prior_logp + &b.log_goodness - &b.proposal_logp;
        let alpha = log_w.softmax(-1, Kind::Double);
        let beta = (b.policy_logp.detach() - &b.proposal_logp).softmax(-1, Kind::Double);
        assert!(b
            .policy_logp
            .grad()
            .allclose(&(beta - &alpha), 1e-12, 1e-12, false));
        let ess = 1.0
            / alpha
                .pow_tensor_scalar(2)
                .sum(Kind::Double)
                .double_value(&[]);
        assert!((m.get("ess_alpha").unwrap() - ess).abs() < 1e-9);
    }

    /// Per-prompt offsets of log G (e.g. bt-exp's reward offsets) cancel in α.
    #[test]
    fn per_prompt_goodness_offsets_cancel() {
        let policy = [-1.0, -2.0, -0.5, -3.0];
        let q = [-1.5, -1.0, -2.0, -1.2];
        let prior = [-1.1, -1.9, -0.7, -2.5];
        let (a, _) = brain_loss(
            &group(&policy, &q, &prior, &[0.2, -0.3, 1.0, 0.0], 1, 4),
            Baseline::SelfNormalized,
            Target::Softmax,
        );
        let (b, _) = brain_loss(
            &group(&policy, &q, &prior, &[5.2, 4.7, 6.0, 5.0], 1, 4),
            Baseline::SelfNormalized,
            Target::Softmax,
        );
        assert!((a.double_value(&[]) - b.double_value(&[])).abs() < 1e-12);
    }
}
