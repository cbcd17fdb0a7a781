//! Benchmarks, each printing one JSON line on stdout (`benches/peer/run.sh`
//! runs them against PyTorch + transformers and writes `results/bench/`):
//!
//! - `runner bench`: sampling throughput of a model (tokens/s);
//! - `runner bench-iteration MANIFEST --run NAME`: whole training iterations
//!   of one of a manifest's runs through the real loop ([`train::train`]:
//!   refresh → batcher (sample, score, prior log-probs, policy forward) →
//!   estimator loss → backward → update check → optimizer step), timed per
//!   iteration and by phase;
//! - `runner bench-step MANIFEST --run NAME`: the training step alone
//!   (policy log-probs, the run's loss, backward, update check, optimizer
//!   step) on a fixed token batch of the iteration's shape, with its FLOP
//!   count and the machine's f32 GEMM rate measured in the same process.
//!
//! Every one reports its peak resident memory (`VmHWM`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use align_core::logprob::policy_logprobs;
use align_core::manifest::Manifest;
use align_core::optim::Optimizer;
use align_core::policy::frozen_copy;
use align_core::sampling::sample;
use align_core::task::Prompt;
use align_core::{
    Candidates, Decoder, GroupInputs, Metrics, ModelContext, Policy, RewardModel, SampleBatch,
    SamplingConfig, TaskContext,
};
use anyhow::Context;
use clap::Args;
use runner::train::{self, Hooks, Progress, Setup, Snapshot};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

use crate::lm::ModelArgs;

// ---------------------------------------------------------------- memory

/// A `kB` field of `/proc/self/status` in MiB (`None` off Linux).
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Peak resident memory so far (or since [`reset_peak_rss`]), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Resident memory now, MiB.
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// Restarts the peak-RSS count from the current RSS (Linux ≥ 4.0:
/// `echo 5 > /proc/self/clear_refs`); false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

// ---------------------------------------------------------------- helpers

/// The median (mean of the two middle values for an even count).
fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Waits for queued device work, so a timer reads finished work.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        d => format!("{d:?}"),
    }
}

