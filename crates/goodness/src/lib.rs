//! Goodness models `log p(G = 1 | x, y)` built from reward scores (see
//! ALGORITHMS.md), each registered as a `goodness` plugin with temperature τ.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{GoodnessModel, Plugin, PluginError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureConfig {
    /// Temperature τ > 0: smaller sharpens the posterior toward high reward.
    #[serde(default = "one")]
    pub tau: f64,
}

fn one() -> f64 {
    1.0
}

fn check_tau(c: &TemperatureConfig) -> Result<(), PluginError> {
    if c.tau > 0.0 && c.tau.is_finite() {
        Ok(())
    } else {
        Err(PluginError::invalid(
            "tau",
            format!("must be > 0, got {}", c.tau),
        ))
    }
}

/// `bt-exp`: `r(x, y) / τ`, the posterior of KL-regularised RL (`p·exp(r/τ)/Z`).
pub struct BtExp {
    pub tau: f64,
}

impl GoodnessModel for BtExp {
    fn log_goodness(&self, reward: &Tensor, _reference: Option<&Tensor>) -> anyhow::Result<Tensor> {
        Ok(reward / self.tau)
    }
}

/// `bt-vs-reference`: `log σ((r(x, y) − r(x, y_ref)) / τ)`, the Bradley–Terry
/// probability that `y` beats the reference output.
pub struct BtVsReference {
    pub tau: f64,
}

impl GoodnessModel for BtVsReference {
    fn needs_reference(&self) -> bool {
        true
    }

    fn log_goodness(&self, reward: &Tensor, reference: Option<&Tensor>) -> anyhow::Result<Tensor> {
        let reference = reference.ok_or_else(|| {
            anyhow::anyhow!("goodness `bt-vs-reference` needs the reward of a reference output; this task provides none (use `bt-exp`)")
        })?;
        Ok(((reward - reference) / self.tau).log_sigmoid())
    }
}

/// `classifier`: `log c(x, y) / τ` where `c = σ(reward)` is the probability of
/// the "good" class (classifier reward models report that class's logit).
pub struct Classifier {
    pub tau: f64,
}

impl GoodnessModel for Classifier {
    fn log_goodness(&self, reward: &Tensor, _reference: Option<&Tensor>) -> anyhow::Result<Tensor> {
        Ok(reward.log_sigmoid() / self.tau)
    }
}

fn bt_exp(de: ConfigDeserializer) -> Result<Built<dyn GoodnessModel>, PluginError> {
    build_from_config(de, |c: &TemperatureConfig| {
        check_tau(c)?;
        Ok(Box::new(BtExp { tau: c.tau }) as Box<dyn GoodnessModel>)
    })
}

fn bt_vs_reference(de: ConfigDeserializer) -> Result<Built<dyn GoodnessModel>, PluginError> {
    build_from_config(de, |c: &TemperatureConfig| {
        check_tau(c)?;
        Ok(Box::new(BtVsReference { tau: c.tau }) as Box<dyn GoodnessModel>)
    })
}

fn classifier(de: ConfigDeserializer) -> Result<Built<dyn GoodnessModel>, PluginError> {
    build_from_config(de, |c: &TemperatureConfig| {
        check_tau(c)?;
        Ok(Box::new(Classifier { tau: c.tau }) as Box<dyn GoodnessModel>)
    })
}

align_core::inventory::submit! {
    Plugin { name: "bt-exp", description: "Bradley–Terry reward, exponential likelihood: r/τ", constructor: Constructor::Goodness(bt_exp) }
}
align_core::inventory::submit! {
    Plugin { name: "bt-vs-reference", description: "probability of beating the reference output: log σ((r − r_ref)/τ)", constructor: Constructor::Goodness(bt_vs_reference) }
}
align_core::inventory::submit! {
    Plugin { name: "classifier", description: "classifier reward model: log σ(logit)/τ", constructor: Constructor::Goodness(classifier) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(xs: &[f64]) -> Tensor {
        Tensor::from_slice(xs)
    }

    #[test]
    fn hand_computed_values() {
        let r = t(&[1.0, -2.0]);
        let g = BtExp { tau: 0.5 }.log_goodness(&r, None).unwrap();
        assert_eq!(Vec::<f64>::try_from(g).unwrap(), vec![2.0, -4.0]);
        // log σ((1 − 0)/2) = −log(1 + e^{−0.5}) = −0.474077
        let g = BtVsReference { tau: 2.0 }
            .log_goodness(&t(&[1.0]), Some(&t(&[0.0])))
            .unwrap();
        assert!((g.double_value(&[0]) + 0.474_076_9).abs() < 1e-6);
        assert!(BtVsReference { tau: 1.0 }.log_goodness(&r, None).is_err());
        assert!(BtVsReference { tau: 1.0 }.needs_reference());
        assert!(!BtExp { tau: 1.0 }.needs_reference());
        assert!(!Classifier { tau: 1.0 }.needs_reference());
        // log σ(0) / 0.5 = 2 log 0.5 = −1.386294
        let g = Classifier { tau: 0.5 }
            .log_goodness(&t(&[0.0]), None)
            .unwrap();
        assert!((g.double_value(&[0]) + 1.386_294_4).abs() < 1e-6);
    }
}
