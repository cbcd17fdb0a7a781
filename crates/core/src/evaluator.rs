//! Evaluators turn a policy into metrics (KL to the posterior, win rates, …).
//!
//! At each evaluation point the runner draws the policy's completions on the
//! held-out prompts once ([`HeldOut`]) and hands them to every evaluator, so
//! the reward-model judges and the LLM judge read the same responses. An
//! evaluator returns run-level metrics and per-completion *columns* (a win
//! 0 / ½ / 1 per judge, a reward, a log-ratio); the tables average columns
//! with intervals over prompts ([`crate::stats`]), recomputable from the
//! judged samples on disk.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::logprob::policy_logprobs;
use crate::sampling::sample;
use crate::task::Prompt;
use crate::{GoodnessModel, Metrics, Policy, RewardModel, SampleBatch, SamplingConfig, Task};

pub struct EvalContext<'a> {
    pub task: &'a dyn Task,
    pub prior: &'a dyn Policy,
    pub reward: &'a dyn RewardModel,
    pub goodness: &'a dyn GoodnessModel,
    /// The policy's tokenizer, for evaluators that work on text.
    pub codec: Option<&'a dyn crate::TextCodec>,
    pub device: Device,
}

/// How held-out completions are drawn (`[eval]` in a manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Completions per held-out prompt.
    #[serde(default = "one")]
    pub samples: i64,
    /// Sampling temperature (the Monte-Carlo KL needs 1).
    #[serde(default = "one_f")]
    pub temperature: f64,
    /// Use only the first this many held-out prompts (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<usize>,
    /// Prompts per sampling batch.
    #[serde(default = "sixteen")]
    pub batch_prompts: usize,
    /// Added to the run's seed for the evaluation draws, so every run at one
    /// seed is judged on common random numbers.
    #[serde(default)]
    pub seed: u64,
}

fn one() -> i64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn sixteen() -> usize {
    16
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            samples: 1,
            temperature: 1.0,
            prompts: None,
            batch_prompts: 16,
            seed: 0,
        }
    }
}

impl EvalConfig {
    /// The first out-of-range setting, as `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        use crate::manifest::limits::*;
        count_in(
            self.samples,
            1,
            MAX_SAMPLES,
            "completions per held-out prompt",
        )
        .map_err(|e| ("samples", e))?;
        finite_non_negative(self.temperature).map_err(|e| ("temperature", e))?;
        count_in(
            self.batch_prompts,
            1,
            MAX_BATCH,
            "prompts per sampling batch",
        )
        .map_err(|e| ("batch_prompts", e))?;
        if let Some(p) = self.prompts {
            count_in(p, 1, MAX_PROMPTS, "held-out prompts; leave it out for all")
                .map_err(|e| ("prompts", e))?;
        }
        Ok(())
    }
}

/// The policy's completions on the held-out prompts at one evaluation point.
pub struct HeldOut {
    /// The held-out prompts used (`[P]`).
    pub prompts: Vec<Prompt>,
    /// `[N]` completions, prompt-major (`N = P · samples`); texts decoded when
    /// the policy has a tokenizer.
    pub batch: SampleBatch,
    /// The gold completion of each prompt (`[P]` rows), if the task has them.
    pub gold: Option<SampleBatch>,
    /// `[N]` f64: log π(y|x) under the policy at temperature 1.
    pub policy_logp: Tensor,
    /// `[N]` f64: log p(y|x) under the prior.
    pub prior_logp: Tensor,
    /// Whether completions were drawn from π itself (temperature 1), so
    /// `policy_logp − prior_logp` estimates KL(π‖p) without bias.
    pub on_policy: bool,
}

impl HeldOut {
    /// Draws `config.samples` completions per held-out prompt from `policy`.
    pub fn draw(
        ctx: &EvalContext,
        policy: &dyn Policy,
        config: &EvalConfig,
        seed: u64,
    ) -> anyhow::Result<HeldOut> {
        Ok(
            Self::draw_shared(ctx, policy, config, seed, &align_distributed::Single)?
                .expect("a world of one is its own rank 0"),
        )
    }

