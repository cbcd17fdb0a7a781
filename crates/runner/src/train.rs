//! The one flat training loop every estimator goes through: refresh the
//! proposal, build the inputs the estimator's data plan declares, take a step
//! on its loss, log, checkpoint.

use align_core::batcher::{BatchContext, Batcher};
use align_core::manifest::{Manifest, OnNonfinite, Run};
use align_core::optim::Optimizer;
use align_core::policy::frozen_copy;
use align_core::sample_cache::SampleCache;
use align_core::{Metrics, ModelContext, Policy, RewardModel, Task, TextCodec};
use anyhow::Context;
use tch::Tensor;

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
    /// Draws from the prior, shared by the manifest's runs at this seed.
    pub samples: Option<&'a SampleCache>,
}

/// Per-step metrics: `(step, metrics)`; evaluation metrics appear on eval steps.
pub type StepLog = Vec<(usize, Metrics)>;

/// Where a run stands after some steps: everything a checkpoint holds.
/// [`train`] starts from it and returns it; the policy's weights are the
/// caller's (loaded into the policy before the call).
#[derive(Default)]
pub struct Progress {
    /// Steps taken (the next step is this, 0-based).
    pub step: usize,
    pub log: StepLog,
    /// Steps whose loss or gradient was not finite (none applied).
    pub nonfinite_steps: usize,
    /// `train.on_nonfinite = "stop"` ended the run at this step.
    pub stopped: bool,
    /// Optimizer steps and moments (empty before the first step).
    pub optimizer_steps: u64,
    pub optimizer_state: Vec<(String, Tensor)>,
    /// The proposal's weights when it is no longer the prior.
    pub proposal: Option<Box<dyn Policy>>,
}

/// What the loop asks of its caller.
pub trait Hooks {
    /// Runs the evaluators on `policy` after `step` steps.
    fn evaluate(&mut self, policy: &dyn Policy, step: usize) -> anyhow::Result<Metrics>;

    /// Saves a checkpoint: `policy` after `at.step` steps.
    fn checkpoint(&mut self, policy: &dyn Policy, at: &Snapshot) -> anyhow::Result<()>;
}

/// What a checkpoint saves beside the policy's weights.
pub struct Snapshot<'a> {
    pub step: usize,
    pub log: &'a StepLog,
    pub nonfinite_steps: usize,
    pub optimizer_steps: u64,
    /// The optimizer's moments by name.
    pub optimizer_state: Vec<(String, Tensor)>,
    /// The proposal when it is no longer the prior.
    pub proposal: Option<&'a dyn Policy>,
}

/// Trains `policy` with the run's estimator from `progress` (a fresh one or a
/// checkpoint's) to the run's last step: each step refreshes the proposal
/// when the plan says so, builds the inputs the plan declares, and takes one
/// optimizer step on the estimator's loss. Every `train.eval_every` steps
/// before the last it evaluates, every `train.checkpoint_every` it saves.
pub fn train(
    s: &Setup,
    policy: &mut dyn Policy,
    mut progress: Progress,
    hooks: &mut dyn Hooks,
    show_progress: bool,
) -> anyhow::Result<Progress> {
    let estimator = s.run.estimator.value.as_ref();
    let train = &s.manifest.train;
    let mut opt = Optimizer::new(train.optimizer, policy.var_store(), s.run.lr)?;
    opt.load_state(
        progress.optimizer_steps,
        std::mem::take(&mut progress.optimizer_state),
    )
    .context("restoring the optimizer from the checkpoint")?;
    let context = BatchContext {
        task: s.task,
        prior: s.prior,
        reward: s.reward,
        goodness: s.manifest.goodness.value.as_ref(),
        codec: s.codec,
        sampling: &s.run.sampling,
        seed: s.seed,
        prompts_per_step: train.prompts_per_step,
        shared: s.samples,
    };
    let mut batcher = Batcher::new(context, estimator.plan())
        .with_context(|| format!("estimator `{}`", s.run.estimator.plugin))?;
    batcher.skip(progress.step);
    if let Some(q) = progress.proposal.take() {
        batcher.set_proposal(q);
    }
    let bar = align_core::progress::bar(show_progress, s.run.steps as u64, &s.run.name, "steps");
    bar.inc(progress.step as u64);
    for step in progress.step..s.run.steps {
        if batcher.plan().refreshes_at(step) {
            let model = s.manifest.model.value.as_ref();
            batcher.set_proposal(frozen_copy(model, s.model_ctx, policy)?);
        }
        let inputs = batcher.next(step, policy)?;
        let (loss, mut metrics) = estimator.loss(&inputs.groups);
        opt.zero_grad();
        loss.backward();
        policy.finish_backward();
        align_core::failpoint::hit("train-step");
        metrics.set("reward_mean", inputs.reward_mean); // over every candidate
        let loss_value = loss.double_value(&[]);
        // The update check reads every gradient's largest value: a NaN or
        // infinite gradient fails it too.
        if loss_value.is_finite() && opt.update_is_finite() {
            opt.step();
        } else {
            // Not applied: the weights stay those of the last good step
            // (an update that would overflow them counts too).
            opt.zero_grad();
            progress.nonfinite_steps += 1;
            metrics.set("nonfinite", 1.0);
            if train.on_nonfinite == OnNonfinite::Stop {
                eprintln!(
                    "  {} (seed {}): step {} has a non-finite loss, gradient or update (loss {loss_value}); \
                     stopping the run there (train.on_nonfinite = \"stop\"; \"skip\" would go on)",
                    s.run.name,
                    s.seed,
                    step + 1
                );
                progress.stopped = true;
                progress.log.push((step + 1, metrics));
                progress.step = step;
                break;
            }
        }

        // The final evaluation is the caller's.
        if train.eval_every > 0 && (step + 1) % train.eval_every == 0 && step + 1 < s.run.steps {
            metrics.extend(&hooks.evaluate(policy, step + 1)?);
        }
        progress.log.push((step + 1, metrics));
        progress.step = step + 1;
        bar.inc(1);
        if train.checkpoint_every > 0
            && progress.step.is_multiple_of(train.checkpoint_every)
            && progress.step < s.run.steps
        {
            let at = Snapshot {
                step: progress.step,
                log: &progress.log,
                nonfinite_steps: progress.nonfinite_steps,
                optimizer_steps: opt.steps(),
                optimizer_state: opt.state(),
                proposal: batcher.proposal(),
            };
            hooks.checkpoint(policy, &at)?;
        }
    }
    bar.finish_and_clear();
    progress.optimizer_steps = opt.steps();
    Ok(progress)
}
