//! BRAIn (Pandey et al., ICML 2024): distil the reward-conditioned posterior
//! `p(y|x)·p(G=1|x,y)/Z` into the policy by self-normalised importance sampling
//! over `n` proposal samples per prompt, with the self-normalised baseline.
//! See ALGORITHMS.md for the formulas implemented here.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{Estimator, GroupInputs, Metrics, Plugin, PluginError};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Referenced by the runner so the linker keeps this crate's registration.
pub fn link() {}

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
        Target::Argmax => log_w.argmax(-1, true).one_hot(n).to_kind(kind), // [P, n]
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
            let w = policy_ratio.detach().exp() / n as f64; // [P, n]
            -((&alpha - w) * &inputs.policy_logp).sum_dim_intlist([-1].as_slice(), false, None)
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
    fn samples_per_prompt(&self) -> i64 {
        self.0.n
    }

    fn proposal_refresh_every(&self) -> Option<usize> {
        (self.0.refresh_every > 0).then_some(self.0.refresh_every)
    }

    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics) {
        brain_loss(inputs, self.0.baseline, self.0.target)
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