/// The manifest after its stages (the reward models it reads are trained
/// first when missing, as `runner MANIFEST` does).
fn load_manifest(path: &Path, overrides: &[String]) -> anyhow::Result<Manifest> {
    let stages = Manifest::stages(path, overrides)
        .and_then(|s| runner::stages::load(&s.reward_models))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for line in runner::stages::reward_models(&stages, false)? {
        eprintln!("stage: {line}");
    }
    Manifest::load(path, overrides).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The run named `run` (or at that 0-based index; default the first).
fn run_index(m: &Manifest, run: Option<&str>) -> anyhow::Result<usize> {
    let Some(run) = run else {
        anyhow::ensure!(!m.runs.is_empty(), "{}: no runs", m.path.display());
        return Ok(0);
    };
    if let Some(i) = m.runs.iter().position(|r| r.name == run) {
        return Ok(i);
    }
    match run.parse::<usize>() {
        Ok(i) if i < m.runs.len() => Ok(i),
        _ => anyhow::bail!(
            "{}: no run `{run}`; the runs are {}",
            m.path.display(),
            m.runs
                .iter()
                .map(|r| format!("`{}`", r.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Samples per prompt of a plan, when it draws one set of samples.
fn samples_per_prompt(candidates: &[Candidates]) -> Option<i64> {
    match candidates {
        [Candidates::Sample { count, .. }] => Some(*count),
        _ => None,
    }
}

// ---------------------------------------------------------------- sampling

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Rows sampled together (one prompt, n = batch).
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: i64,
    #[arg(long, default_value = "What is the capital of France?")]
    pub prompt: String,
    /// Wrap the prompt with the chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Timed repetitions after one warm-up run; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

/// Sampling throughput: `batch` rows × `new_tokens` tokens (EOS ignored), as
/// one JSON line `{"tokens_per_s": …, …}`.
pub fn bench(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (lm, device) = args.model.load()?;
    let tok = crate::lm::tokenizer(&lm)?;
    let prompt = Prompt {
        ids: crate::lm::prompt_ids(tok, &args.prompt, args.chat)?,
        text: None,
    };
    let rss_loaded = rss_mib();
    let param_bytes: usize = (lm.policy.var_store().variables().values())
        .map(|t| t.numel() * t.kind().elt_size_in_bytes())
        .sum();
    let config = SamplingConfig {
        temperature: args.temperature,
        ..Default::default()
    };
    let run = |seed| {
        let start = Instant::now();
        let batch = sample(
            lm.policy.as_ref(),
            std::slice::from_ref(&prompt),
            args.batch,
            args.new_tokens,
            None,
            &config,
            seed,
        );
        let tokens = batch.completion_mask.sum(Kind::Int64).int64_value(&[]);
        (tokens as f64, start.elapsed().as_secs_f64())
    };
    run(0); // warm-up
    let mut rates: Vec<f64> = (1..=args.repeats.max(1) as u64)
        .map(|s| {
            let (tokens, secs) = run(s);
            tokens / secs
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    writeln!(
        out,
        "{}",
        json!({
            "impl": "brain-rs",
            "bench": "sampling",
            "model": args.model.model.display().to_string(),
            "device": format!("{device:?}"),
            "dtype": format!("{:?}", args.model.dtype),
            "threads": tch::get_num_threads(),
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "prompt_tokens": prompt.ids.len(),
            // What a decoding step reads: every parameter once (a tied
            // embedding is one tensor, read whole as the output projection).
            "param_bytes": param_bytes,
            "tokens_per_s": median,
            "runs_tokens_per_s": rates,
            "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": peak_rss_mib(),
        })
    )?;
    Ok(())
}

// ---------------------------------------------------------------- iteration

#[derive(Args, Debug)]
pub struct IterationArgs {
    /// Experiment manifest (TOML), e.g. experiments/sentiment.toml.
    pub manifest: PathBuf,
    /// Override a manifest value, as for `runner MANIFEST`.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub overrides: Vec<String>,
    /// The run to time, by name or 0-based index (default: the first).
    #[arg(long)]
    pub run: Option<String>,
    /// Timed iterations (after the warm-up ones).
    #[arg(long, default_value_t = 4)]
    pub iterations: usize,
    /// Untimed iterations first (≥ 1: the first one also allocates the
    /// optimizer's moments).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// LibTorch intra-op threads (default: the manifest's, else LibTorch's).
    #[arg(long)]
    pub threads: Option<i32>,
    /// The training seed (default: the manifest's first).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write each iteration's prompts (token ids) here, one JSON line per
    /// step, so that a peer implementation can run the same ones.
    #[arg(long)]
    pub prompts_out: Option<PathBuf>,
}

/// What the timing wrappers saw during one step.
#[derive(Default, Clone)]
struct StepClock {
    /// Copying the policy into a new proposal.
    refresh: f64,
    /// The model's share of sampling: KV-cache prefill and decoding steps.
    decode: f64,
    score: f64,
    prior_forward: f64,
    /// Forwards of a refreshed proposal (mixture densities).
    proposal_forward: f64,
    policy_forward: f64,
    first_score: Option<Instant>,
    policy_forward_end: Option<Instant>,
    /// Rows scored, their completion tokens and the longest row (prompt +
    /// completion, as padded).
    rows: i64,
    completion_tokens: i64,
    sequence_length: i64,
    /// Each sampled row's prompt ids, in sampling order.
    prompts: Vec<Vec<i64>>,
}

type Clock = Arc<Mutex<StepClock>>;

fn with<R>(clock: &Clock, f: impl FnOnce(&mut StepClock) -> R) -> R {
    f(&mut clock.lock().expect("bench clock"))
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Prior,
    Policy,
    Proposal,
}

/// A policy that times its forwards, decoding and copies; every other call
/// goes straight through.
struct Timed {
    inner: Box<dyn Policy>,
    role: Role,
    clock: Clock,
    device: Device,
}

impl Timed {
    /// Runs `f` (a forward of the inner model) on the role's clock.
    fn timed(&self, f: impl FnOnce() -> Tensor) -> Tensor {
        let start = Instant::now();
        let out = f();
        sync(self.device);
        let end = Instant::now();
        let secs = (end - start).as_secs_f64();
        with(&self.clock, |c| match self.role {
            Role::Prior => c.prior_forward += secs,
            Role::Proposal => c.proposal_forward += secs,
            Role::Policy => {
                c.policy_forward += secs;
                c.policy_forward_end = Some(end);
            }
        });
        out
    }
}

impl Policy for Timed {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.timed(|| self.inner.forward(input_ids, attention_mask))
    }

    // The loop's log-probs take the model's own route (logits at the
    // completion positions only), not `forward`'s full logits.
    fn sequence_logprobs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        completion_mask: &Tensor,
    ) -> Tensor {
        self.timed(|| {
            self.inner
                .sequence_logprobs(input_ids, attention_mask, completion_mask)
        })
    }

    fn vocab_size(&self) -> i64 {
        self.inner.vocab_size()
    }

    fn var_store(&self) -> &nn::VarStore {
        self.inner.var_store()
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        self.inner.var_store_mut()
    }

    fn device(&self) -> Device {
        self.inner.device()
    }

    fn decoder(&self) -> Option<Box<dyn Decoder + '_>> {
        let inner = self.inner.decoder()?;
        Some(Box::new(TimedDecoder {
            inner,
            clock: self.clock.clone(),
            device: self.device,
        }))
    }

    fn frozen_clone(&self) -> Option<anyhow::Result<Box<dyn Policy>>> {
        let start = Instant::now();
        let copy = self.inner.frozen_clone()?;
        sync(self.device);
        with(&self.clock, |c| c.refresh += start.elapsed().as_secs_f64());
        Some(copy.map(|inner| {
            Box::new(Timed {
                inner,
                role: Role::Proposal,
                clock: self.clock.clone(),
                device: self.device,
            }) as Box<dyn Policy>
        }))
    }

    fn export(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        self.inner.export(dir)
    }

    fn save_hf(&self, dir: &Path) -> anyhow::Result<bool> {
        self.inner.save_hf(dir)
    }
}

struct TimedDecoder<'a> {
    inner: Box<dyn Decoder + 'a>,
    clock: Clock,
    device: Device,
}

impl Decoder for TimedDecoder<'_> {
    fn prefill(&mut self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let start = Instant::now();
        let logits = self.inner.prefill(input_ids, attention_mask);
        sync(self.device);
        let secs = start.elapsed().as_secs_f64();
        // The prompts, left-padded: the ids under the mask.
        let ids = Vec::<Vec<i64>>::try_from(input_ids.to_device(Device::Cpu)).unwrap_or_default();
        let mask =
            Vec::<Vec<i64>>::try_from(attention_mask.to_device(Device::Cpu)).unwrap_or_default();
        let rows: Vec<Vec<i64>> = ids
            .iter()
            .zip(&mask)
            .map(|(r, m)| {
                r.iter()
                    .zip(m)
                    .filter(|(_, m)| **m != 0)
                    .map(|(t, _)| *t)
                    .collect()
            })
            .collect();
        with(&self.clock, |c| {
            c.decode += secs;
            c.prompts.extend(rows);
        });
        logits
    }

    fn step(&mut self, tokens: &Tensor, attention_mask: &Tensor) -> Tensor {
        let start = Instant::now();
        let logits = self.inner.step(tokens, attention_mask);
        sync(self.device);
        with(&self.clock, |c| c.decode += start.elapsed().as_secs_f64());
        logits
    }
}

/// A reward model that times its scoring and counts what it scores.
struct TimedReward {
    inner: Box<dyn RewardModel>,
    clock: Clock,
    device: Device,
}

impl RewardModel for TimedReward {
    fn score(&self, batch: &SampleBatch) -> anyhow::Result<Tensor> {
        let start = Instant::now();
        let r = self.inner.score(batch);
        sync(self.device);
        let secs = start.elapsed().as_secs_f64();
        let tokens = batch.completion_mask.sum(Kind::Int64).int64_value(&[]);
        with(&self.clock, |c| {
            c.score += secs;
            c.first_score.get_or_insert(start);
            c.rows += batch.len() as i64;
            c.completion_tokens += tokens;
            c.sequence_length = c.sequence_length.max(batch.input_ids.size()[1]);
        });
        r
    }
}

/// The loop's hooks as a stopwatch: with `checkpoint_every = 1` the loop
/// calls `checkpoint` after every step but the last; each call closes a step.
struct Stopwatch {
    clock: Clock,
    /// (end of the step, what the wrappers saw in it)
    steps: Vec<(Instant, StepClock)>,
}

impl Stopwatch {
    fn close_step(&mut self) {
        let seen = with(&self.clock, std::mem::take);
        self.steps.push((Instant::now(), seen));
    }
}

impl Hooks for Stopwatch {
    fn evaluate(&mut self, _policy: &dyn Policy, _step: usize) -> anyhow::Result<Metrics> {
        Ok(Metrics::new()) // eval_every = 0: never asked
    }

    fn checkpoint(&mut self, _policy: &dyn Policy, _at: &Snapshot) -> anyhow::Result<()> {
        self.close_step();
        Ok(())
    }
}

/// Times `warmup + iterations` steps of one run through [`train::train`]
/// and prints one JSON line: seconds per iteration (median and each), the
/// phases of each iteration, the work (rows, completion tokens) and the
/// peak RSS after loading and during the iterations.
pub fn bench_iteration(args: &IterationArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.iterations >= 1 && args.warmup >= 1,
        "--iterations and --warmup must be ≥ 1"
    );
    let started = Instant::now();
    let mut manifest = load_manifest(&args.manifest, &args.overrides)?;
    let index = run_index(&manifest, args.run.as_deref())?;
    if let Some(t) = args.threads.or(manifest.threads) {
        tch::set_num_threads(t);
    }
    // Only training: no evaluation; a "checkpoint" (our stopwatch) each step.
    manifest.train.eval_every = 0;
    manifest.train.checkpoint_every = 1;
    manifest.runs[index].steps = args.warmup + args.iterations;
    let manifest = manifest;
    let run = &manifest.runs[index];
    let seed = args.seed.unwrap_or(manifest.seeds[0]);

    // The plugins, as `runner MANIFEST` builds them.
    let runner::Foundation {
        model_ctx,
        mut prior,
        codec,
        task,
    } = runner::foundation(&manifest)?;
    let device = model_ctx.device;
    if let Some(c) = &manifest.sft {
        runner::sft::sft(prior.as_mut(), task.as_ref(), c, manifest.seed, false)
            .context("the `[sft]` stage")?;
    }
    let reward = manifest
        .reward
        .value
        .build(device)
        .context("building the reward model")?;
    // The policy starts as a copy of the prior (lib.rs: train_run).
    let mut policy = frozen_copy(manifest.model.value.as_ref(), &model_ctx, prior.as_ref())?;
    policy.var_store_mut().unfreeze();

    let clock = Clock::default();
    let prior = Timed {
        inner: prior,
        role: Role::Prior,
        clock: clock.clone(),
        device,
    };
    let mut policy = Timed {
        inner: policy,
        role: Role::Policy,
        clock: clock.clone(),
        device,
    };
    let reward = TimedReward {
        inner: reward,
        clock: clock.clone(),
        device,
    };
    let load_seconds = started.elapsed().as_secs_f64();
    let rss_loaded = rss_mib();
    let peak_load = peak_rss_mib();
    let reset = reset_peak_rss();

    let setup = Setup {
        manifest: &manifest,
        run,
        task: task.as_ref(),
        model_ctx: &model_ctx,
        prior: &prior,
        reward: &reward,
        codec: codec.as_deref(),
        seed,
        samples: None, // every iteration draws and scores its own samples
    };
    let mut watch = Stopwatch {
        clock: clock.clone(),
        steps: Vec::new(),
    };
    with(&clock, |c| *c = StepClock::default());
    let start = Instant::now();
    let progress = train::train(&setup, &mut policy, Progress::default(), &mut watch, false)?;
    sync(device);
    watch.close_step();
    let peak_iter = peak_rss_mib();
    anyhow::ensure!(
        watch.steps.len() == run.steps && !progress.stopped,
        "the run stopped after {} of {} steps (non-finite loss?)",
        watch.steps.len(),
        run.steps
    );

    // Per step: its span, and the phases the wrappers measured in it.
    let mut begin = start;
    let mut rows = Vec::new();
    for (end, seen) in &watch.steps {
        let total = (*end - begin).as_secs_f64();
        let sample = seen
            .first_score
            .map_or(0.0, |s| (s - begin).as_secs_f64() - seen.refresh);
        let backward_step = seen
            .policy_forward_end
            .map_or(0.0, |f| (*end - f).as_secs_f64());
        let prior_logprobs = seen.prior_forward + seen.proposal_forward;
        let other = total
            - seen.refresh
            - sample
            - seen.score
            - prior_logprobs
            - seen.policy_forward
            - backward_step;
        rows.push((
            total,
            [
                ("refresh", seen.refresh),
                ("sample", sample),
                ("sample_model", seen.decode),
                ("score", seen.score),
                ("prior_logprobs", prior_logprobs),
                ("policy_forward", seen.policy_forward),
                ("backward_step", backward_step),
                ("other", other),
            ],
            seen.clone(),
        ));
        begin = *end;
    }
    let timed = &rows[args.warmup..];
    let seconds: Vec<f64> = timed.iter().map(|(t, _, _)| *t).collect();
    let mut phases = serde_json::Map::new();
    let mut phase_medians = serde_json::Map::new();
    for (k, (name, _)) in timed[0].1.iter().enumerate() {
        let xs: Vec<f64> = timed.iter().map(|(_, p, _)| p[k].1).collect();
        phase_medians.insert(name.to_string(), json!(median(&xs)));
        phases.insert(name.to_string(), json!(xs));
    }
    let n = samples_per_prompt(&run.estimator.value.plan().candidates);
    if let Some(path) = &args.prompts_out {
        let mut text = String::new();
        for (step, (_, _, seen)) in rows.iter().enumerate() {
            // Rows are prompt-major: n consecutive rows per prompt.
            let per = n.unwrap_or(1).max(1) as usize;
            let prompts: Vec<&Vec<i64>> = seen.prompts.iter().step_by(per).collect();
            text += &json!({"step": step, "n": per, "prompts": prompts}).to_string();
            text.push('\n');
        }
        align_core::io::write_atomic(path, text.as_bytes())?;
    }
    let losses: Vec<Option<f64>> = progress
        .log
        .iter()
        .map(|(_, m)| m.get("loss").filter(|v| v.is_finite()))
        .collect();
    let peak = match (peak_load, peak_iter) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    writeln!(
        out,
        "{}",
        json!({
            "impl": "brain-rs",
            "bench": "iteration",
            "manifest": args.manifest.display().to_string(),
            "run": run.name,
            "estimator": run.estimator.plugin,
            "estimator_config": serde_json::to_value(&run.estimator.config)?,
            "goodness": manifest.goodness.plugin,
            "goodness_config": serde_json::to_value(&manifest.goodness.config)?,
            "sampling": serde_json::to_value(&run.sampling)?,
            "device": device_name(device),
            "threads": tch::get_num_threads(),
            "seed": seed,
            "lr": run.lr,
            "optimizer": format!("{:?}", manifest.train.optimizer).to_lowercase(),
            "prompts_per_step": manifest.train.prompts_per_step,
            "samples_per_prompt": n,
            "max_new_tokens": task.max_new_tokens(),
            "refresh_every": run.estimator.value.plan().refresh_every,
            "warmup": args.warmup,
            "iterations": args.iterations,
            "seconds_per_iteration": median(&seconds),
            "iteration_seconds": seconds,
            "phases": phase_medians,
            "phase_seconds": phases,
            "rows": timed.iter().map(|(_, _, s)| s.rows).collect::<Vec<_>>(),
            "completion_tokens": timed.iter().map(|(_, _, s)| s.completion_tokens).collect::<Vec<_>>(),
            "sequence_length": timed.iter().map(|(_, _, s)| s.sequence_length).collect::<Vec<_>>(),
            "loss": losses,
            "load_seconds": load_seconds,
            "rss_after_load_mb": rss_loaded,
            "peak_rss_load_mb": peak_load,
            "peak_rss_iter_mb": if reset { peak_iter } else { None },
            "peak_rss_mb": peak,
        })
    )?;
    Ok(())
}

// ---------------------------------------------------------------- step

#[derive(Args, Debug)]
pub struct StepArgs {
    /// Experiment manifest (TOML): its model, the run's estimator, lr and optimizer.
    pub manifest: PathBuf,
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub overrides: Vec<String>,
    /// The run whose loss and optimizer to step (name or 0-based index; default the first).
    #[arg(long)]
    pub run: Option<String>,
    /// Timed steps (after the warm-up ones).
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long)]
    pub threads: Option<i32>,
    /// Prompt tokens per row (default 8).
    #[arg(long, default_value_t = 8)]
    pub prompt_tokens: i64,
    /// Completion tokens per row (default: the task's max_new_tokens).
    #[arg(long)]
    pub completion_tokens: Option<i64>,
    /// Square f32 matmul sizes whose best rate is the machine's GEMM rate
    /// (the fastest single matmul).
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,3072")]
    pub gemm_sizes: Vec<i64>,
    /// Seconds of repeated matmuls per size.
    #[arg(long, default_value_t = 2.0)]
    pub gemm_seconds: f64,
}

