//! A synthetic reward for toy tasks: every (prompt, completion) token sequence
//! gets a fixed N(0, scale²) reward derived from a hash of its tokens, so no
//! table is stored and every machine computes the same rewards.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{Plugin, PluginError, RewardModel, RewardSpec, SampleBatch};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomTableConfig {
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub seed: u64,
}

fn one() -> f64 {
    1.0
}

struct RandomTable(RandomTableConfig);

impl RewardSpec for RandomTable {
    fn build(&self, _device: Device) -> anyhow::Result<Box<dyn RewardModel>> {
        Ok(Box::new(RandomTable(self.0.clone())))
    }
}

/// SplitMix64 step: a well-mixed, platform-independent hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal draw determined by `tokens` (Box–Muller on two hashes).
pub fn gaussian_of(seed: u64, tokens: &[i64]) -> f64 {
    let h = tokens.iter().fold(mix(seed), |h, &t| mix(h ^ t as u64));
    let u1 = ((mix(h) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = ((mix(h ^ 0xDEAD_BEEF) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl RewardModel for RandomTable {
    fn score(&self, batch: &SampleBatch) -> anyhow::Result<Tensor> {
        let ids = batch.input_ids.to_device(Device::Cpu);
        let mask = batch.attention_mask.to_device(Device::Cpu);
        let (b, t) = ids.size2()?;
        let ids = Vec::<i64>::try_from(ids.view([-1]))?;
        let mask = Vec::<i64>::try_from(mask.view([-1]))?;
        let rewards: Vec<f32> = (0..b as usize)
            .map(|row| {
                let r = row * t as usize..(row + 1) * t as usize;
                let tokens: Vec<i64> = ids[r.clone()]
                    .iter()
                    .zip(&mask[r])
                    .filter(|(_, &m)| m != 0)
                    .map(|(&i, _)| i)
                    .collect();
                (self.0.scale * gaussian_of(self.0.seed, &tokens)) as f32
            })
            .collect();
        Ok(Tensor::from_slice(&rewards)
            .to_kind(Kind::Float)
            .to_device(batch.input_ids.device()))
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn RewardSpec>, PluginError> {
    build_from_config(de, |c: &RandomTableConfig| {
        if !c.scale.is_finite() || c.scale <= 0.0 {
            return Err(PluginError::invalid("scale", "must be a finite number > 0"));
        }
        Ok(Box::new(RandomTable(c.clone())) as Box<dyn RewardSpec>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "random-table",
        description: "synthetic reward: a fixed N(0, scale²) draw per token sequence (toy tasks)",
        constructor: Constructor::Reward(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::gaussian_of;

    #[test]
    fn rewards_are_deterministic_and_roughly_standard_normal() {
        assert_eq!(gaussian_of(3, &[1, 2, 3]), gaussian_of(3, &[1, 2, 3]));
        assert_ne!(gaussian_of(3, &[1, 2, 3]), gaussian_of(3, &[1, 3, 2]));
        let xs: Vec<f64> = (0..20_000).map(|i| gaussian_of(0, &[i])).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        // 20k draws: the standard error of the mean is 0.007, of the variance 0.01.
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
