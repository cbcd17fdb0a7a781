//! Turns an estimator's [`DataPlan`] and a step into [`GroupInputs`]: picks
//! the step's prompts (or preference pairs), draws and scores the candidates,
//! keeps the subset the loss reads, and computes the log-probs under the
//! prior, the proposal and the policy.
//!
//! Work that the loop would repeat is done once: a draw from the prior is
//! shared by the manifest's runs ([`SampleCache`]); its prior log-probs are
//! the sampler's own (recorded from the logits that drew each token), not a
//! second forward pass; a dataset pair's prior log-probs are computed the
//! first time a run meets the pair and kept for its later epochs.
//!
//! Data parallel ([`Batcher::distributed`]): each rank takes a contiguous
//! block of the step's prompts ([`align_distributed::shard`]), and its draws
//! are the rows those prompts have in the single process's draw
//! ([`sample_part`]), so the ranks' inputs end to end are the single
//! process's step, row for row. A subset chosen from the rewards (RSO's
//! rejection sampler, one random stream over the step's prompts) is chosen
//! from every rank's rewards gathered, then each rank keeps its rows.

use std::cell::RefCell;
use std::collections::HashMap;

use align_distributed::{shard, Comm, Single};
use anyhow::Context;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::logprob::{policy_logprobs, sampling_logprobs};
use crate::plan::{Candidates, DataPlan, Distribution};
use crate::sample_cache::{SampleCache, SampleKey};
use crate::sampling::{sample, sample_part, Part};
use crate::task::Prompt;
use crate::{GoodnessModel, GroupInputs, Policy, RewardModel, SampleBatch, SamplingConfig};
use crate::{Task, TextCodec};

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

/// What the batcher reads, fixed for a run.
pub struct BatchContext<'a> {
    pub task: &'a dyn Task,
    pub prior: &'a dyn Policy,
    pub reward: &'a dyn RewardModel,
    pub goodness: &'a dyn GoodnessModel,
    /// Decodes samples for rewards that read text.
    pub codec: Option<&'a dyn TextCodec>,
    /// The run's sampling settings (a candidate set may bring its own).
    pub sampling: &'a SamplingConfig,
    /// The manifest's seed.
    pub seed: u64,
    /// Prompts (or pairs) per step; `None`: all of them.
    pub prompts_per_step: Option<usize>,
    /// Draws from the prior shared with the manifest's other runs.
    pub shared: Option<&'a SampleCache>,
    /// Where samples are drawn when not in this process (`[sampler.NAME]`).
    pub sampler: Option<&'a dyn crate::SamplerBackend>,
}

/// One step's inputs to the loss.
pub struct StepInputs {
    pub groups: GroupInputs,
    /// Mean reward over every candidate, before any subset (of this
    /// rank's prompts, when data parallel).
    pub reward_mean: f64,
    /// This rank's share of the step's prompts (1 in a single process): the
    /// ranks' logged metrics, weighted by it and summed, are the step's
    /// (the loss weighs its own means: `Estimator::loss_means`).
    pub share: f64,
    /// What the sampler backend reported of this step's draws (none when
    /// sampling in process, or when every draw was shared).
    pub sampler_metrics: crate::Metrics,
}

pub struct Batcher<'a> {
    ctx: BatchContext<'a>,
    plan: DataPlan,
    order: EpochOrder,
    /// Reference output of every training prompt, when the plan reads them.
    references: Option<Vec<Vec<i64>>>,
    /// `None`: the proposal is the prior.
    proposal: Option<Box<dyn Policy>>,
    /// Prior log-probs `(chosen, rejected)` of every dataset pair met so far.
    pair_prior: RefCell<HashMap<usize, (f32, f32)>>,
    /// The ranks this step's prompts are sharded over.
    comm: &'a dyn Comm,
    /// The sampler backend's report of this step's draws.
    sampler_metrics: RefCell<crate::Metrics>,
}

