//! The one flat training loop every estimator goes through: refresh the
//! proposal, build the inputs the estimator's data plan declares, take a step
//! on its loss, log, checkpoint.
//!
//! Data parallel (`mpiexec -n N runner …`, [`align_distributed::world`]):
//! every rank starts from rank 0's weights, takes its block of each step's
//! prompts (the batcher shards them, and its draws are the rows the single
//! process draws for them), and trains on its share of the step's loss:
//! each of the loss's means ([`align_core::Estimator::loss_means`]: over the
//! prompts, or over the step's valid pairs for DPO, RSO and SLiC-HF's
//! calibration) times the rank's terms over every rank's. Before each
//! optimizer step the shares' gradients and losses are summed, which is the
//! single process's step (to rounding), the same bits on every rank (on
//! CUDA through NCCL, in the gradients' kind: [`crate::grad_sum`]); the
//! metrics are summed weighted by the ranks' shares of the prompts. The
//! ranks share the held-out sampling of each evaluation; rank 0 alone judges
//! and checkpoints; each run ends with the ranks comparing a
//! hash of their weights.

use align_core::batcher::{BatchContext, Batcher};
use align_core::manifest::{Manifest, OnNonfinite, Run};
use align_core::optim::Optimizer;
use align_core::policy::frozen_copy;
use align_core::sample_cache::SampleCache;
use align_core::{Metrics, ModelContext, Policy, RewardModel, Task, TextCodec};
use align_distributed::Comm;
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
    let comm = align_distributed::world();
    let show_progress = show_progress && comm.is_root();
    let mut opt = Optimizer::new(train.optimizer, policy.var_store(), s.run.lr)?;
    opt.load_state(
        progress.optimizer_steps,
        std::mem::take(&mut progress.optimizer_state),
    )
    .context("restoring the optimizer from the checkpoint")?;
    // Every rank starts from rank 0's weights (fresh or its checkpoint's).
    opt.broadcast_weights(comm);
    let device_sum = crate::grad_sum::for_run(comm, policy.var_store().device())?;
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
        sampler: s.manifest.sampler.as_ref().map(|slot| slot.value.as_ref()),
    };
    let mut batcher = Batcher::new(context, estimator.plan())
        .and_then(|b| b.distributed(comm))
        .with_context(|| format!("estimator `{}`", s.run.estimator.plugin))?;
    batcher.skip(progress.step);
    if let Some(q) = progress.proposal.take() {
        batcher.set_proposal(q, progress.step as u64)?;
    }
    let bar = align_core::progress::bar(show_progress, s.run.steps as u64, &s.run.name, "steps");
    bar.inc(progress.step as u64);
    for step in progress.step..s.run.steps {
        if batcher.plan().refreshes_at(step) {
            let model = s.manifest.model.value.as_ref();
            batcher.set_proposal(frozen_copy(model, s.model_ctx, policy)?, step as u64)?;
        }
        let inputs = batcher.next(step, policy)?;
        let (loss, mut metrics) = if comm.size() > 1 {
            // This rank's share of each of the loss's means over the whole
            // step (its terms over every rank's): the shares' gradients,
            // summed, are the single process's.
            let (means, metrics) = estimator.loss_means(&inputs.groups);
            let mut totals = means.counts();
            comm.sum_f64(&mut totals);
            (means.share_of(&totals), metrics)
        } else {
            estimator.loss(&inputs.groups)
        };
        opt.zero_grad();
        loss.backward();
        policy.finish_backward();
        align_core::failpoint::hit("train-step");
        metrics.set("reward_mean", inputs.reward_mean); // over every candidate
        metrics.extend(&inputs.sampler_metrics);
        let mut loss_value = loss.double_value(&[]);
        // The step's gradient (the ranks' shares, summed; nothing to do
        // for one process, unless BRAIN_NCCL=on sends it through NCCL).
        opt.sum_grads(comm, device_sum)
            .with_context(|| format!("step {}: summing the gradients", step + 1))?;
        if comm.size() > 1 {
            // Its loss, and its metrics (each rank's weighted by its share
            // of the prompts).
            loss_value = sum_scalars(comm, inputs.share, loss_value, &mut metrics)
                .with_context(|| format!("step {}", step + 1))?;
        }
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
                if comm.is_root() {
                    eprintln!(
                    "  {} (seed {}): step {} has a non-finite loss, gradient or update (loss {loss_value}); \
                     stopping the run there (train.on_nonfinite = \"stop\"; \"skip\" would go on)",
                    s.run.name,
                    s.seed,
                    step + 1
                );
                }
                progress.stopped = true;
                progress.log.push((step + 1, metrics));
                progress.step = step;
                break;
            }
        }

        // The final evaluation is the caller's. Every rank samples its share
        // of the held-out completions; rank 0 alone judges (the others' are
        // empty).
        if train.eval_every > 0 && (step + 1) % train.eval_every == 0 && step + 1 < s.run.steps {
            metrics.extend(&hooks.evaluate(policy, step + 1)?);
        }
        progress.log.push((step + 1, metrics));
        progress.step = step + 1;
        bar.inc(1);
        if train.checkpoint_every > 0
            && progress.step.is_multiple_of(train.checkpoint_every)
            && progress.step < s.run.steps
            && comm.is_root()
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
    if comm.size() > 1 {
        agree(comm, &opt, s, progress.step)?;
    }
    Ok(progress)
}

