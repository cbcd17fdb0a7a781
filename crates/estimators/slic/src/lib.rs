//! SLiC-HF (Zhao et al. 2023): rank calibration on reward-ranked pairs of the
//! policy's own samples, `max(0, δ − log π_θ(y⁺) + log π_θ(y⁻))`, plus the
//! regulariser `λ · (−log π_θ(y_ref))` toward the reference (SFT) target.
//! No reference model appears in the calibration term.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{
    pair_mask, pair_mean, DataPlan, Distribution, Estimator, GroupInputs, Means, Metrics, Pairs,
    Plugin, PluginError,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlicConfig {
    /// Calibration margin δ.
    #[serde(default = "one")]
    pub delta: f64,
    /// Weight λ of the cross-entropy regulariser on the reference target
    /// (no default: the SLiC-HF paper tunes it per task).
    pub lambda: f64,
    /// Decodes per prompt to rank (m).
    #[serde(default = "eight")]
    pub m: i64,
    #[serde(default = "default_pairs")]
    pub pairs: Pairs,
}

fn one() -> f64 {
    1.0
}
fn eight() -> i64 {
    8
}
fn default_pairs() -> Pairs {
    Pairs::All
}

pub struct Slic(pub SlicConfig);

/// SLiC-HF loss over `[P, m]` groups with `reference_policy_logp` `[P]`.
pub fn slic_loss(inputs: &GroupInputs, config: &SlicConfig) -> (Tensor, Metrics) {
    let (means, m) = slic_means(inputs, config);
    (means.total(), m)
}

/// [`slic_loss`] as its two means: the calibration hinge over the valid
/// pairs, and `λ ·` the reference NLL over the prompts.
pub fn slic_means(inputs: &GroupInputs, config: &SlicConfig) -> (Means, Metrics) {
    let kind = inputs.policy_logp.kind();
    let lp = &inputs.policy_logp; // [P, m]
    let valid = pair_mask(&inputs.reward.to_kind(kind), config.pairs); // [P, m, m]
    let hinge = (-(lp.unsqueeze(2) - lp.unsqueeze(1)) + config.delta).clamp_min(0.0); // [P, m, m]
    let calibration = pair_mean(&hinge, &valid);
    let reference = inputs
        .reference_policy_logp
        .as_ref()
        .expect("the batcher fills reference_policy_logp: the plan asks for it");
    let regulariser = -reference.to_kind(kind).mean(kind);
    let weighted = &regulariser * config.lambda;
    let loss = &calibration + &weighted;
    let pairs = valid.sum(Kind::Double).double_value(&[]);
    let mut m = Metrics::new();
    m.set("loss", loss.double_value(&[]));
    m.set("calibration", calibration.double_value(&[]));
    m.set("reference_nll", regulariser.double_value(&[]));
    m.set("pairs", pairs);
    let prompts = reference.size()[0] as f64;
    (
        Means::new().add(calibration, pairs).add(weighted, prompts),
        m,
    )
}

impl Estimator for Slic {
    fn plan(&self) -> DataPlan {
        DataPlan::sample(Distribution::Prior, self.0.m).with_reference_logp()
    }

    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics) {
        slic_loss(inputs, &self.0)
    }

    fn loss_means(&self, inputs: &GroupInputs) -> (Means, Metrics) {
        slic_means(inputs, &self.0)
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Estimator>, PluginError> {
    build_from_config(de, |c: &SlicConfig| {
        if !c.delta.is_finite() || c.delta <= 0.0 {
            return Err(PluginError::invalid(
                "delta",
                format!("must be > 0, got {}", c.delta),
            ));
        }
        if !c.lambda.is_finite() || c.lambda < 0.0 {
            return Err(PluginError::invalid(
                "lambda",
                format!("must be ≥ 0, got {}", c.lambda),
            ));
        }
        if c.m < 2 {
            return Err(PluginError::invalid(
                "m",
                format!("ranking needs at least 2 decodes per prompt, got {}", c.m),
            ));
        }
        align_core::manifest::limits::at_most(
            c.m,
            align_core::manifest::limits::MAX_SAMPLES,
            "decodes per prompt",
        )
        .map_err(|e| PluginError::invalid("m", e))?;
        Ok(Box::new(Slic(c.clone())) as Box<dyn Estimator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "slic",
        description: "SLiC-HF: rank-calibration hinge on reward-ranked decodes + λ·NLL of the reference target",
        constructor: Constructor::Estimator(construct),
    }
}