    /// [`HeldOut::draw`] with the sampling shared by `comm`'s ranks (every
    /// rank calls it, with the same policy): each samples its block of the
    /// draw's batches of `batch_prompts` prompts (each seeded by where it
    /// starts), and rank 0 gathers them, in order, into the single
    /// process's draw, bit for bit, and finishes it (gold, texts, prior
    /// log-densities). Rank 0 gets the draw, the others `None`.
    pub fn draw_shared(
        ctx: &EvalContext,
        policy: &dyn Policy,
        config: &EvalConfig,
        seed: u64,
        comm: &dyn align_distributed::Comm,
    ) -> anyhow::Result<Option<HeldOut>> {
        let all = ctx.task.eval_prompts();
        anyhow::ensure!(
            !all.is_empty(),
            "the task has no held-out prompts to evaluate on"
        );
        let p = config.prompts.unwrap_or(all.len()).min(all.len());
        let prompts = all[..p].to_vec();
        let sampling = SamplingConfig {
            temperature: config.temperature,
            top_k: None,
            top_p: None,
        };
        let _guard = tch::no_grad_guard();
        let chunks: Vec<&[Prompt]> = prompts.chunks(config.batch_prompts).collect();
        let mine = align_distributed::shard(chunks.len(), comm.rank(), comm.size());
        let mut parts = Vec::new();
        for i in mine {
            let start = i * config.batch_prompts;
            let mut b = sample(
                policy,
                chunks[i],
                config.samples,
                ctx.task.max_new_tokens(),
                ctx.task.eos_token(),
                &sampling,
                seed ^ start as u64,
            );
            for j in b.prompt_index.iter_mut() {
                *j += start;
            }
            parts.push(b);
        }
        let mine = parts.into_iter().reduce(|a, b| SampleBatch::cat(&a, &b));
        let gathered = if comm.size() > 1 {
            gather_batches(comm, mine.as_ref(), ctx.device)
        } else {
            mine.into_iter().collect()
        };
        if !comm.is_root() {
            return Ok(None);
        }
        // Right-padding to the wider batch: the blocks' concatenation is
        // the concatenation of every batch in order.
        let mut batch = gathered
            .into_iter()
            .reduce(|a, b| SampleBatch::cat(&a, &b))
            .expect("at least one prompt");
        let gold = ctx.task.eval_references().map(|refs| {
            let mut g = SampleBatch::from_pairs(&prompts, &refs[..p], ctx.device);
            if let Some(codec) = ctx.codec {
                g.decode_texts(codec)?;
            }
            anyhow::Ok(g)
        });
        let gold = gold.transpose()?;
        if let Some(codec) = ctx.codec {
            batch.decode_texts(codec)?;
        }
        let prior_logp = policy_logprobs(ctx.prior, &batch).to_kind(Kind::Double);
        Ok(Some(HeldOut {
            prompts,
            policy_logp: batch.model_logp.to_kind(Kind::Double),
            prior_logp,
            batch,
            gold,
            on_policy: config.temperature == 1.0,
        }))
    }

    /// Number of completions `N`.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The gold batch's rows repeated to line up with `batch`: row `i` is the
    /// gold completion of completion `i`'s prompt.
    pub fn gold_rows(&self) -> Option<SampleBatch> {
        let gold = self.gold.as_ref()?;
        let rows: Vec<i64> = self.batch.prompt_index.iter().map(|&i| i as i64).collect();
        Some(gold.select_rows(&Tensor::from_slice(&rows)))
    }
}

