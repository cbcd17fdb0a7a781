//! DPO (Rafailov et al. 2023), sigmoid loss with β and optional label
//! smoothing, on pairs ranked by reward from the `n` samples of each prompt
//! ("sft-sample-rank" when the samples come from the prior).

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
pub use align_core::Pairs;
use align_core::{
    pair_mask, pair_mean, DataPlan, Distribution, Estimator, GroupInputs, Means, Metrics, Plugin,
    PluginError,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Where DPO's pairs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairSource {
    /// `n` samples of the prior per prompt, ranked by the reward model.
    #[default]
    SftSampleRank,
    /// The task's preference dataset (chosen, rejected).
    Direct,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoConfig {
    #[serde(default)]
    pub source: PairSource,
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
    let valid = pair_mask(&inputs.reward.to_kind(kind), config.pairs); // [P, n, n]
    let (chosen, rejected) = (s.unsqueeze(2), s.unsqueeze(1)); // [P, n, 1], [P, 1, n]
    let loss = pair_mean(
        &dpo_pair_loss(&chosen, &rejected, config.beta, config.label_smoothing),
        &valid,
    );
    let _guard = tch::no_grad_guard();
    let margin = &chosen - &rejected; // [P, n, n]
    let mut m = Metrics::new();
    m.set("loss", loss.double_value(&[]));
    m.set("margin", pair_mean(&margin, &valid).double_value(&[]));
    m.set(
        "pair_accuracy",
        pair_mean(&margin.gt(0.0).to_kind(kind), &valid).double_value(&[]),
    );
    m.set("pairs", valid.sum(Kind::Double).double_value(&[]));
    (loss, m)
}

impl Estimator for Dpo {
    fn plan(&self) -> DataPlan {
        match self.0.source {
            PairSource::SftSampleRank => DataPlan::sample(Distribution::Prior, self.0.n),
            PairSource::Direct => DataPlan::dataset_pairs(),
        }
    }

    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics) {
        dpo_group_loss(inputs, &self.0)
    }

    /// One mean over the step's valid pairs (the `pairs` metric).
    fn loss_means(&self, inputs: &GroupInputs) -> (Means, Metrics) {
        let (loss, m) = self.loss(inputs);
        let pairs = m.get("pairs").expect("the loss counts its pairs");
        (Means::new().add(loss, pairs), m)
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
        align_core::manifest::limits::at_most(
            c.n,
            align_core::manifest::limits::MAX_SAMPLES,
            "samples per prompt",
        )
        .map_err(|e| PluginError::invalid("n", e))?;
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
