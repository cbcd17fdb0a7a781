//! RSO (Liu et al. 2023, "Statistical Rejection Sampling Improves Preference
//! Optimization"): from N prior samples per prompt, rejection-sample k from the
//! estimated optimal policy `p·exp(r/β)`, pair the accepted samples, rank each
//! pair by reward, and train with `sigmoid-norm` or `hinge-norm`.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{
    pair_mean, DataPlan, Distribution, Estimator, GroupInputs, Means, Metrics, Plugin, PluginError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RsoLoss {
    /// `−log σ(γ[s(y_w) − s(y_l)])` (the DPO loss with γ).
    SigmoidNorm,
    /// `max(0, 1 − γ[s(y_w) − s(y_l)])`.
    HingeNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RsoPairs {
    /// Accepted samples paired in acceptance order: (1, 2), (3, 4), …
    Consecutive,
    /// Every pair of accepted samples with distinct rewards.
    All,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RsoConfig {
    /// Candidates drawn from the prior per prompt (N).
    #[serde(default = "default_candidates")]
    pub candidates: i64,
    /// Samples accepted per prompt (k).
    #[serde(default = "default_accepted")]
    pub accepted: i64,
    /// Temperature β of the target `p·exp(r/β)` in the rejection sampler.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// γ of the loss.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    #[serde(default = "default_loss")]
    pub loss: RsoLoss,
    #[serde(default = "default_pairs")]
    pub pairs: RsoPairs,
}

fn default_candidates() -> i64 {
    64
}
fn default_accepted() -> i64 {
    8
}
fn default_beta() -> f64 {
    0.5
}
fn default_gamma() -> f64 {
    0.05
}
fn default_loss() -> RsoLoss {
    RsoLoss::SigmoidNorm
}
fn default_pairs() -> RsoPairs {
    RsoPairs::Consecutive
}

/// The statistical rejection sampler (RSO, Algorithm 1): until `k` are accepted,
/// take `r_max` over the remaining candidates and sweep them in order,
/// accepting each with probability `exp((r − r_max)/β)`; accepted candidates
/// leave the pool. Returns candidate indices in acceptance order.
pub fn rejection_sample(rewards: &[f64], k: usize, beta: f64, rng: &mut impl Rng) -> Vec<usize> {
    assert!(
        k <= rewards.len(),
        "cannot accept {k} of {} candidates",
        rewards.len()
    );
    let mut remaining: Vec<usize> = (0..rewards.len()).collect();
    let mut accepted = Vec::with_capacity(k);
    while accepted.len() < k {
        let r_max = remaining
            .iter()
            .map(|&i| rewards[i])
            .fold(f64::NEG_INFINITY, f64::max);
        let mut kept = Vec::with_capacity(remaining.len());
        for &i in &remaining {
            if accepted.len() < k && rng.random::<f64>() < ((rewards[i] - r_max) / beta).exp() {
                accepted.push(i);
            } else {
                kept.push(i);
            }
        }
        remaining = kept;
    }
    accepted
}

/// RSO's statistical rejection sampling over each prompt's candidates:
/// indices `[P, accepted]` of the samples the loss reads, from rewards `[P, N]`.
pub fn accept(reward: &Tensor, seed: u64, config: &RsoConfig) -> Tensor {
    let (p, n) = reward.size2().expect("rewards are [P, N]");
    let rewards = Vec::<f64>::try_from(
        reward
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .view([-1]),
    )
    .expect("f64 rewards");
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5250_534f); // "RSO"
    let k = config.accepted as usize;
    let index: Vec<i64> = rewards
        .chunks(n as usize)
        .flat_map(|r| rejection_sample(r, k, config.beta, &mut rng))
        .map(|i| i as i64)
        .collect();
    Tensor::from_slice(&index)
        .view([p, k as i64])
        .to_device(reward.device())
}

pub struct Rso(pub RsoConfig);

/// Pairs among `k` accepted samples: `valid` `[P, k, k]`, 1 where i is the
/// higher-reward member of a pair (i, j).
fn pairs_mask(reward: &Tensor, pairs: RsoPairs) -> Tensor {
    let kind = reward.kind();
    let better = reward
        .unsqueeze(2)
        .gt_tensor(&reward.unsqueeze(1))
        .to_kind(kind); // [P, k, k]
    match pairs {
        RsoPairs::All => better,
        RsoPairs::Consecutive => {
            let k = reward.size()[1];
            let idx = Tensor::arange(k, (Kind::Int64, reward.device()));
            let partner = idx.bitwise_xor(1); // 0↔1, 2↔3, …
            let same_pair = idx
                .unsqueeze(1)
                .eq_tensor(&partner.unsqueeze(0))
                .to_kind(kind); // [k, k]
            better * same_pair.unsqueeze(0)
        }
    }
}

/// The RSO loss over `[P, k]` accepted samples.
pub fn rso_loss(inputs: &GroupInputs, config: &RsoConfig) -> (Tensor, Metrics) {
    let kind = inputs.policy_logp.kind();
    let s = &inputs.policy_logp - inputs.prior_logp.to_kind(kind); // [P, k]
    let valid = pairs_mask(&inputs.reward.detach().to_kind(kind), config.pairs); // [P, k, k]
    let z = (s.unsqueeze(2) - s.unsqueeze(1)) * config.gamma; // [P, k, k]
    let per_pair = match config.loss {
        RsoLoss::SigmoidNorm => -z.log_sigmoid(),
        RsoLoss::HingeNorm => (-&z + 1.0).clamp_min(0.0),
    };
    let loss = pair_mean(&per_pair, &valid);
    let mut m = Metrics::new();
    m.set("loss", loss.double_value(&[]));
    m.set(
        "pair_accuracy",
        pair_mean(&z.gt(0.0).to_kind(kind), &valid).double_value(&[]),
    );
    m.set("pairs", valid.sum(Kind::Double).double_value(&[]));
    m.set(
        "accepted_reward_mean",
        inputs.reward.mean(Kind::Double).double_value(&[]),
    );
    (loss, m)
}

impl Estimator for Rso {
    fn plan(&self) -> DataPlan {
        let config = self.0.clone();
        DataPlan::sample(Distribution::Prior, self.0.candidates)
            .subset(move |reward, seed| accept(reward, seed, &config))
    }

    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics) {
        rso_loss(inputs, &self.0)
    }

    /// One mean over the step's valid pairs (the `pairs` metric).
    fn loss_means(&self, inputs: &GroupInputs) -> (Means, Metrics) {
        let (loss, m) = self.loss(inputs);
        let pairs = m.get("pairs").expect("the loss counts its pairs");
        (Means::new().add(loss, pairs), m)
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Estimator>, PluginError> {
    build_from_config(de, |c: &RsoConfig| {
        if c.accepted < 2 {
            return Err(PluginError::invalid(
                "accepted",
                format!("pairs need at least 2 accepted samples, got {}", c.accepted),
            ));
        }
        if c.accepted > c.candidates {
            return Err(PluginError::invalid(
                "accepted",
                format!(
                    "cannot accept {} of {} candidates (needs accepted ≤ candidates)",
                    c.accepted, c.candidates
                ),
            ));
        }
        align_core::manifest::limits::at_most(
            c.candidates,
            align_core::manifest::limits::MAX_SAMPLES,
            "candidates drawn per prompt",
        )
        .map_err(|e| PluginError::invalid("candidates", e))?;
        for (key, v) in [("beta", c.beta), ("gamma", c.gamma)] {
            if !v.is_finite() || v <= 0.0 {
                return Err(PluginError::invalid(key, format!("must be > 0, got {v}")));
            }
        }
        Ok(Box::new(Rso(c.clone())) as Box<dyn Estimator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "rso",
        description: "RSO: statistical rejection sampling from p·exp(r/β), sigmoid-norm / hinge-norm pair losses",
        constructor: Constructor::Estimator(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_accepts_k_distinct_candidates_reproducibly() {
        let rewards: Vec<f64> = (0..64).map(|i| ((i * 37) % 11) as f64 / 3.0).collect();
        let a = rejection_sample(&rewards, 8, 0.5, &mut ChaCha8Rng::seed_from_u64(1));
        let b = rejection_sample(&rewards, 8, 0.5, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
        // The first sweep always accepts the maximum if nothing before it is taken.
        assert_eq!(
            rejection_sample(&[0.0, 5.0], 1, 1e-3, &mut ChaCha8Rng::seed_from_u64(0)),
            vec![1]
        );
    }

    /// Accepted samples follow p·exp(r/β): a chi-square test on a discrete toy
    /// (4 outcomes, k = 1 from N = 64 candidates drawn from p, fixed seed).
    #[test]
    fn accepted_samples_follow_the_tilted_distribution() {
        let p = [0.4, 0.3, 0.2, 0.1];
        let r = [0.0, 0.5, 1.0, 1.5];
        let beta: f64 = 1.0;
        let tilted: Vec<f64> = p
            .iter()
            .zip(&r)
            .map(|(p, r)| p * (r / beta).exp())
            .collect();
        let z: f64 = tilted.iter().sum();
        let mut rng = ChaCha8Rng::seed_from_u64(2024);
        let trials = 20_000;
        let mut counts = [0usize; 4];
        for _ in 0..trials {
            let candidates: Vec<usize> = (0..64)
                .map(|_| {
                    let u: f64 = rng.random();
                    let mut acc = 0.0;
                    p.iter()
                        .position(|&pi| {
                            acc += pi;
                            u < acc
                        })
                        .unwrap_or(3)
                })
                .collect();
            let rewards: Vec<f64> = candidates.iter().map(|&c| r[c]).collect();
            let chosen = rejection_sample(&rewards, 1, beta, &mut rng)[0];
            counts[candidates[chosen]] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&tilted)
            .map(|(&c, t)| {
                let expected = trials as f64 * t / z;
                (c as f64 - expected).powi(2) / expected
            })
            .sum();
        // χ²(3) exceeds 16.27 with probability 0.001.
        assert!(chi2 < 16.27, "chi-square {chi2:.2} with counts {counts:?}");
    }
}