/// Every rank's `batch` (untexted; `None`: it drew none) at every rank, in
/// rank order, on `device`: tokens and log-densities travel as f64 (ids
/// below 2⁵³ and f32 values exactly).
fn gather_batches(
    comm: &dyn align_distributed::Comm,
    batch: Option<&SampleBatch>,
    device: Device,
) -> Vec<SampleBatch> {
    let to_f64 = |t: &Tensor| {
        Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1]))
            .expect("f64 values")
    };
    // [rows, width, ids, attention, completion, prompt index, proposal, model]
    let mine: Vec<f64> = match batch {
        None => Vec::new(),
        Some(b) => {
            let (rows, width) = b.input_ids.size2().expect("[B, T] ids");
            let mut v = vec![rows as f64, width as f64];
            v.extend(to_f64(&b.input_ids));
            v.extend(to_f64(&b.attention_mask));
            v.extend(to_f64(&b.completion_mask));
            v.extend(b.prompt_index.iter().map(|&i| i as f64));
            v.extend(to_f64(&b.proposal_logp));
            v.extend(to_f64(&b.model_logp));
            v
        }
    };
    let size = comm.size();
    let lengths = comm.gather_f64(&[mine.len() as f64], &vec![1; size]);
    let counts: Vec<usize> = lengths.iter().map(|&n| n as usize).collect();
    let all = comm.gather_f64(&mine, &counts);
    let mut out = Vec::new();
    let mut at = 0;
    for n in counts {
        let v = &all[at..at + n];
        at += n;
        if v.is_empty() {
            continue;
        }
        let (rows, width) = (v[0] as usize, v[1] as usize);
        let mut next = 2;
        let mut take = |len: usize| {
            let s = &v[next..next + len];
            next += len;
            s
        };
        let matrix = |s: &[f64]| {
            Tensor::from_slice(s)
                .to_kind(Kind::Int64)
                .view([rows as i64, width as i64])
                .to_device(device)
        };
        let vector = |s: &[f64]| Tensor::from_slice(s).to_kind(Kind::Float).to_device(device);
        let input_ids = matrix(take(rows * width));
        let attention_mask = matrix(take(rows * width));
        let completion_mask = matrix(take(rows * width));
        let prompt_index = take(rows).iter().map(|&i| i as usize).collect();
        let proposal_logp = vector(take(rows));
        let model_logp = vector(take(rows));
        out.push(SampleBatch {
            input_ids,
            attention_mask,
            completion_mask,
            prompt_index,
            proposal_logp,
            model_logp,
            texts: None,
        });
    }
    out
}

/// What an evaluator found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Evaluation {
    /// Run-level metrics (exact KLs, …), reported as they are.
    pub metrics: Metrics,
    /// Per-completion columns aligned with [`HeldOut::batch`]: the tables
    /// report each column's mean with a 95% interval over prompts. A judge's
    /// column is named `win_<judge>` (1 win, ½ tie, 0 loss against gold).
    pub columns: Vec<(String, Vec<f64>)>,
}

impl Evaluation {
    pub fn from_metrics(metrics: Metrics) -> Evaluation {
        Evaluation {
            metrics,
            columns: Vec::new(),
        }
    }

    pub fn column(&mut self, name: impl Into<String>, values: Vec<f64>) {
        self.columns.push((name.into(), values));
    }

    pub fn extend(&mut self, other: Evaluation) {
        self.metrics.extend(&other.metrics);
        for (name, values) in other.columns {
            match self.columns.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = values,
                None => self.columns.push((name, values)),
            }
        }
    }
}

/// A judge's verdicts against gold: 1 where `policy > gold`, ½ on a tie,
/// NaN (no verdict) where either score is NaN.
pub fn wins_against(policy: &Tensor, gold: &Tensor) -> Vec<f64> {
    let w = policy.gt_tensor(gold).to_kind(Kind::Double)
        + policy.eq_tensor(gold).to_kind(Kind::Double) * 0.5;
    let missing = policy.isnan().logical_or(&gold.isnan());
    let w = w.masked_fill(&missing, f64::NAN);
    Vec::<f64>::try_from(w.to_device(Device::Cpu)).expect("f64 verdicts")
}

pub trait Evaluator: Send + Sync {
    /// Whether this evaluator reads held-out completions (the runner draws
    /// them only when some evaluator does).
    fn needs_held_out(&self) -> bool {
        true
    }

    /// Judges `policy`; `held_out` is its completions when
    /// [`Evaluator::needs_held_out`] (and `None` otherwise).
    fn evaluate(
        &self,
        ctx: &EvalContext,
        policy: &dyn Policy,
        held_out: Option<&HeldOut>,
    ) -> anyhow::Result<Evaluation>;

