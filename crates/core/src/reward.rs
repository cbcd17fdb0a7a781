//! Reward models and goodness models.

use tch::{Device, Tensor};

use crate::sampling::SampleBatch;

/// Scores whole sequences: `[B]` f32 rewards for a batch of prompt+completion.
pub trait RewardModel: Send {
    fn score(&self, batch: &SampleBatch) -> anyhow::Result<Tensor>;
}

pub trait RewardSpec: Send + Sync {
    fn build(&self, device: Device) -> anyhow::Result<Box<dyn RewardModel>>;
}

/// `log p(G = 1 | x, y)` from rewards (see ALGORITHMS.md, "Goodness models").
pub trait GoodnessModel: Send + Sync {
    /// Whether [`GoodnessModel::log_goodness`] reads `reference_reward`, so
    /// callers score a reference output only for models that use it.
    fn needs_reference(&self) -> bool {
        false
    }

    /// `reward` `[B]`; `reference_reward` `[B]` is the reward of the reference
    /// output for the same prompt, for models that compare against one.
    fn log_goodness(
        &self,
        reward: &Tensor,
        reference_reward: Option<&Tensor>,
    ) -> anyhow::Result<Tensor>;
}