/// This machine's f32 GEMM rate (GFLOP/s): square `n × n` matmuls repeated
/// for `seconds` per size; the fastest single matmul of the best size (on a
/// shared machine, the least disturbed one), and each size's (fastest, mean).
pub fn gemm_rate(sizes: &[i64], seconds: f64, device: Device) -> (f64, Vec<(i64, f64, f64)>) {
    let _guard = tch::no_grad_guard();
    let mut each = Vec::new();
    for &n in sizes {
        let a = Tensor::randn([n, n], (Kind::Float, device));
        let b = Tensor::randn([n, n], (Kind::Float, device));
        let _ = a.matmul(&b); // warm-up
        sync(device);
        let flop = 2.0 * (n as f64).powi(3);
        let start = Instant::now();
        let (mut reps, mut fastest) = (0u32, f64::INFINITY);
        while reps == 0 || start.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            let _ = a.matmul(&b);
            sync(device);
            fastest = fastest.min(t.elapsed().as_secs_f64());
            reps += 1;
        }
        let mean = start.elapsed().as_secs_f64() / reps as f64;
        each.push((n, flop / fastest / 1e9, flop / mean / 1e9));
    }
    let best = each.iter().map(|&(_, r, _)| r).fold(0.0, f64::max);
    (best, each)
}

