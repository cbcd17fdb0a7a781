//! The one flat training loop every estimator goes through: refresh the
//! proposal, build the inputs the estimator's data plan declares, take a step
//! on its loss, log.

use align_core::batcher::{BatchContext, Batcher};
use align_core::manifest::{Manifest, Optimizer, Run};
use align_core::policy::frozen_copy;
use align_core::{Metrics, ModelContext, Policy, RewardModel, Task, TextCodec};
use anyhow::Context;
use tch::nn;
use tch::nn::OptimizerConfig;

pub struct Setup<'a> {
    pub manifest: &'a Manifest,
    pub run: &'a Run,
    pub task: &'a dyn Task,
    pub model_ctx: &'a ModelContext,
    pub prior: &'a dyn Policy,
    pub reward: &'a dyn RewardModel,
    pub codec: Option<&'a dyn TextCodec>,
    /// This run's training seed (one of the manifest's `seeds`).
    pub seed: u64,
}

/// Per-step metrics: `(step, metrics)`; evaluation metrics appear on eval steps.
pub type StepLog = Vec<(usize, Metrics)>;

/// Trains `policy` with the run's estimator: each step refreshes the proposal
/// when the plan says so, builds the inputs the plan declares, and takes one
/// optimizer step on the estimator's loss. `evaluate(policy, step)` runs every
/// `train.eval_every` steps before the last.
pub fn train(
    s: &Setup,
    policy: &mut dyn Policy,
    evaluate: &mut dyn FnMut(&dyn Policy, usize) -> anyhow::Result<Metrics>,
    progress: bool,
) -> anyhow::Result<StepLog> {
    let estimator = s.run.estimator.value.as_ref();
    let train = &s.manifest.train;
    let mut opt = match train.optimizer {
        Optimizer::Adam => nn::Adam::default().build(policy.var_store(), s.run.lr)?,
        Optimizer::Sgd => nn::Sgd::default().build(policy.var_store(), s.run.lr)?,
    };
    let context = BatchContext {
        task: s.task,
        prior: s.prior,
        reward: s.reward,
        goodness: s.manifest.goodness.value.as_ref(),
        codec: s.codec,
        sampling: &s.run.sampling,
        seed: s.seed,
        prompts_per_step: train.prompts_per_step,
    };
    let mut batcher = Batcher::new(context, estimator.plan())
        .with_context(|| format!("estimator `{}`", s.run.estimator.plugin))?;
    let bar = align_core::progress::bar(progress, s.run.steps as u64, &s.run.name, "steps");
    let mut log = StepLog::new();
    for step in 0..s.run.steps {
        if batcher.plan().refreshes_at(step) {
            let model = s.manifest.model.value.as_ref();
            batcher.set_proposal(frozen_copy(model, s.model_ctx, policy)?);
        }
        let inputs = batcher.next(step, policy)?;
        let (loss, mut metrics) = estimator.loss(&inputs.groups);
        opt.backward_step(&loss);

        metrics.set("reward_mean", inputs.reward_mean); // over every candidate
                                                        // The final evaluation is the caller's.
        if train.eval_every > 0 && (step + 1) % train.eval_every == 0 && step + 1 < s.run.steps {
            metrics.extend(&evaluate(policy, step + 1)?);
        }
        log.push((step + 1, metrics));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(log)
}
