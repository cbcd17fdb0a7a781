//! Statistics of the held-out completions: the training reward, the length,
//! and the per-completion log-ratio log π(y|x) − log p(y|x), whose mean over
//! on-policy samples is the Monte-Carlo KL(π‖p) (the tables give its
//! standard error and interval over prompts).

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{EvalContext, Evaluation, Evaluator, HeldOut, Plugin, PluginError, Policy};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardStatsConfig {}

pub struct RewardStats;

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu)).expect("f64 values")
}

impl Evaluator for RewardStats {
    fn evaluate(
        &self,
        ctx: &EvalContext,
        _policy: &dyn Policy,
        held_out: Option<&HeldOut>,
    ) -> anyhow::Result<Evaluation> {
        let h = held_out.expect("reward-stats reads held-out completions");
        let _guard = tch::no_grad_guard();
        let mut e = Evaluation::default();
        e.column("reward", to_vec(&ctx.reward.score(&h.batch)?));
        e.column("length", to_vec(&h.batch.lengths()));
        // Off-policy draws (temperature ≠ 1) would bias the estimate: leave it out.
        if h.on_policy {
            e.column("kl", to_vec(&(&h.policy_logp - &h.prior_logp)));
        }
        Ok(e)
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Evaluator>, PluginError> {
    build_from_config(de, |_: &RewardStatsConfig| {
        Ok(Box::new(RewardStats) as Box<dyn Evaluator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "reward-stats",
        description: "held-out completions: training reward, length, Monte-Carlo KL(policy‖prior) (with intervals over prompts)",
        constructor: Constructor::Evaluator(construct),
    }
}