/// A decoder's shape from its variables: (all parameters, the body's
/// matmul parameters, the output head's, layers, hidden size). The body's
/// are the 2-D weights but the embedding tables (a lookup) and the head; the
/// head is `lm_head` / `embed_out`, or the token embedding when tied.
fn shape_of(vs: &nn::VarStore) -> (i64, i64, i64, i64, i64) {
    let vars = vs.variables();
    let total: i64 = vars.values().map(|t| t.numel() as i64).sum();
    let has = |name: &str, parts: &[&str]| parts.iter().any(|e| name.contains(e));
    const EMBEDDINGS: [&str; 5] = ["embed_tokens", "wte", "wpe", "embed_in", "word_embeddings"];
    const HEADS: [&str; 2] = ["lm_head", "embed_out"];
    const TOKEN_EMBEDDINGS: [&str; 3] = ["embed_tokens", "wte", "embed_in"];
    let body: i64 = vars
        .iter()
        .filter(|(name, t)| t.dim() == 2 && !has(name, &EMBEDDINGS) && !has(name, &HEADS))
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let embedding = vars.iter().find(|(name, _)| has(name, &TOKEN_EMBEDDINGS));
    let head = vars
        .iter()
        .find(|(name, _)| has(name, &HEADS))
        .or(embedding)
        .map_or(0, |(_, t)| t.numel() as i64);
    let hidden = embedding.map_or(0, |(_, t)| t.size()[1]);
    let mut layers = std::collections::BTreeSet::new();
    for name in vars.keys() {
        let parts: Vec<&str> = name.split('.').collect();
        for w in parts.windows(2) {
            if matches!(w[0], "layers" | "h") {
                if let Ok(i) = w[1].parse::<u32>() {
                    layers.insert(i);
                }
            }
        }
    }
    (total, body, head, layers.len() as i64, hidden)
}