    /// Rows that are not policies but belong in the table (e.g. the exact
    /// posterior), as `(row name, metrics)`.
    fn reference_rows(&self, _ctx: &EvalContext) -> anyhow::Result<Vec<(String, Metrics)>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_policies::Counting;

    /// A fixed bigram table (the same in every thread).
    fn bigram() -> Counting {
        Counting::with_table((Tensor::arange(16, (Kind::Float, Device::Cpu)) * 0.7).sin())
    }

    struct Prompts(Vec<Prompt>);

    impl Task for Prompts {
        fn train_prompts(&self) -> &[Prompt] {
            &self.0
        }
        fn eval_prompts(&self) -> &[Prompt] {
            &self.0
        }
        fn max_new_tokens(&self) -> i64 {
            4
        }
    }

    struct Zero;

    impl RewardModel for Zero {
        fn score(&self, batch: &SampleBatch) -> anyhow::Result<Tensor> {
            Ok(Tensor::zeros(
                [batch.len() as i64],
                (Kind::Float, Device::Cpu),
            ))
        }
    }

    impl GoodnessModel for Zero {
        fn log_goodness(&self, reward: &Tensor, _: Option<&Tensor>) -> anyhow::Result<Tensor> {
            Ok(reward.shallow_clone())
        }
    }

    fn task() -> Prompts {
        Prompts(
            (0..7)
                .map(|i| Prompt {
                    // Lengths 1 to 3: the batches pad to different widths.
                    ids: (0..1 + i % 3).map(|t| ((i + t) % 4) as i64).collect(),
                    text: None,
                })
                .collect(),
        )
    }

    fn config() -> EvalConfig {
        EvalConfig {
            samples: 2,
            batch_prompts: 2, // 4 batches of the 7 prompts
            ..EvalConfig::default()
        }
    }

    /// Three ranks (threads) share a held-out draw: rank 0 gets the single
    /// process's draw bit for bit, the others nothing, and every rank
    /// sampled (its block of the 4 batches: 1, 1 and 2).
    #[test]
    fn ranks_share_a_held_out_draw_into_the_single_process_one() {
        let task = task();
        let prior = bigram();
        let ctx = |prior| EvalContext {
            task: &task,
            prior,
            reward: &Zero,
            goodness: &Zero,
            codec: None,
            device: Device::Cpu,
        };
        let alone = bigram();
        let want = HeldOut::draw(&ctx(&prior), &alone, &config(), 11).unwrap();
        assert_eq!(want.len(), 14);
        let got: Vec<(Option<HeldOut>, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = align_distributed::local::group(3)
                .into_iter()
                .map(|comm| {
                    let task = &task;
                    s.spawn(move || {
                        let (prior, policy) = (bigram(), bigram());
                        let ctx = EvalContext {
                            task,
                            prior: &prior,
                            reward: &Zero,
                            goodness: &Zero,
                            codec: None,
                            device: Device::Cpu,
                        };
                        let h = HeldOut::draw_shared(&ctx, &policy, &config(), 11, &comm).unwrap();
                        (h, policy.forwards())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let alone_forwards = alone.forwards();
        for (rank, (_, forwards)) in got.iter().enumerate() {
            assert!(
                *forwards > 0 && *forwards < alone_forwards,
                "rank {rank} ran {forwards} forwards, one process {alone_forwards}"
            );
        }
        assert!(got[1].0.is_none() && got[2].0.is_none());
        let h = got[0].0.as_ref().expect("rank 0 holds the draw");
        assert_eq!(h.batch.prompt_index, want.batch.prompt_index);
        for (a, b, what) in [
            (&h.batch.input_ids, &want.batch.input_ids, "ids"),
            (&h.batch.attention_mask, &want.batch.attention_mask, "mask"),
            (
                &h.batch.completion_mask,
                &want.batch.completion_mask,
                "completion",
            ),
            (
                &h.batch.proposal_logp,
                &want.batch.proposal_logp,
                "proposal",
            ),
            (&h.policy_logp, &want.policy_logp, "policy"),
            (&h.prior_logp, &want.prior_logp, "prior"),
        ] {
            assert!(a.kind() == b.kind() && a.equal(b), "{what} differs");
        }
    }
}