/// `loss` (this rank's share of the step's loss) and every metric times this
/// rank's `share` of the step's prompts, summed over the ranks (into
/// `metrics`; `loss` among them is the step's loss), but a largest value (a
/// name with the word `max`: `server_logp_max_abs_diff`) the largest of the
/// ranks'; returns the step's loss.
/// Every rank must log the same metrics in the same order, which rank 0's
/// list of names checks.
fn sum_scalars(
    comm: &dyn Comm,
    share: f64,
    loss: f64,
    metrics: &mut Metrics,
) -> anyhow::Result<f64> {
    let names: Vec<String> = metrics.iter().map(|(n, _)| n.to_string()).collect();
    let mut digest = names_digest(&names);
    comm.broadcast(&mut digest);
    anyhow::ensure!(
        digest == names_digest(&names),
        "rank {} logs other metrics than rank 0 ({names:?})",
        comm.rank()
    );
    let mine: Vec<f64> = metrics.iter().map(|(_, v)| v).collect();
    let mut values: Vec<f64> = std::iter::once(loss)
        .chain(mine.iter().map(|v| v * share))
        .collect();
    comm.sum_f64(&mut values);
    // A largest value (`…_max…`) is the largest over the ranks, not a mean
    // (every rank has the same names: gathered only when there is one).
    let is_max = |name: &str| name.split('_').any(|w| w == "max");
    let every = match names.iter().any(|n| is_max(n)) {
        true => comm.gather_f64(&mine, &vec![mine.len(); comm.size()]),
        false => Vec::new(),
    };
    for (i, (name, v)) in names.iter().zip(&values[1..]).enumerate() {
        let value = match is_max(name) {
            true => every
                .iter()
                .skip(i)
                .step_by(mine.len().max(1))
                .copied()
                .fold(f64::NEG_INFINITY, f64::max),
            false => *v,
        };
        metrics.set(name.as_str(), value);
    }
    if metrics.get("loss").is_some() {
        metrics.set("loss", values[0]); // the step's loss, not a mean of the ranks'
    }
    Ok(values[0])
}

fn names_digest(names: &[String]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(names.join("\n")).into()
}

/// The ranks compare a hash of their weights after a run's last step: they
/// must hold the same bits. Each rank prints its own (one line on stderr).
fn agree(comm: &dyn Comm, opt: &Optimizer, s: &Setup, step: usize) -> anyhow::Result<()> {
    let mine = opt.weights_sha256();
    let mut root = mine.clone().into_bytes();
    comm.broadcast(&mut root);
    // One write, so that the ranks' lines (on one terminal) do not interleave.
    let line = format!(
        "  rank {} of {}: {} (seed {}) after step {step}: weights sha256 {mine}\n",
        comm.rank(),
        comm.size(),
        s.run.name,
        s.seed
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    anyhow::ensure!(
        root == mine.as_bytes(),
        "rank {}'s weights differ from rank 0's after step {step} of {} (seed {})",
        comm.rank(),
        s.run.name,
        s.seed
    );
    Ok(())
}
