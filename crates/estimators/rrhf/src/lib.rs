//! RRHF (Yuan et al. 2023, "Rank Responses to align language models with
//! Human Feedback"): `n` candidates per prompt ranked by reward; the ranking
//! loss `Σ_{r_i < r_j} max(0, p_i − p_j)` on the length-normalised sequence
//! log-probs `p_i = log π_θ(y_i|x) / |y_i|`, plus `λ ·` the negative
//! log-likelihood of the best-rewarded candidate (or of the prompt's
//! reference output). No reference model appears in the loss.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{
    pair_mask, DataPlan, Distribution, Estimator, GroupInputs, Metrics, Pairs, Plugin, PluginError,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which output the fine-tuning term raises the likelihood of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SftTarget {
    /// The candidate with the highest reward, as published.
    #[default]
    Best,
    /// The prompt's reference (gold) output; a task without references gets
    /// one prior sample per prompt in its place.
    Reference,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RrhfConfig {
    /// Candidates per prompt, drawn from the prior.
    #[serde(default = "default_n")]
    pub n: i64,
    /// Weight λ of the fine-tuning term (the paper adds it with weight 1).
    #[serde(default = "one")]
    pub lambda: f64,
    /// Rank by `log π / |y|` (the paper's choice) rather than `log π`.
    #[serde(default = "yes")]
    pub length_normalize: bool,
    #[serde(default)]
    pub sft: SftTarget,
}

fn default_n() -> i64 {
    4
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

pub struct Rrhf(pub RrhfConfig);

/// The RRHF loss over `[P, n]` groups (mean over prompts of each prompt's
/// summed ranking hinge, plus `λ ·` the fine-tuning NLL) and its metrics.
pub fn rrhf_loss(inputs: &GroupInputs, config: &RrhfConfig) -> (Tensor, Metrics) {
    let kind = inputs.policy_logp.kind();
    let lp = &inputs.policy_logp; // [P, n]
    let p = if config.length_normalize {
        lp / inputs.lengths.clamp_min(1.0).to_kind(kind)
    } else {
        lp.shallow_clone()
    }; // [P, n]
       // better[b, i, j] = 1 where r_i > r_j; the pair is violated when the
       // worse candidate j scores higher: max(0, p_j − p_i).
    let better = pair_mask(&inputs.reward.to_kind(kind), Pairs::All); // [P, n, n]
    let hinge = (p.unsqueeze(1) - p.unsqueeze(2)).clamp_min(0.0); // [P, n, n]
    let rank = (&hinge * &better)
        .sum_dim_intlist([1, 2].as_slice(), false, None)
        .mean(kind);
    let sft_logp = match config.sft {
        SftTarget::Best => {
            let best = inputs.reward.argmax(-1, true); // [P, 1]
            lp.gather(1, &best.to_device(lp.device()), false)
                .squeeze_dim(1) // [P]
        }
        SftTarget::Reference => inputs
            .reference_policy_logp
            .as_ref()
            .expect("the batcher fills reference_policy_logp: the plan asks for it")
            .to_kind(kind),
    };
    let nll = -sft_logp.mean(kind);
    let loss = &rank + &nll * config.lambda;

    let _guard = tch::no_grad_guard();
    let pairs = better.sum(Kind::Double).double_value(&[]);
    let violated = (hinge.gt(0.0).to_kind(kind) * &better)
        .sum(Kind::Double)
        .double_value(&[]);
    let mut m = Metrics::new();
    m.set("loss", loss.double_value(&[]));
    m.set("rank", rank.double_value(&[]));
    m.set("sft_nll", nll.double_value(&[]));
    m.set("pairs", pairs);
    m.set(
        "violated_fraction",
        if pairs > 0.0 { violated / pairs } else { 0.0 },
    );
    (loss, m)
}

impl Estimator for Rrhf {
    fn plan(&self) -> DataPlan {
        let plan = DataPlan::sample(Distribution::Prior, self.0.n);
        match self.0.sft {
            SftTarget::Best => plan,
            SftTarget::Reference => plan.with_reference_logp(),
        }
    }

    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics) {
        rrhf_loss(inputs, &self.0)
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Estimator>, PluginError> {
    build_from_config(de, |c: &RrhfConfig| {
        if c.n < 2 {
            return Err(PluginError::invalid(
                "n",
                format!(
                    "ranking needs at least 2 candidates per prompt, got {}",
                    c.n
                ),
            ));
        }
        align_core::manifest::limits::at_most(
            c.n,
            align_core::manifest::limits::MAX_SAMPLES,
            "candidates per prompt",
        )
        .map_err(|e| PluginError::invalid("n", e))?;
        if !(c.lambda >= 0.0 && c.lambda.is_finite()) {
            return Err(PluginError::invalid(
                "lambda",
                format!("must be ≥ 0, got {}", c.lambda),
            ));
        }
        Ok(Box::new(Rrhf(c.clone())) as Box<dyn Estimator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "rrhf",
        description: "RRHF: reward-ranked hinge on length-normalised log-probs, plus SFT on the best candidate",
        constructor: Constructor::Estimator(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn group(policy: &[f64], reward: &[f64], lengths: &[f64], n: i64) -> GroupInputs {
        let p = policy.len() as i64 / n;
        let t = |xs: &[f64]| Tensor::from_slice(xs).view([p, n]);
        GroupInputs {
            policy_logp: t(policy).set_requires_grad(true),
            proposal_logp: t(policy),
            prior_logp: t(policy),
            log_goodness: t(reward),
            reward: t(reward),
            lengths: t(lengths),
            reference_policy_logp: None,
        }
    }

    fn config(lambda: f64, length_normalize: bool) -> RrhfConfig {
        RrhfConfig {
            n: 3,
            lambda,
            length_normalize,
            sft: SftTarget::Best,
        }
    }

    #[test]
    fn no_ranking_loss_when_the_policy_orders_as_the_rewards_do() {
        // Length-normalised scores −1, −2, −3 against rewards 3, 2, 1.
        let g = group(&[-2.0, -6.0, -3.0], &[3.0, 2.0, 1.0], &[2.0, 3.0, 1.0], 3);
        let (loss, m) = rrhf_loss(&g, &config(0.0, true));
        assert_eq!(m.get("rank"), Some(0.0));
        assert_eq!(m.get("violated_fraction"), Some(0.0));
        loss.backward();
        assert_eq!(
            g.policy_logp
                .grad()
                .abs()
                .sum(Kind::Double)
                .double_value(&[]),
            0.0
        );
    }

    /// One prompt, worked by hand: scores p = (−1, −0.5, −2) for rewards
    /// (1, 0, 2). Pairs (better, worse): (2, 0): max(0, −1 + 2) = 1;
    /// (2, 1): max(0, −0.5 + 2) = 1.5; (0, 1): max(0, −0.5 + 1) = 0.5.
    /// Rank 3; the best is candidate 2, log-prob −4 (length 2): NLL 4.
    #[test]
    fn hand_computed_case() {
        let g = group(&[-3.0, -1.0, -4.0], &[1.0, 0.0, 2.0], &[3.0, 2.0, 2.0], 3);
        let (loss, m) = rrhf_loss(&g, &config(0.5, true));
        assert!((m.get("rank").unwrap() - 3.0).abs() < 1e-12);
        assert!((m.get("sft_nll").unwrap() - 4.0).abs() < 1e-12);
        assert!((loss.double_value(&[]) - 5.0).abs() < 1e-12);
        assert_eq!(m.get("pairs"), Some(3.0));
        assert_eq!(m.get("violated_fraction"), Some(1.0));
        // d/d lp (each violated pair: +1 to the worse score, −1 to the better,
        // scores are lp / length): candidate 0 loses one pair and wins one, 0;
        // candidate 1 loses two, +2/2; candidate 2 wins two, −2/2, and is the
        // fine-tuning target, −λ.
        loss.backward();
        let grad = Vec::<f64>::try_from(g.policy_logp.grad().view([-1])).unwrap();
        let want = [0.0, 1.0, -1.0 - 0.5];
        for (g, w) in grad.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{grad:?} vs {want:?}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let reward = [0.3, -1.2, 0.8, 0.1, 2.0, -0.4, 0.9, 0.0];
        let lengths = [3.0, 5.0, 2.0, 4.0, 1.0, 6.0, 2.0, 3.0];
        let x = [-2.1, -3.0, -0.7, -4.4, -1.5, -2.2, -0.9, -3.3];
        for (lambda, normalize) in [(0.0, true), (0.7, true), (0.3, false)] {
            let c = RrhfConfig {
                n: 4,
                lambda,
                length_normalize: normalize,
                sft: SftTarget::Best,
            };
            let g = group(&x, &reward, &lengths, 4);
            let (loss, _) = rrhf_loss(&g, &c);
            loss.backward();
            let grad = Vec::<f64>::try_from(g.policy_logp.grad().view([-1])).unwrap();
            let eps = 1e-6;
            for k in 0..x.len() {
                let f = |d: f64| {
                    let mut y = x;
                    y[k] += d;
                    rrhf_loss(&group(&y, &reward, &lengths, 4), &c)
                        .0
                        .double_value(&[])
                };
                let numeric = (f(eps) - f(-eps)) / (2.0 * eps);
                assert!(
                    (numeric - grad[k]).abs() < 1e-6,
                    "λ = {lambda}, coordinate {k}: autograd {} vs numeric {numeric}",
                    grad[k]
                );
            }
        }
    }

    #[test]
    fn reference_target_reads_the_reference_log_prob() {
        let mut g = group(&[-1.0, -2.0], &[0.0, 1.0], &[1.0, 1.0], 2);
        g.reference_policy_logp = Some(Tensor::from_slice(&[-7.0f64]).to_device(Device::Cpu));
        let c = RrhfConfig {
            n: 2,
            lambda: 1.0,
            length_normalize: false,
            sft: SftTarget::Reference,
        };
        let (_, m) = rrhf_loss(&g, &c);
        assert_eq!(m.get("sft_nll"), Some(7.0));
        assert!(Rrhf(c).plan().reference_logp);
    }
}