impl<'a> Batcher<'a> {
    pub fn new(ctx: BatchContext<'a>, plan: DataPlan) -> anyhow::Result<Batcher<'a>> {
        anyhow::ensure!(
            !plan.candidates.is_empty(),
            "the estimator's data plan has no candidates"
        );
        // A goodness model that compares each sample with the prompt's
        // reference output (bt-vs-reference) needs the references too.
        let uses_references = plan.uses_references() || ctx.goodness.needs_reference();
        let items = if plan.uses_dataset_pairs() {
            anyhow::ensure!(
                !uses_references,
                "a plan cannot read both dataset pairs and reference outputs (references follow the task's prompts; \
                 a goodness model that compares with a reference, such as bt-vs-reference, needs them too)"
            );
            match ctx.task.train_pairs() {
                Some(pairs) if !pairs.is_empty() => pairs.len(),
                _ => anyhow::bail!(
                    "this estimator trains on dataset pairs, and this task has none (use a preference dataset task)"
                ),
            }
        } else {
            ctx.task.train_prompts().len()
        };
        // A task without references of its own gets one prior sample per
        // prompt, the stand-in for a draw from the SFT data distribution.
        let references = match (uses_references, ctx.task.train_references()) {
            (false, _) => None,
            (true, Some(r)) => Some(r.to_vec()),
            (true, None) => Some(
                sample(
                    ctx.prior,
                    ctx.task.train_prompts(),
                    1,
                    ctx.task.max_new_tokens(),
                    ctx.task.eos_token(),
                    &SamplingConfig::default(),
                    step_seed(ctx.seed, "references", 0),
                )
                .completions(),
            ),
        };
        let per_step = ctx.prompts_per_step.unwrap_or(items).min(items);
        let order = EpochOrder::new(items, per_step, step_seed(ctx.seed, "shuffle", 0));
        Ok(Batcher {
            ctx,
            plan,
            order,
            references,
            proposal: None,
            pair_prior: RefCell::new(HashMap::new()),
            comm: &Single,
            sampler_metrics: RefCell::default(),
        })
    }

    /// Shards every step's prompts (or pairs) over `comm`'s ranks: this
    /// rank's inputs are its block of the single process's step. Every rank
    /// needs at least one prompt a step.
    pub fn distributed(mut self, comm: &'a dyn Comm) -> anyhow::Result<Batcher<'a>> {
        let per_step = self.order.per_step;
        anyhow::ensure!(
            per_step >= comm.size(),
            "{per_step} prompt(s) a step cannot be shared by {} ranks: every rank needs at least one \
             (raise train.prompts_per_step or start fewer ranks)",
            comm.size()
        );
        self.comm = comm;
        Ok(self)
    }

    /// This rank's block of a step's items, and where it stands among them.
    fn local(&self, global: Vec<usize>) -> (Vec<usize>, Part) {
        let range = shard(global.len(), self.comm.rank(), self.comm.size());
        let part = Part {
            first: range.start,
            total: global.len(),
        };
        (global[range].to_vec(), part)
    }

    /// Every rank's rows of `local` `[P_r, n]`, in rank order: the step's
    /// `[P, n]` (`total` prompts in all), the same values and kind.
    fn gather_rows(&self, local: &Tensor, total: usize) -> Tensor {
        let (size, n) = (self.comm.size(), local.size()[1]);
        let counts: Vec<usize> = (0..size)
            .map(|r| shard(total, r, size).len() * n as usize)
            .collect();
        let values = Vec::<f64>::try_from(
            local
                .to_device(Device::Cpu)
                .to_kind(Kind::Double)
                .view([-1]),
        )
        .expect("f64 values");
        let all = self.comm.gather_f64(&values, &counts);
        Tensor::from_slice(&all)
            .view([total as i64, n])
            .to_kind(local.kind())
            .to_device(local.device())
    }

    pub fn plan(&self) -> &DataPlan {
        &self.plan
    }

    /// Samples from `proposal` from now on (a frozen copy of the policy).
    /// The proposal is now `proposal` (refreshed at step `version`, or
    /// restored from a checkpoint): a sampler backend serves it from now on.
    pub fn set_proposal(&mut self, proposal: Box<dyn Policy>, version: u64) -> anyhow::Result<()> {
        if let Some(backend) = self.ctx.sampler {
            backend
                .refresh(proposal.as_ref(), version, self.comm)
                .with_context(|| {
                    format!("the sampler ({}) loading the proposal", backend.describe())
                })?;
        }
        self.proposal = Some(proposal);
        Ok(())
    }

    /// The latest proposal, when it is no longer the prior.
    pub fn proposal(&self) -> Option<&dyn Policy> {
        self.proposal.as_deref()
    }

    /// Moves past `steps` steps taken before a resume: the data order ends
    /// where it stood after them (every other draw is seeded by its step).
    /// The prior log-probs of the dataset pairs those steps met are
    /// recomputed as they were then (the same pairs in the same batches), so
    /// the resumed run reads the numbers the uninterrupted one kept.
    pub fn skip(&mut self, steps: usize) {
        for _ in 0..steps {
            let global = self.order.next();
            let (items, _) = self.local(global);
            if self.caches_pair_prior() {
                let _ = self.pair_prior_logp(&items); // kept in the map
            }
        }
    }

    /// Whether the step's candidates are its dataset pairs alone, whose prior
    /// log-probs are then kept across epochs.
    fn caches_pair_prior(&self) -> bool {
        self.plan.subset.is_none()
            && self.plan.candidates.len() == 1
            && matches!(self.plan.candidates[0], Candidates::DatasetPair)
    }

    /// Prior log-probs `[2·P]` of the pairs at `items` (rows chosen, rejected
    /// per pair), computing those not met before in one batch.
    fn pair_prior_logp(&self, items: &[usize]) -> Tensor {
        let pairs = self.ctx.task.train_pairs().expect("checked in new");
        let device = self.ctx.prior.device();
        let mut known = self.pair_prior.borrow_mut();
        let mut missing: Vec<usize> = items
            .iter()
            .copied()
            .filter(|i| !known.contains_key(i))
            .collect();
        missing.retain({
            let mut seen = std::collections::HashSet::new();
            move |i| seen.insert(*i)
        });
        if !missing.is_empty() {
            let _guard = tch::no_grad_guard();
            let batch = dataset_pairs(pairs, &missing, device);
            let logp = Vec::<f32>::try_from(
                policy_logprobs(self.ctx.prior, &batch)
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float),
            )
            .expect("a [2·P] f32 tensor");
            for (j, &i) in missing.iter().enumerate() {
                known.insert(i, (logp[2 * j], logp[2 * j + 1]));
            }
        }
        let values: Vec<f32> = items
            .iter()
            .flat_map(|i| {
                let (chosen, rejected) = known[i];
                [chosen, rejected]
            })
            .collect();
        Tensor::from_slice(&values).to_device(device)
    }

    /// The inputs of step `step` (0-based) for `policy`, whose log-probs carry
    /// the gradient.
    pub fn next(&mut self, step: usize, policy: &dyn Policy) -> anyhow::Result<StepInputs> {
        let global = self.order.next();
        let (items, part) = self.local(global);
        let prompts: Vec<Prompt> = match self.ctx.task.train_pairs() {
            Some(pairs) if self.plan.uses_dataset_pairs() => {
                items.iter().map(|&i| pairs[i].prompt.clone()).collect()
            }
            _ => {
                let all = self.ctx.task.train_prompts();
                items.iter().map(|&i| all[i].clone()).collect()
            }
        };
        let p = prompts.len() as i64;
        let seed = step_seed(self.ctx.seed, "sample", step);
        let references = self.step_references(&items, &prompts)?;

        // Each candidate set → rows prompt-major `[P·c]` and rewards `[P, c]`.
        let mut sets = Vec::with_capacity(self.plan.candidates.len());
        for (i, c) in self.plan.candidates.iter().enumerate() {
            let set_seed = if i == 0 {
                seed
            } else {
                step_seed(self.ctx.seed, &format!("sample/{i}"), step)
            };
            let refs = references.as_ref();
            sets.push(self.candidates(c, &items, &prompts, refs, set_seed, part)?);
        }
        let counts: Vec<i64> = self.plan.candidates.iter().map(Candidates::count).collect();
        let mut batches = Vec::with_capacity(sets.len());
        let mut rewards = Vec::with_capacity(sets.len());
        let mut known_prior = Vec::with_capacity(sets.len());
        for (batch, reward, prior) in sets {
            batches.push(batch);
            rewards.push(reward);
            known_prior.push(prior);
        }
        // Every row's prior log-prob when each set brought its own: `[P·n]`,
        // in the rows' prompt-major order.
        let known_prior: Option<Tensor> = known_prior
            .into_iter()
            .collect::<Option<Vec<Tensor>>>()
            .map(|sets| {
                let all = Tensor::cat(&sets, 0);
                match prompt_major_order(&counts, p) {
                    Some(order) => all.index_select(0, &order.to_device(all.device())),
                    None => all,
                }
            });
        let batch = group_by_prompt(batches, &counts, p);
        let reward = Tensor::cat(&rewards, 1); // [P, n]
        let n = reward.size()[1];
        let reward_mean = reward.mean(Kind::Double).double_value(&[]);

        // The subset the loss reads; only it is scored by the prior and the policy.
        let (batch, reward, known_prior) = match &self.plan.subset {
            Some(choose) => {
                let index = if self.comm.size() > 1 {
                    // Chosen from the whole step's rewards, as one process
                    // chooses (one random stream over all its prompts).
                    let all = self.gather_rows(&reward, part.total);
                    choose(&all, seed).narrow(0, part.first as i64, p)
                } else {
                    choose(&reward, seed)
                };
                let index = index.to_device(reward.device()); // [P, k]
                let k = index.size()[1];
                let offsets = Tensor::arange(p, (Kind::Int64, index.device())).unsqueeze(1) * n;
                let rows = (&index + offsets).view([-1]); // [P·k]
                (
                    batch.select_rows(&rows),
                    reward.gather(1, &index, false).view([p, k]),
                    known_prior.map(|t| t.index_select(0, &rows.to_device(t.device()))),
                )
            }
            None => (batch, reward, known_prior),
        };
        let k = reward.size()[1];
        let (prior_logp, log_goodness) = {
            let _guard = tch::no_grad_guard();
            // The reference's reward beside each of its prompt's candidates.
            let reference_reward = match &references {
                Some(StepReferences {
                    reward: Some(r), ..
                }) if self.ctx.goodness.needs_reference() => {
                    Some(r.unsqueeze(1).expand([p, k], false).reshape([-1])) // [P·k]
                }
                _ => None,
            };
            let log_goodness = self
                .ctx
                .goodness
                .log_goodness(&reward.view([-1]), reference_reward.as_ref())?;
            let prior_logp = match known_prior {
                Some(known) => known,
                None => policy_logprobs(self.ctx.prior, &batch),
            };
            (prior_logp, log_goodness)
        };
        let reference_policy_logp = match &references {
            Some(refs) if self.plan.reference_logp => {
                Some(policy_logprobs(policy, &refs.batch)) // [P], with gradient
            }
            _ => None,
        };
        let policy_logp = policy_logprobs(policy, &batch); // [P·k], with gradient
        let groups = GroupInputs {
            policy_logp: policy_logp.view([p, k]),
            proposal_logp: batch.proposal_logp.view([p, k]),
            prior_logp: prior_logp.view([p, k]),
            log_goodness: log_goodness.view([p, k]),
            reward,
            lengths: batch.lengths().view([p, k]),
            reference_policy_logp,
        };
        Ok(StepInputs {
            groups,
            reward_mean,
            share: p as f64 / part.total as f64,
            sampler_metrics: self.sampler_metrics.take(),
        })
    }

    /// One candidate set for the step's prompts: the batch `[P·c]`, its
    /// rewards `[P, c]` and, where they are known without a forward pass,
    /// its prior log-probs `[P·c]`.
    fn candidates(
        &self,
        c: &Candidates,
        items: &[usize],
        prompts: &[Prompt],
        references: Option<&StepReferences>,
        seed: u64,
        part: Part,
    ) -> anyhow::Result<(SampleBatch, Tensor, Option<Tensor>)> {
        let p = prompts.len() as i64;
        let device = self.ctx.prior.device();
        match c {
            Candidates::DatasetPair => {
                let pairs = self.ctx.task.train_pairs().expect("checked in new");
                let batch = dataset_pairs(pairs, items, device);
                // Chosen (1) over rejected (0): the ranking the pair losses read.
                let reward = Tensor::from_slice(&[1.0f32, 0.0])
                    .to_device(device)
                    .repeat([p, 1]);
                let prior = self
                    .caches_pair_prior()
                    .then(|| self.pair_prior_logp(items));
                Ok((batch, reward, prior))
            }
            Candidates::Reference => {
                let refs = references.expect("built in next: the plan reads references");
                let reward = refs.reward.as_ref().expect("scored: a candidate set");
                Ok((refs.batch.shallow_clone(), reward.view([p, 1]), None))
            }
            Candidates::Sample {
                from,
                count,
                sampling,
            } => {
                let draw = || -> anyhow::Result<(SampleBatch, Tensor)> {
                    let config = sampling.as_ref();
                    let mut batch = self.draw(*from, *count, config, prompts, seed, part)?;
                    let reward = self.score(&mut batch)?;
                    Ok((batch, reward))
                };
                // A draw from the prior is the same in every run at this step
                // (common random numbers): made once, shared.
                let (batch, reward) = match self.ctx.shared {
                    Some(cache) if self.draws_prior(*from) => {
                        let task = self.ctx.task;
                        let config = sampling.as_ref().unwrap_or(self.ctx.sampling);
                        let key = SampleKey::new(
                            prompts,
                            *count,
                            task.max_new_tokens(),
                            task.eos_token(),
                            config,
                            seed,
                        )
                        .in_part(part);
                        cache.get_or_draw(key, draw)?
                    }
                    _ => draw()?,
                };
                // The sampler's temperature-1 log-probs of a draw from the
                // prior are the prior's log-probs.
                let prior = self
                    .draws_prior(*from)
                    .then(|| batch.model_logp.shallow_clone());
                Ok((batch, reward.view([p, *count]), prior))
            }
        }
    }

    /// Rewards `[B]` of a batch's rows (decoded first for rewards that read
    /// text), on the policy's device beside the fixed rewards of other sets.
    fn score(&self, batch: &mut SampleBatch) -> anyhow::Result<Tensor> {
        if let Some(codec) = self.ctx.codec {
            batch.decode_texts(codec)?;
        }
        let _guard = tch::no_grad_guard();
        let reward = self.ctx.reward.score(batch)?;
        Ok(reward.view([-1]).to_device(self.ctx.prior.device()))
    }

    /// `count` samples per prompt from `from`.
    fn draw(
        &self,
        from: Distribution,
        count: i64,
        sampling: Option<&SamplingConfig>,
        prompts: &[Prompt],
        seed: u64,
        part: Part,
    ) -> anyhow::Result<SampleBatch> {
        let config = sampling.unwrap_or(self.ctx.sampling);
        let task = self.ctx.task;
        let (max_new, eos) = (task.max_new_tokens(), task.eos_token());
        let draw = |policy: &dyn Policy, from_prior: bool, count: i64, seed: u64| {
            crate::failpoint::hit("sample");
            match self.ctx.sampler {
                Some(backend) => {
                    let batch = backend
                        .sample(
                            policy, from_prior, prompts, count, max_new, eos, config, seed, part,
                        )
                        .with_context(|| format!("sampling on {}", backend.describe()))?;
                    self.sampler_metrics.borrow_mut().extend(&backend.metrics());
                    Ok(batch)
                }
                None => Ok(sample_part(
                    policy, prompts, count, max_new, eos, config, seed, part,
                )),
            }
        };
        let prior = self.ctx.prior;
        Ok(match (from, self.proposal.as_deref()) {
            // The cases `draws_prior` names.
            (Distribution::Prior, _) | (_, None) => draw(prior, true, count, seed)?,
            (Distribution::Proposal, Some(q)) => draw(q, false, count, seed)?,
            (Distribution::Mixture { prior_fraction: f }, Some(q)) => {
                let from_prior = (f * count as f64).round() as i64;
                if from_prior == 0 {
                    return draw(q, false, count, seed);
                }
                let a = draw(prior, true, from_prior, seed)?;
                let b = draw(q, false, count - from_prior, seed ^ 0x9E37_79B9)?;
                let counts = [from_prior, count - from_prior];
                let mut batch = group_by_prompt(vec![a, b], &counts, prompts.len() as i64);
                let _guard = tch::no_grad_guard();
                let log_prior = sampling_logprobs(prior, &batch, config) + f.ln();
                let log_q = sampling_logprobs(q, &batch, config) + (1.0 - f).ln();
                batch.proposal_logp =
                    Tensor::stack(&[log_prior, log_q], 0).logsumexp([0].as_slice(), false);
                batch
            }
        })
    }

    /// Whether a draw from `from` is a draw from the prior: asked for, or
    /// before the first proposal refresh.
    fn draws_prior(&self, from: Distribution) -> bool {
        from == Distribution::Prior || self.proposal.is_none()
    }

    /// Each step prompt's reference output as a batch `[P]` (`proposal_logp`
    /// 0), built once a step for every use, and scored when something reads
    /// its reward (a `Reference` candidate set, or a goodness model that
    /// compares with it). `None` when nothing reads references.
    fn step_references(
        &self,
        items: &[usize],
        prompts: &[Prompt],
    ) -> anyhow::Result<Option<StepReferences>> {
        let Some(references) = self.references.as_deref() else {
            return Ok(None);
        };
        let chosen: Vec<Vec<i64>> = items.iter().map(|&i| references[i].clone()).collect();
        let mut batch = SampleBatch::from_pairs(prompts, &chosen, self.ctx.prior.device());
        let scored = self.ctx.goodness.needs_reference()
            || self
                .plan
                .candidates
                .iter()
                .any(|c| matches!(c, Candidates::Reference));
        let reward = if scored {
            Some(self.score(&mut batch)?)
        } else {
            None
        };
        Ok(Some(StepReferences { batch, reward }))
    }
}

/// The step prompts' reference outputs and, when read, their rewards `[P]`.
struct StepReferences {
    batch: SampleBatch,
    reward: Option<Tensor>,
}

/// Candidate sets, each prompt-major (`[P·c_i]` rows), regrouped prompt by
/// prompt: `[P·n]` rows, `n = Σ c_i`.
fn group_by_prompt(sets: Vec<SampleBatch>, counts: &[i64], p: i64) -> SampleBatch {
    let mut sets = sets.into_iter();
    let first = sets.next().expect("at least one set");
    let Some(order) = prompt_major_order(counts, p) else {
        return first;
    };
    let all = sets.fold(first, |a, b| SampleBatch::cat(&a, &b));
    all.select_rows(&order)
}

/// Where each row of [`group_by_prompt`]'s result comes from in the sets
/// laid end to end; `None` for a single set (already prompt-major).
fn prompt_major_order(counts: &[i64], p: i64) -> Option<Tensor> {
    if counts.len() == 1 {
        return None;
    }
    // Rows are [set 0 of every prompt, set 1 of every prompt, …].
    let starts: Vec<i64> = counts
        .iter()
        .scan(0, |at, &c| {
            let start = *at;
            *at += p * c;
            Some(start)
        })
        .collect();
    let order: Vec<i64> = (0..p)
        .flat_map(|i| {
            counts
                .iter()
                .zip(&starts)
                .flat_map(move |(&c, &start)| (0..c).map(move |j| start + i * c + j))
        })
        .collect();
    Some(Tensor::from_slice(&order))
}

/// The pairs at `index` as a batch: rows `2i` chosen, `2i + 1` rejected.
fn dataset_pairs(pairs: &[crate::task::TokenPair], index: &[usize], device: Device) -> SampleBatch {
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

/// Items (prompts or pairs) `per_step` at a time, reshuffled each epoch.
struct EpochOrder {
    order: Vec<usize>,
    cursor: usize,
    per_step: usize,
    rng: ChaCha8Rng,
}

impl EpochOrder {
    fn new(items: usize, per_step: usize, seed: u64) -> EpochOrder {
        EpochOrder {
            order: (0..items).collect(),
            cursor: items, // forces a shuffle on the first step
            per_step,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn next(&mut self) -> Vec<usize> {
        let mut batch = Vec::with_capacity(self.per_step);
        while batch.len() < self.per_step {
            if self.cursor == self.order.len() {
                self.order.shuffle(&mut self.rng);
                self.cursor = 0;
            }
            batch.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_policies::Counting;

    fn prompt(id: i64) -> Prompt {
        Prompt {
            ids: vec![id],
            text: None,
        }
    }

    /// Rows `[P·c]` of each set are regrouped prompt by prompt, sets in order.
    #[test]
    fn candidate_sets_are_grouped_by_prompt() {
        let (a, b) = (prompt(1), prompt(2));
        let one =
            SampleBatch::from_pairs(&[a.clone(), b.clone()], &[vec![10], vec![20]], Device::Cpu);
        let two = SampleBatch::from_pairs(
            &[a.clone(), a, b.clone(), b],
            &[vec![11], vec![12, 12], vec![21], vec![22, 22]],
            Device::Cpu,
        );
        let grouped = group_by_prompt(vec![one, two], &[1, 2], 2);
        assert_eq!(
            grouped.completions(),
            [
                vec![10],
                vec![11],
                vec![12, 12],
                vec![20],
                vec![21],
                vec![22, 22]
            ]
        );
    }

    struct Pairs {
        prompts: Vec<Prompt>,
        pairs: Vec<crate::task::TokenPair>,
    }

    impl Task for Pairs {
        fn train_prompts(&self) -> &[Prompt] {
            &self.prompts
        }
        fn eval_prompts(&self) -> &[Prompt] {
            &self.prompts
        }
        fn train_pairs(&self) -> Option<&[crate::task::TokenPair]> {
            Some(&self.pairs)
        }
        fn max_new_tokens(&self) -> i64 {
            3
        }
    }

    struct LengthReward;

    impl RewardModel for LengthReward {
        fn score(&self, batch: &SampleBatch) -> anyhow::Result<Tensor> {
            Ok(batch.lengths())
        }
    }

    struct Identity;

    impl GoodnessModel for Identity {
        fn log_goodness(&self, reward: &Tensor, _: Option<&Tensor>) -> anyhow::Result<Tensor> {
            Ok(reward.shallow_clone())
        }
    }

    fn task() -> Pairs {
        let prompts: Vec<Prompt> = (0..3).map(prompt).collect();
        let pairs = (0..3)
            .map(|i| crate::task::TokenPair {
                prompt: prompt(i),
                chosen: vec![1, (i + 1) % 4],
                rejected: vec![2, 3, i % 4],
            })
            .collect();
        Pairs { prompts, pairs }
    }

    /// Draws from the prior bring their prior log-probs from the sampler (no
    /// second forward pass), equal to a rescoring; dataset pairs are scored
    /// by the prior once per run, the first time they are met (and again,
    /// in the same batches, when a resumed run skips its first steps).
    #[test]
    fn prior_logprobs_are_computed_once() {
        let (task, prior, policy) = (task(), Counting::new(), Counting::new());
        let sampling = SamplingConfig::default();
        let ctx = |prompts_per_step| BatchContext {
            task: &task,
            prior: &prior,
            reward: &LengthReward,
            goodness: &Identity,
            codec: None,
            sampling: &sampling,
            seed: 3,
            prompts_per_step,
            shared: None,
            sampler: None,
        };
        let mut draws = Batcher::new(ctx(None), DataPlan::sample(Distribution::Prior, 4)).unwrap();
        let before = prior.forwards();
        let step = draws.next(0, &policy).unwrap();
        // The sampler's own passes: one per new token (no KV cache here).
        assert_eq!(prior.forwards() - before, 3, "no rescoring pass");
        let g = &step.groups;
        // The policy has the prior's table: its log-probs are the prior's.
        assert!(g
            .prior_logp
            .allclose(&g.policy_logp.detach(), 1e-6, 1e-6, false));

        // 3 pairs, 2 a step: the first epoch meets every pair once.
        let mut pairs = Batcher::new(ctx(Some(2)), DataPlan::dataset_pairs()).unwrap();
        let mut logged = Vec::new();
        let before = prior.forwards();
        for s in 0..6 {
            logged.push(pairs.next(s, &policy).unwrap().groups.prior_logp);
        }
        // Steps 0 and 1 meet all 3 pairs (2 + 1 new): two passes, then none.
        assert_eq!(prior.forwards() - before, 2, "prior passes over 6 steps");
        // A resumed batcher rebuilds the same numbers from the skipped steps.
        let mut resumed = Batcher::new(ctx(Some(2)), DataPlan::dataset_pairs()).unwrap();
        resumed.skip(3);
        for (s, want) in logged.iter().enumerate().skip(3) {
            let got = resumed.next(s, &policy).unwrap().groups.prior_logp;
            assert!(got.equal(want), "step {s}: {got:?} vs {want:?}");
        }
        // And every value is the prior's log-prob of that pair.
        let fresh = policy_logprobs(&prior, &dataset_pairs(&task.pairs, &[0, 1, 2], Device::Cpu));
        let cached: Vec<f32> = Vec::try_from(
            Batcher::new(ctx(None), DataPlan::dataset_pairs())
                .unwrap()
                .pair_prior_logp(&[0, 1, 2]),
        )
        .unwrap();
        let fresh: Vec<f32> = Vec::try_from(fresh).unwrap();
        for (a, b) in cached.iter().zip(&fresh) {
            assert!((a - b).abs() < 1e-6, "{cached:?} vs {fresh:?}");
        }
    }

    /// The step's inputs as numbers, rows prompt-major: policy, proposal and
    /// prior log-probs, rewards, lengths.
    fn numbers(g: &GroupInputs) -> Vec<Vec<f64>> {
        [
            &g.policy_logp,
            &g.proposal_logp,
            &g.prior_logp,
            &g.reward,
            &g.lengths,
        ]
        .iter()
        .map(|t| Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).view([-1])).unwrap())
        .collect()
    }

    /// Steps 0..6 of `plan` as rank `rank` of `comm`'s ranks (or one
    /// process): each step's numbers, share and mean reward.
    fn steps_as(
        plan: &DataPlan,
        per_step: Option<usize>,
        comm: Option<&dyn align_distributed::Comm>,
    ) -> Vec<(Vec<Vec<f64>>, f64, f64)> {
        let task = task();
        let table = (Tensor::arange(16, (Kind::Float, Device::Cpu)) * 0.37).sin() * 2.0;
        let prior = Counting::with_table(table.copy());
        let policy = Counting::with_table(table.view([4, 4]));
        let sampling = SamplingConfig::default();
        let ctx = BatchContext {
            task: &task,
            prior: &prior,
            reward: &LengthReward,
            goodness: &Identity,
            codec: None,
            sampling: &sampling,
            seed: 11,
            prompts_per_step: per_step,
            shared: None,
            sampler: None,
        };
        let mut b = Batcher::new(ctx, plan.clone()).unwrap();
        if let Some(comm) = comm {
            b = b.distributed(comm).unwrap();
        }
        (0..6)
            .map(|step| {
                let inputs = b.next(step, &policy).unwrap();
                (numbers(&inputs.groups), inputs.share, inputs.reward_mean)
            })
            .collect()
    }

    /// Two ranks (threads) each take a block of every step's prompts or
    /// pairs: end to end, their inputs are the single process's, row for
    /// row and bit for bit (the draws are the rows the single process draws,
    /// and a subset chosen by one random stream over the step's prompts is
    /// chosen from the gathered rewards); the shares add up to one.
    #[test]
    fn ranks_together_do_the_single_process_step_once() {
        // Two of each prompt's four samples, at random from one stream over
        // the step's prompts (as RSO's rejection sampler draws).
        let random_two = |reward: &Tensor, seed: u64| {
            let (p, n) = reward.size2().unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let index: Vec<i64> = (0..p)
                .flat_map(|_| {
                    let mut all: Vec<i64> = (0..n).collect();
                    all.shuffle(&mut rng);
                    all.truncate(2);
                    all
                })
                .collect();
            Tensor::from_slice(&index).view([p, 2])
        };
        let plans = [
            (DataPlan::sample(Distribution::Prior, 4), None),
            (DataPlan::dataset_pairs(), Some(2)),
            (
                DataPlan::sample(Distribution::Prior, 4).subset(random_two),
                Some(3),
            ),
        ];
        for (plan, per_step) in plans {
            let single = steps_as(&plan, per_step, None);
            let ranks: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = align_distributed::local::group(2)
                    .into_iter()
                    .map(|comm| {
                        let plan = plan.clone();
                        s.spawn(move || steps_as(&plan, per_step, Some(&comm)))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (step, want) in single.iter().enumerate() {
                let (a, b) = (&ranks[0][step], &ranks[1][step]);
                for (what, column) in want.0.iter().enumerate() {
                    let joined: Vec<f64> = a.0[what].iter().chain(&b.0[what]).copied().collect();
                    assert_eq!(&joined, column, "{plan:?} step {step}, column {what}");
                }
                assert_eq!(want.1, 1.0);
                assert!(
                    a.1 > 0.0 && b.1 > 0.0 && a.1 + b.1 == 1.0,
                    "shares {} {}",
                    a.1,
                    b.1
                );
                let mean = a.1 * a.2 + b.1 * b.2;
                assert!((mean - want.2).abs() < 1e-12, "{mean} vs {}", want.2);
            }
        }
    }

    #[test]
    fn more_ranks_than_prompts_is_refused() {
        let task = task();
        let prior = Counting::new();
        let sampling = SamplingConfig::default();
        let ctx = BatchContext {
            task: &task,
            prior: &prior,
            reward: &LengthReward,
            goodness: &Identity,
            codec: None,
            sampling: &sampling,
            seed: 11,
            prompts_per_step: Some(1),
            shared: None,
            sampler: None,
        };
        let comms = align_distributed::local::group(2);
        let b = Batcher::new(ctx, DataPlan::sample(Distribution::Prior, 2)).unwrap();
        let err = b.distributed(&comms[0]).err().expect("refused");
        assert!(err.to_string().contains("at least one"), "{err}");
    }

    #[test]
    fn every_item_once_per_epoch() {
        let mut order = EpochOrder::new(5, 2, 7);
        let mut seen: Vec<usize> = (0..5).flat_map(|_| order.next()).collect();
        assert_eq!(seen.len(), 10);
        seen.truncate(5);
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3, 4]);
    }
}
