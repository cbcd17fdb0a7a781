//! DPO (Rafailov et al. 2023), sigmoid loss with β and optional label
//! smoothing, on pairs ranked by reward from the `n` samples of each prompt
//! ("sft-sample-rank" when the samples come from the prior).

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{Estimator, GroupInputs, Metrics, Plugin, PluginError};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Referenced by the runner so the linker keeps this crate's registration.
pub fn link() {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairs {
    /// One pair per prompt: highest- against lowest-reward sample.
    BestVsWorst,
    /// Every ordered pair with distinct rewards.
    All,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoConfig {
    #[serde(default = "default_beta")]
    pub beta: f64,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Samples per prompt to rank.
    #[serde(default = "two")]
    pub n: i64,
    #[serde(default = "default_pairs")]
    pub pairs: Pairs,
}

fn default_beta() -> f64 {
    0.1
}
fn two() -> i64 {
    2
}
fn default_pairs() -> Pairs {
    Pairs::BestVsWorst
}

pub struct Dpo(pub DpoConfig);

/// `−(1−ε) log σ(βΔ) − ε log σ(−βΔ)` per pair, `Δ = s(y_w) − s(y_l)` and
/// `s = log π_θ − log π_ref`. Inputs `[K]` → `[K]`.
pub fn dpo_pair_loss(
    chosen_margin: &Tensor,
    rejected_margin: &Tensor,
    beta: f64,
    label_smoothing: f64,
) -> Tensor {
    let z = (chosen_margin - rejected_margin) * beta;
    -(z.log_sigmoid() * (1.0 - label_smoothing)) - (-z).log_sigmoid() * label_smoothing
}

/// DPO over `[P, n]` groups ranked by reward; mean over pairs.
pub fn dpo_group_loss(inputs: &GroupInputs, config: &DpoConfig) -> (Tensor, Metrics) {
    let kind = inputs.policy_logp.kind();
    let s = &inputs.policy_logp - inputs.prior_logp.to_kind(kind); // [P, n]
    let reward = inputs.reward.detach();
    let (loss, chosen_reward, accuracy) = match config.pairs {
        Pairs::BestVsWorst => {
            let best = reward.argmax(-1, true); // [P, 1]
            let worst = reward.argmin(-1, true);
            let (sw, sl) = (s.gather(1, &best, false), s.gather(1, &worst, false)); // [P, 1]
            let per_pair = dpo_pair_loss(&sw, &sl, config.beta, config.label_smoothing);
            let acc = sw.gt_tensor(&sl).to_kind(Kind::Double).mean(Kind::Double);
            (
                per_pair.mean(kind),
                (sw - sl).detach().mean(Kind::Double),
                acc,
            )
        }
        Pairs::All => {
            // Pair (i, j) counts when r_i > r_j: i chosen, j rejected.
            let valid = reward
                .unsqueeze(2)
                .gt_tensor(&reward.unsqueeze(1))
                .to_kind(kind); // [P, n, n]
            let count = valid.sum(kind).clamp_min(1.0);
            let per_pair = dpo_pair_loss(
                &s.unsqueeze(2),
                &s.unsqueeze(1),
                config.beta,
                config.label_smoothing,
            ); // [P, n, n]
            let margin = s.unsqueeze(2) - s.unsqueeze(1);
            let acc = (margin.gt(0.0).to_kind(kind) * &valid).sum(kind) / &count;
            (
                (per_pair * &valid).sum(kind) / &count,
                ((margin * &valid).sum(kind) / &count).detach(),
                acc,
            )
        }
    };
    let mut m = Metrics::new();
    m.set("loss", loss.double_value(&[]));
    m.set("margin", chosen_reward.double_value(&[]));
    m.set("pair_accuracy", accuracy.double_value(&[]));
    (loss, m)
}

impl Estimator for Dpo {
    fn samples_per_prompt(&self) -> i64 {
        self.0.n
    }

    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics) {
        dpo_group_loss(inputs, &self.0)
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Estimator>, PluginError> {
    build_from_config(de, |c: &DpoConfig| {
        if !c.beta.is_finite() || c.beta <= 0.0 {
            return Err(PluginError::invalid(
                "beta",
                format!("must be > 0, got {}", c.beta),
            ));
        }
        if !(0.0..0.5).contains(&c.label_smoothing) {
            return Err(PluginError::invalid(
                "label_smoothing",
                format!("must be in [0, 0.5), got {}", c.label_smoothing),
            ));
        }
        if c.n < 2 {
            return Err(PluginError::invalid(
                "n",
                format!("ranking needs at least 2 samples per prompt, got {}", c.n),
            ));
        }
        Ok(Box::new(Dpo(c.clone())) as Box<dyn Estimator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "dpo",
        description: "DPO sigmoid loss (β, label smoothing) on reward-ranked sample pairs",
        constructor: Constructor::Estimator(construct),
    }
}
