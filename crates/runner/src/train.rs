//! The one flat training loop every estimator goes through: sample from the
//! proposal, score, compute log-probs, take a step on the estimator's loss.

use align_core::logprob::{policy_logprobs, sampling_logprobs};
use align_core::manifest::{Manifest, Optimizer, Run};
use align_core::policy::frozen_copy;
use align_core::sampling::sample;
use align_core::task::{Prompt, TokenPair};
use align_core::{
    GroupInputs, Metrics, ModelContext, Policy, RewardModel, SampleBatch, Task, TextCodec,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::OptimizerConfig;
use tch::{nn, Kind, Tensor};

pub struct Setup<'a> {
    pub manifest: &'a Manifest,
    pub run: &'a Run,
    pub task: &'a dyn Task,
    pub model_ctx: &'a ModelContext,
    pub prior: &'a dyn Policy,
    pub reward: &'a dyn RewardModel,
    pub codec: Option<&'a dyn TextCodec>,
}

/// Per-step metrics: `(step, metrics)`; evaluation metrics appear on eval steps.
pub type StepLog = Vec<(usize, Metrics)>;

/// The seed of one use (`"sample"`, `"shuffle"`, …) at one step. It depends
/// on the manifest seed, never on the run, so every run of a manifest sees the
/// same random numbers (common random numbers: runs that share a proposal
/// train on the same samples, and differences between rows are the methods').
pub fn step_seed(seed: u64, purpose: &str, step: usize) -> u64 {
    let h = purpose.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ h ^ (step as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

pub fn train(
    s: &Setup,
    policy: &mut dyn Policy,
    evaluate: &dyn Fn(&dyn Policy) -> anyhow::Result<Metrics>,
    progress: bool,
) -> anyhow::Result<StepLog> {
    let estimator = s.run.estimator.value.as_ref();
    let goodness = s.manifest.goodness.value.as_ref();
    let n = estimator.samples_per_prompt();
    let train = &s.manifest.train;
    let mut opt = match train.optimizer {
        Optimizer::Adam => nn::Adam::default().build(policy.var_store(), s.run.lr)?,
        Optimizer::Sgd => nn::Sgd::default().build(policy.var_store(), s.run.lr)?,
    };
    let prompts = s.task.train_prompts();
    // "Direct" estimators step through the task's preference pairs, the
    // others through its prompts.
    let pairs = match (estimator.uses_dataset_pairs(), s.task.train_pairs()) {
        (false, _) => None,
        (true, Some(pairs)) if !pairs.is_empty() => Some(pairs),
        (true, _) => anyhow::bail!(
            "estimator `{}` trains on dataset pairs, and this task has none (use a preference dataset task)",
            s.run.estimator.plugin
        ),
    };
    let items = pairs.map_or(prompts.len(), <[_]>::len);
    let per_step = train.prompts_per_step.unwrap_or(items).min(items);
    let mut order: Vec<usize> = (0..items).collect();
    let mut cursor = items; // forces a shuffle on the first step
    let mut shuffle_rng = ChaCha8Rng::seed_from_u64(step_seed(s.manifest.seed, "shuffle", 0));
    let mut proposal: Option<Box<dyn Policy>> = None; // None: sample from the prior
    let bar = progress_bar(progress, s.run.steps as u64, &s.run.name);
    let mut log = StepLog::new();
    // Reference (gold / SFT) outputs for estimators that regularise toward them;
    // a task without its own gets one prior sample per prompt, the stand-in for
    // a draw from the SFT data distribution.
    let references: Option<Vec<Vec<i64>>> =
        match (estimator.needs_reference(), s.task.train_references()) {
            (false, _) => None,
            (true, Some(r)) => Some(r.to_vec()),
            (true, None) => {
                let seed = step_seed(s.manifest.seed, "references", 0);
                let drawn = sample(
                    s.prior,
                    prompts,
                    1,
                    s.task.max_new_tokens(),
                    s.task.eos_token(),
                    &Default::default(),
                    seed,
                );
                Some(drawn.completions())
            }
        };

    for step in 0..s.run.steps {
        if let Some(k) = estimator.proposal_refresh_every() {
            if step > 0 && step % k == 0 {
                proposal = Some(frozen_copy(
                    s.manifest.model.value.as_ref(),
                    s.model_ctx,
                    policy,
                )?);
            }
        }
        let q: &dyn Policy = proposal.as_deref().unwrap_or(s.prior);

        // Next prompts, reshuffled each epoch.
        let mut batch_index: Vec<usize> = Vec::with_capacity(per_step);
        while batch_index.len() < per_step {
            if cursor == order.len() {
                order.shuffle(&mut shuffle_rng);
                cursor = 0;
            }
            batch_index.push(order[cursor]);
            cursor += 1;
        }
        let batch_prompts: Vec<Prompt> = match pairs {
            Some(pairs) => batch_index
                .iter()
                .map(|&i| pairs[i].prompt.clone())
                .collect(),
            None => batch_index.iter().map(|&i| prompts[i].clone()).collect(),
        };
        let p = batch_prompts.len() as i64;

        let seed = step_seed(s.manifest.seed, "sample", step);
        let draw = |policy: &dyn Policy, count: i64, seed: u64| {
            sample(
                policy,
                &batch_prompts,
                count,
                s.task.max_new_tokens(),
                s.task.eos_token(),
                &s.run.sampling,
                seed,
            )
        };
        let from_prior = (estimator.prior_fraction() * n as f64).round() as i64;
        let drawn = match (pairs, proposal.as_deref()) {
            (Some(pairs), _) => dataset_pairs(pairs, &batch_index, s.prior.device()),
            (None, Some(current)) if from_prior > 0 => pooled(
                s,
                current,
                &draw,
                p,
                n,
                from_prior,
                seed,
                estimator.prior_fraction(),
            ),
            _ => draw(q, n, seed),
        };
        let mut drawn = drawn;
        if let (Some(codec), None) = (s.codec, pairs) {
            drawn.decode_texts(codec)?; // for rewards that read text (dataset pairs are not scored)
        }
        let reward = match pairs {
            // Chosen (1) over rejected (0): the ranking the pair losses read.
            Some(_) => Tensor::from_slice(&[1.0f32, 0.0])
                .to_device(s.prior.device())
                .repeat([p, 1]),
            None => {
                let _guard = tch::no_grad_guard();
                s.reward.score(&drawn)?.view([p, n])
            }
        };
        let drawn_reward_mean = reward.mean(Kind::Double).double_value(&[]);
        // Estimators such as RSO train on a reward-chosen subset of the samples;
        // only that subset is scored by the prior and the policy.
        let (batch, reward) = match estimator.subsample(&reward, seed) {
            Some(index) => {
                let k = index.size()[1];
                let offsets = Tensor::arange(p, (Kind::Int64, index.device())).unsqueeze(1) * n;
                let rows = (index.to_device(reward.device()) + offsets.to_device(reward.device()))
                    .view([-1]); // [P·k]
                (
                    drawn.select_rows(&rows),
                    reward
                        .gather(1, &index.to_device(reward.device()), false)
                        .view([p, k]),
                )
            }
            None => (drawn, reward),
        };
        let k = reward.size()[1];
        let (prior_logp, log_goodness) = {
            let _guard = tch::no_grad_guard();
            let log_goodness = goodness.log_goodness(&reward.view([-1]), None)?;
            (policy_logprobs(s.prior, &batch), log_goodness)
        };
        let reference_policy_logp = if estimator.needs_reference() {
            let references = references.as_deref().expect("drawn before the loop");
            let chosen: Vec<Vec<i64>> =
                batch_index.iter().map(|&i| references[i].clone()).collect();
            let refs = SampleBatch::from_pairs(&batch_prompts, &chosen, policy.device());
            Some(policy_logprobs(policy, &refs)) // [P], with gradient
        } else {
            None
        };
        let policy_logp = policy_logprobs(policy, &batch); // [P·k], with gradient
        let inputs = GroupInputs {
            policy_logp: policy_logp.view([p, k]),
            proposal_logp: batch.proposal_logp.view([p, k]),
            prior_logp: prior_logp.view([p, k]),
            log_goodness: log_goodness.view([p, k]),
            reward: reward.shallow_clone(),
            lengths: batch.lengths().view([p, k]),
            reference_policy_logp,
        };
        let (loss, mut metrics) = estimator.loss(&inputs);
        opt.backward_step(&loss);

        metrics.set("reward_mean", drawn_reward_mean); // over every drawn sample
        let evaluate_now = train.eval_every > 0 && (step + 1) % train.eval_every == 0;
        if evaluate_now {
            metrics.extend(&evaluate(policy)?);
        }
        log.push((step + 1, metrics));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(log)
}

/// The pairs at `index` as a batch: rows `2i` chosen, `2i + 1` rejected.
fn dataset_pairs(pairs: &[TokenPair], index: &[usize], device: tch::Device) -> SampleBatch {
    let prompts: Vec<Prompt> = index
        .iter()
        .flat_map(|&i| [pairs[i].prompt.clone(), pairs[i].prompt.clone()])
        .collect();
    let completions: Vec<Vec<i64>> = index
        .iter()
        .flat_map(|&i| [pairs[i].chosen.clone(), pairs[i].rejected.clone()])
        .collect();
    let mut batch = SampleBatch::from_pairs(&prompts, &completions, device);
    batch.prompt_index = (0..index.len()).flat_map(|p| [p, p]).collect();
    batch
}

/// `n` samples per prompt pooled from the prior (`from_prior` of them) and the
/// current proposal, grouped by prompt, each weighted by the mixture density
/// `log(f·p_T(y) + (1−f)·Q_T(y))` of the two sampling distributions.
#[allow(clippy::too_many_arguments)]
fn pooled(
    s: &Setup,
    current: &dyn Policy,
    draw: &dyn Fn(&dyn Policy, i64, u64) -> SampleBatch,
    p: i64,
    n: i64,
    from_prior: i64,
    seed: u64,
    fraction: f64,
) -> SampleBatch {
    let a = draw(s.prior, from_prior, seed);
    let b = draw(current, n - from_prior, seed ^ 0x9E37_79B9);
    let both = SampleBatch::cat(&a, &b);
    // Rows are [prior rows of every prompt, proposal rows of every prompt];
    // regroup them prompt by prompt.
    let order: Vec<i64> = (0..p)
        .flat_map(|i| {
            let prior_rows = (0..from_prior).map(move |j| i * from_prior + j);
            let current_rows =
                (0..n - from_prior).map(move |j| p * from_prior + i * (n - from_prior) + j);
            prior_rows.chain(current_rows)
        })
        .collect();
    let mut batch = both.select_rows(&Tensor::from_slice(&order));
    let _guard = tch::no_grad_guard();
    let log_prior = sampling_logprobs(s.prior, &batch, &s.run.sampling) + fraction.ln();
    let log_current = sampling_logprobs(current, &batch, &s.run.sampling) + (1.0 - fraction).ln();
    batch.proposal_logp =
        Tensor::stack(&[log_prior, log_current], 0).logsumexp([0].as_slice(), false);
    batch
}

fn progress_bar(show: bool, len: u64, name: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>20} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}