/// The training step alone on a fixed batch of `rows` = prompts per step ×
/// samples per prompt sequences of `prompt_tokens + completion_tokens`
/// tokens: the policy's log-probs of the completions, the run's loss (fixed
/// prior, proposal and goodness values), backward, the update check and the
/// optimizer step, as the loop takes them. One JSON line with the FLOPs
/// (6·body matmul params·rows·T + 6·head params·rows·completion tokens, the
/// logits being computed at completion positions only, + 12·layers·rows·T²·
/// hidden for attention) and the fraction of the measured GEMM rate the
/// step reaches.
pub fn bench_step(args: &StepArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.iterations >= 1 && args.warmup >= 1 && args.prompt_tokens >= 1,
        "--iterations, --warmup and --prompt-tokens must be ≥ 1"
    );
    let manifest = load_manifest(&args.manifest, &args.overrides)?;
    let run = &manifest.runs[run_index(&manifest, args.run.as_deref())?];
    if let Some(t) = args.threads.or(manifest.threads) {
        tch::set_num_threads(t);
    }
    let device = runner::rank_device(manifest.device.resolve()?, align_distributed::world());
    let task_spec = manifest.task.value.as_ref();
    let model_ctx = ModelContext {
        device,
        vocab_size: task_spec.vocab_size(),
        max_len: task_spec.max_len(),
        seed: manifest.seed,
    };
    let completion = match args.completion_tokens {
        Some(c) => c,
        None => {
            let codec = manifest.model.value.codec()?;
            task_spec
                .build(&TaskContext {
                    seed: manifest.seed,
                    codec,
                })?
                .max_new_tokens()
        }
    };
    anyhow::ensure!(completion >= 1, "--completion-tokens must be ≥ 1");
    let mut policy = manifest
        .model
        .value
        .build(&model_ctx)
        .context("building the model")?;
    policy.var_store_mut().unfreeze();
    let estimator = run.estimator.value.as_ref();
    let plan = estimator.plan();
    let n = samples_per_prompt(&plan.candidates).unwrap_or(2);
    let p = manifest.train.prompts_per_step.unwrap_or(4) as i64;
    let rows = p * n;
    let t = args.prompt_tokens + completion;
    let vocab = policy.vocab_size();

    // Fixed random tokens; fixed log-densities and rewards for the loss.
    tch::manual_seed(0);
    let ids = Tensor::randint(vocab, [rows, t], (Kind::Int64, Device::Cpu));
    let ids = Vec::<Vec<i64>>::try_from(ids)?;
    let prompts: Vec<Prompt> = ids
        .iter()
        .map(|r| Prompt {
            ids: r[..args.prompt_tokens as usize].to_vec(),
            text: None,
        })
        .collect();
    let completions: Vec<Vec<i64>> = ids
        .iter()
        .map(|r| r[args.prompt_tokens as usize..].to_vec())
        .collect();
    let batch = SampleBatch::from_pairs(&prompts, &completions, device);
    let fixed = |scale: f64, offset: f64| {
        (Tensor::randn([p, n], (Kind::Float, Device::Cpu)) * scale + offset).to_device(device)
    };
    let (proposal_logp, prior_logp) = (fixed(3.0, -40.0), fixed(3.0, -40.0));
    let reward = fixed(1.0, 0.0);
    let log_goodness = reward.log_sigmoid() / 0.25;
    let lengths = Tensor::full([p, n], completion as f64, (Kind::Float, device));

    let mut opt = Optimizer::new(manifest.train.optimizer, policy.var_store(), run.lr)?;
    // The loop's gradient sum: nothing for one process, unless BRAIN_NCCL=on
    // sends it through NCCL (the GPU check times that).
    let world = align_distributed::world();
    let device_sum = runner::grad_sum::for_run(world, device)?;
    let names = [
        "forward",
        "loss_backward",
        "gradient_sum",
        "update_check",
        "optimizer",
    ];
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut seconds = Vec::new();
    for i in 0..args.warmup + args.iterations {
        let mut marks = [Instant::now(); 6];
        let policy_logp = policy_logprobs(policy.as_ref(), &batch).view([p, n]);
        sync(device);
        marks[1] = Instant::now();
        let groups = GroupInputs {
            policy_logp,
            proposal_logp: proposal_logp.shallow_clone(),
            prior_logp: prior_logp.shallow_clone(),
            log_goodness: log_goodness.shallow_clone(),
            reward: reward.shallow_clone(),
            lengths: lengths.shallow_clone(),
            reference_policy_logp: None,
        };
        let (loss, _) = estimator.loss(&groups);
        opt.zero_grad();
        loss.backward();
        policy.finish_backward();
        sync(device);
        marks[2] = Instant::now();
        opt.sum_grads(world, device_sum)?;
        sync(device);
        marks[3] = Instant::now();
        let finite = loss.double_value(&[]).is_finite() && opt.update_is_finite();
        marks[4] = Instant::now();
        anyhow::ensure!(finite, "step {i}: non-finite loss or update");
        opt.step();
        sync(device);
        marks[5] = Instant::now();
        if i >= args.warmup {
            for (k, w) in marks.windows(2).enumerate() {
                phases[k].push((w[1] - w[0]).as_secs_f64());
            }
            seconds.push((marks[5] - marks[0]).as_secs_f64());
        }
    }
    let peak_step = peak_rss_mib();
    let (gemm, gemm_each) = gemm_rate(&args.gemm_sizes, args.gemm_seconds, device);
    let (params, body_params, head_params, layers, hidden) = shape_of(policy.var_store());
    let tokens = (rows * t) as f64;
    let flops = 6.0 * body_params as f64 * tokens
        + 6.0 * head_params as f64 * (rows * completion) as f64
        + 12.0 * (layers * rows) as f64 * (t * t) as f64 * hidden as f64;
    let step = median(&seconds);
    let achieved = flops / step / 1e9;
    let mut phase_medians = serde_json::Map::new();
    let mut phase_seconds = serde_json::Map::new();
    for (name, xs) in names.iter().zip(&phases) {
        phase_medians.insert(name.to_string(), json!(median(xs)));
        phase_seconds.insert(name.to_string(), json!(xs));
    }
    writeln!(
        out,
        "{}",
        json!({
            "impl": "brain-rs",
            "bench": "step",
            "manifest": args.manifest.display().to_string(),
            "run": run.name,
            "estimator": run.estimator.plugin,
            "device": device_name(device),
            "threads": tch::get_num_threads(),
            "lr": run.lr,
            "optimizer": format!("{:?}", manifest.train.optimizer).to_lowercase(),
            "prompts": p,
            "samples_per_prompt": n,
            "rows": rows,
            "prompt_tokens": args.prompt_tokens,
            "completion_tokens": completion,
            "sequence_length": t,
            "params": params,
            "body_matmul_params": body_params,
            "head_params": head_params,
            "layers": layers,
            "hidden": hidden,
            "flops": flops,
            "flop_formula": "6*body_matmul_params*rows*T + 6*head_params*rows*completion_tokens + 12*layers*rows*T^2*hidden",
            "warmup": args.warmup,
            "iterations": args.iterations,
            "seconds_per_step": step,
            "step_seconds": seconds,
            "gradient_sum": match (device_sum.is_some(), world.size() > 1) {
                (true, _) => "nccl",
                (false, true) => "host",
                (false, false) => "none",
            },
            "phases": phase_medians,
            "phase_seconds": phase_seconds,
            "tokens_per_s": tokens / step,
            "gflops": achieved,
            "gemm_gflops": gemm,
            "gemm_gflops_by_size": gemm_each,
            "fraction_of_gemm": achieved / gemm,
            "compute_bound_seconds": flops / (gemm * 1e9),
            "step_over_bound": step / (flops / (gemm * 1e9)),
            "peak_rss_mb": peak_step,
        })
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The command line as `runner` parses it.
    fn parse(args: &[&str]) -> crate::Cli {
        use clap::Parser;
        crate::Cli::try_parse_from(std::iter::once("runner").chain(args.iter().copied())).unwrap()
    }

    fn json_line(out: Vec<u8>) -> serde_json::Value {
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str(text.trim()).unwrap()
    }

    /// `runner bench-iteration` runs a manifest's run on the tiny Llama
    /// through the real loop and reports every field the harness reads
    /// (no timing is asserted).
    #[test]
    fn bench_iteration_reports_its_fields() {
        let dir = tempfile::tempdir().unwrap();
        let prompts = dir.path().join("prompts.jsonl");
        let manifest = repo().join("experiments/tiny-sentiment.toml");
        let cli = parse(&[
            "bench-iteration",
            &manifest.display().to_string(),
            "--set=device=cpu",
            "--run",
            "brain",
            "--iterations",
            "2",
            "--threads",
            "1",
            "--prompts-out",
            &prompts.display().to_string(),
        ]);
        let Some(crate::Command::BenchIteration(args)) = cli.command else {
            panic!("parsed as another command");
        };
        let mut out = Vec::new();
        bench_iteration(&args, &mut out).unwrap();
        let v = json_line(out);
        assert_eq!(v["bench"], "iteration");
        assert_eq!(v["run"], "brain");
        assert_eq!(v["estimator"], "brain");
        assert_eq!(v["iteration_seconds"].as_array().unwrap().len(), 2);
        for phase in [
            "refresh",
            "sample",
            "score",
            "prior_logprobs",
            "policy_forward",
            "backward_step",
        ] {
            assert_eq!(
                v["phase_seconds"][phase].as_array().unwrap().len(),
                2,
                "{phase}"
            );
            assert!(v["phases"][phase].as_f64().unwrap() >= 0.0, "{phase}");
        }
        // 2 prompts × 3 samples per step, as tiny-sentiment.toml says.
        assert_eq!(v["rows"], json!([6, 6]));
        assert_eq!(v["samples_per_prompt"], 3);
        assert!(v["seconds_per_iteration"].as_f64().unwrap() > 0.0);
        if cfg!(target_os = "linux") {
            assert!(v["peak_rss_mb"].as_f64().unwrap() > 0.0);
        }
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&prompts)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3); // warm-up + 2
        assert_eq!(lines[0]["prompts"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bench_step_reports_flops_and_the_gemm_rate() {
        let manifest = repo().join("experiments/tiny-sentiment.toml");
        let cli = parse(&[
            "bench-step",
            &manifest.display().to_string(),
            "--set=device=cpu",
            "--run",
            "dpo",
            "--iterations",
            "2",
            "--gemm-sizes",
            "64,128",
            "--gemm-seconds",
            "0.01",
        ]);
        let Some(crate::Command::BenchStep(args)) = cli.command else {
            panic!("parsed as another command");
        };
        let mut out = Vec::new();
        bench_step(&args, &mut out).unwrap();
        let v = json_line(out);
        assert_eq!(v["bench"], "step");
        assert_eq!(v["estimator"], "dpo");
        assert_eq!(v["step_seconds"].as_array().unwrap().len(), 2);
        assert!(v["flops"].as_f64().unwrap() > 0.0);
        assert!(v["gemm_gflops"].as_f64().unwrap() > 0.0);
        assert!(v["fraction_of_gemm"].as_f64().unwrap() > 0.0);
        assert_eq!(v["gemm_gflops_by_size"].as_array().unwrap().len(), 2);
        assert!(v["layers"].as_i64().unwrap() >= 1);
    }
}
