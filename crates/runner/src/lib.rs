//! The pipeline behind `runner MANIFEST.toml`: build the plugins a manifest
//! names, train one policy per run, evaluate, and write `results/<name>/`.

pub mod check;
pub mod checkpoint;
pub mod evaluate;
pub mod grad_sum;
pub mod outdir;
pub mod report;
pub mod samples;
pub mod sft;
pub mod stages;
pub mod sweep;
pub mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use align_core::manifest::Manifest;
use align_core::policy::frozen_copy;
use align_core::{EvalContext, Metrics, ModelContext, Policy, TaskContext};
use align_report::format::{RunRecord, RunsFile, SampleRecord};
use anyhow::Context;
use train::StepLog;

// Links every plugin crate so its `inventory` registrations survive: build.rs
// writes one `use <crate> as _;` per dependency whose Cargo.toml declares
// `[package.metadata.brain-rs] plugin = true`. Adding a plugin crate = one
// dependency line in crates/runner/Cargo.toml.
include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// One row of the summary: a run at one seed (reference rows have none).
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub estimator: String,
    pub seed: Option<u64>,
    pub steps: usize,
    pub seconds: f64,
    /// Run-level metrics and the plain mean of each per-completion column.
    pub metrics: Metrics,
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub out_dir: PathBuf,
    /// The summary table as Markdown (what `runner` prints).
    pub markdown: String,
}

/// Where this ran, for the results (floats differ across machines).
pub fn machine(device: tch::Device) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = match device {
        tch::Device::Cpu => "CPU".to_string(),
        tch::Device::Cuda(i) => format!("CUDA:{i}"),
        d => format!("{d:?}"),
    };
    format!(
        "{cpu}, {cores} cores, {} LibTorch threads, {device}",
        tch::get_num_threads()
    )
}

/// Per run: its rows for the summary and its judged completions.
struct RunResults {
    records: Vec<RunRecord>,
    samples: Vec<SampleRecord>,
}

impl RunResults {
    fn new() -> RunResults {
        RunResults {
            records: Vec::new(),
            samples: Vec::new(),
        }
    }
}

fn metric_pairs(m: &Metrics) -> Vec<(String, Option<f64>)> {
    m.iter()
        .map(|(n, v)| (n.to_string(), v.is_finite().then_some(v)))
        .collect()
}

/// Runs every run of `manifest` at each of its seeds, writing results into
/// `out_dir` (locked, and refused if it holds an unfinished or another
/// manifest's run): runs.json, samples/, steps/, then every table, plot and
/// the report, recomputed from those files.
pub fn run(manifest: &Manifest, out_dir: &Path, progress: bool) -> anyhow::Result<Outcome> {
    let mut out = outdir::OutDir::lock(out_dir)?;
    run_locked(manifest, &mut out, progress, false)
}

/// [`run`] into a directory already locked; `resume` continues an unfinished
/// run of this manifest there (finished runs are read back, the others go on
/// from their last checkpoint). The directory's marker ends `finished`, or
/// `failed` with the error.
pub fn run_locked(
    manifest: &Manifest,
    out: &mut outdir::OutDir,
    progress: bool,
    resume: bool,
) -> anyhow::Result<Outcome> {
    check_run_names(manifest)?;
    out.begin(&manifest.name, &manifest.resolved_toml(), resume)?;
    match run_in(manifest, out.path(), progress) {
        Ok(outcome) => {
            out.finish()?;
            Ok(outcome)
        }
        Err(e) => {
            out.fail(&e);
            Err(e)
        }
    }
}

/// A data-parallel rank other than 0 (`mpiexec -n N`): the same runs as
/// rank 0, in step with it, reading its checkpoints in `out_dir`; rank 0
/// alone evaluates and writes (see [`train`]).
pub fn run_follower(manifest: &Manifest, out_dir: &Path) -> anyhow::Result<Outcome> {
    check_run_names(manifest)?;
    run_in(manifest, out_dir, false)
}

/// What every run of a manifest starts from: the prior (frozen, before any
/// `[sft]` stage), the model's tokenizer and the task.
pub struct Foundation {
    pub model_ctx: ModelContext,
    pub prior: Box<dyn Policy>,
    pub codec: Option<std::sync::Arc<dyn align_core::TextCodec>>,
    pub task: Box<dyn align_core::Task>,
}

/// Data parallel on CUDA: each rank on a GPU of its own, `cuda:L mod G` for
/// its index `L` among the ranks on its node ([`align_distributed::local_rank`];
/// its rank when the launcher does not say) and the `G` GPUs it sees. A
/// world of one, or the CPU, keeps `device`.
pub fn rank_device(device: tch::Device, comm: &dyn align_distributed::Comm) -> tch::Device {
    match device {
        tch::Device::Cuda(0) if comm.size() > 1 => {
            let gpus = tch::Cuda::device_count().max(1) as usize;
            let local = align_distributed::local_rank().unwrap_or(comm.rank());
            tch::Device::Cuda(local % gpus)
        }
        other => other,
    }
}

/// Builds the manifest's [`Foundation`] on its device. The model comes
/// first: a text task tokenizes its prompts with the model's tokenizer,
/// while a toy task tells the model its vocabulary through its spec.
pub fn foundation(manifest: &Manifest) -> anyhow::Result<Foundation> {
    let device = rank_device(manifest.device.resolve()?, align_distributed::world());
    let task_spec = manifest.task.value.as_ref();
    let model_ctx = ModelContext {
        device,
        vocab_size: task_spec.vocab_size(),
        max_len: task_spec.max_len(),
        seed: manifest.seed,
    };
    let mut prior = manifest
        .model
        .value
        .build(&model_ctx)
        .context("building the prior model")?;
    prior.var_store_mut().freeze();
    let codec = manifest
        .model
        .value
        .codec()
        .context("loading the model's tokenizer")?;
    let task = task_spec
        .build(&TaskContext {
            seed: manifest.seed,
            codec: codec.clone(),
        })
        .context("building the task")?;
    Ok(Foundation {
        model_ctx,
        prior,
        codec,
        task,
    })
}

fn run_in(manifest: &Manifest, out_dir: &Path, progress: bool) -> anyhow::Result<Outcome> {
    // Data parallel: the other ranks read `out_dir` once rank 0 has begun it.
    align_distributed::world().barrier();
    let root = align_distributed::world().is_root();
    if let Some(t) = manifest.threads {
        tch::set_num_threads(t);
    }
    let Foundation {
        model_ctx,
        mut prior,
        codec,
        task,
    } = foundation(manifest)?;
    let device = model_ctx.device;
    if let Some(c) = &manifest.sft {
        let done = align_distributed::root_first(|| {
            sft::sft(prior.as_mut(), task.as_ref(), c, manifest.seed, progress)
        })
        .context("the `[sft]` stage")?;
        match (done.cached, done.nll) {
            (true, _) => eprintln!("SFT: cached in {}", done.dir.display()),
            (false, Some((first, last))) => eprintln!(
                "SFT: gold NLL/token {first:.3} → {last:.3} in {:.0} s, cached in {}",
                done.seconds,
                done.dir.display()
            ),
            (false, None) => {}
        }
    }
    let reward = manifest
        .reward
        .value
        .build(device)
        .context("building the reward model")?;
    let eval_ctx = EvalContext {
        task: task.as_ref(),
        prior: prior.as_ref(),
        reward: reward.as_ref(),
        goodness: manifest.goodness.value.as_ref(),
        codec: codec.as_deref(),
        device,
    };

    let mut rows = Vec::new();
    let mut results: Vec<(String, RunResults)> = Vec::new();
    let mut reference = RunResults::new();
    for e in &manifest.evaluators {
        for (name, metrics) in e.value.reference_rows(&eval_ctx)? {
            reference.records.push(RunRecord {
                run: name.clone(),
                estimator: "-".into(),
                seed: None,
                steps: 0,
                seconds: 0.0,
                metrics: metric_pairs(&metrics),
                columns: Vec::new(),
                eval_steps: Vec::new(),
                samples: None,
            });
            rows.push(Row {
                name,
                estimator: "-".into(),
                seed: None,
                steps: 0,
                seconds: 0.0,
                metrics,
            });
        }
    }
    results.push((String::new(), reference));
    results.push(("prior".into(), RunResults::new()));
    for run in &manifest.runs {
        results.push((run.name.clone(), RunResults::new()));
    }
    let mut steps_logs: Vec<Vec<(u64, StepLog)>> = vec![Vec::new(); manifest.runs.len()];
    if root {
        align_core::io::write_atomic(
            &out_dir.join("manifest.resolved.toml"),
            manifest.resolved_toml().as_bytes(),
        )?;
    }
    let runs_file = RunsFile {
        experiment: manifest.name.clone(),
        description: manifest.description.clone(),
        machine: machine(device),
        seeds: manifest.seeds.clone(),
        rows: Vec::new(),
    };

    // Seed by seed, so that an interrupted experiment has every method at the
    // seeds it finished; the results on disk are rewritten after each run,
    // and each run's checkpoint lets `--resume` skip or continue it.
    let mut markdown = String::new();
    let shared_samples = samples::cache(manifest, prior.as_ref(), device, codec.is_some())?;
    if let Some(dir) = shared_samples.as_ref().and_then(|c| c.dir()) {
        if progress {
            eprintln!("Prior samples shared by the runs: {}", dir.display());
        }
    }
    for &seed in &manifest.seeds {
        if let Some(c) = &shared_samples {
            c.clear(); // another seed's draws are never asked for again
        }
        // The prior's evaluation: the ranks share its held-out sampling
        // when rank 0 (which alone judges and writes) has none saved.
        let prior_dir = checkpoint::dir(out_dir, "prior", seed);
        let saved = match root {
            true => checkpoint::load_finished(&prior_dir)?,
            false => None,
        };
        let mut evaluate_prior = [u8::from(saved.is_none())];
        align_distributed::world().broadcast(&mut evaluate_prior);
        let at = evaluate::Point {
            run: "prior",
            seed,
            step: 0,
        };
        let judged = match evaluate_prior[0] {
            1 => Some(evaluate::evaluate(
                manifest,
                &eval_ctx,
                prior.as_ref(),
                &at,
            )?),
            _ => None,
        };
        if root {
            let done = match (saved, judged) {
                (Some(done), _) => done,
                (None, judged) => {
                    let judged = judged.expect("rank 0 evaluated the prior");
                    let done = checkpoint::Finished {
                        record: record("prior", "-", seed, 0, 0.0, &judged, vec![0]),
                        samples: judged.records,
                        log: StepLog::new(),
                        metrics: judged.metrics,
                    };
                    checkpoint::save_finished(&prior_dir, None, &done)?;
                    done
                }
            };
            rows.push(Row {
                name: "prior".into(),
                estimator: "-".into(),
                seed: Some(seed),
                steps: 0,
                seconds: 0.0,
                metrics: done.metrics,
            });
            let prior_results = &mut results[1].1;
            prior_results.records.push(done.record);
            prior_results.samples.extend(done.samples);
            markdown = flush(out_dir, &runs_file, &results)?;
        }

        for (i, run) in manifest.runs.iter().enumerate() {
            let dir = checkpoint::dir(out_dir, &run.name, seed);
            let done = match checkpoint::load_finished(&dir)? {
                Some(done) => done,
                None => {
                    let setup = train::Setup {
                        manifest,
                        run,
                        task: task.as_ref(),
                        model_ctx: &model_ctx,
                        prior: prior.as_ref(),
                        reward: reward.as_ref(),
                        codec: codec.as_deref(),
                        seed,
                        samples: shared_samples.as_ref(),
                    };
                    let done = train_run(&setup, &eval_ctx, &dir, progress)
                        .with_context(|| format!("run `{}` (seed {seed})", run.name))?;
                    if progress {
                        // One line per finished run, also where the bars are hidden (no TTY).
                        eprintln!(
                            "  {} (seed {seed}): {} steps in {:.0} s",
                            run.name, done.record.steps, done.record.seconds
                        );
                    }
                    done
                }
            };
            rows.push(Row {
                name: run.name.clone(),
                estimator: run.estimator.plugin.clone(),
                seed: Some(seed),
                steps: done.record.steps,
                seconds: done.record.seconds,
                metrics: done.metrics,
            });
            let run_results = &mut results[2 + i].1;
            run_results.records.push(done.record);
            run_results.samples.extend(done.samples);
            steps_logs[i].push((seed, done.log));
            if root {
                report::write_steps(out_dir, &run.name, &steps_logs[i])?;
                markdown = flush(out_dir, &runs_file, &results)?;
            }
        }
    }
    Ok(Outcome {
        rows,
        out_dir: out_dir.to_path_buf(),
        markdown,
    })
}

/// Evaluations as the loop asks for them, and checkpoints into `dir` with
/// every evaluation so far.
struct RunHooks<'a> {
    manifest: &'a Manifest,
    eval_ctx: &'a EvalContext<'a>,
    run: &'a str,
    seed: u64,
    dir: &'a Path,
    evaluated: checkpoint::Evaluated,
    started: Instant,
}

impl RunHooks<'_> {
    fn seconds(&self) -> f64 {
        self.evaluated.seconds + self.started.elapsed().as_secs_f64()
    }
}

impl train::Hooks for RunHooks<'_> {
    fn evaluate(&mut self, policy: &dyn Policy, step: usize) -> anyhow::Result<Metrics> {
        let at = evaluate::Point {
            run: self.run,
            seed: self.seed,
            step,
        };
        let judged = evaluate::evaluate(self.manifest, self.eval_ctx, policy, &at)?;
        self.evaluated.eval_steps.push(step);
        self.evaluated.samples.extend(judged.records);
        Ok(judged.metrics)
    }

    fn checkpoint(&mut self, policy: &dyn Policy, at: &train::Snapshot) -> anyhow::Result<()> {
        let evaluated = checkpoint::Evaluated {
            seconds: self.seconds(),
            ..self.evaluated.clone()
        };
        checkpoint::save(self.dir, self.run, self.seed, policy, at, &evaluated)
    }
}

/// Trains one run at one seed from its checkpoint in `dir` (or from the
/// start), evaluates it, and leaves its final checkpoint there.
fn train_run(
    s: &train::Setup,
    eval_ctx: &EvalContext,
    dir: &Path,
    progress: bool,
) -> anyhow::Result<checkpoint::Finished> {
    let (manifest, run, seed) = (s.manifest, s.run, s.seed);
    let model = manifest.model.value.as_ref();
    let mut policy = frozen_copy(model, s.model_ctx, s.prior)?;
    policy.var_store_mut().unfreeze();
    let restored = checkpoint::load(dir, &run.name, seed, policy.as_mut(), || {
        frozen_copy(model, s.model_ctx, s.prior)
    })?;
    let (start, evaluated) = match restored {
        Some(r) => {
            eprintln!(
                "  {} (seed {seed}): resuming at step {} of {}",
                run.name, r.progress.step, run.steps
            );
            (r.progress, r.evaluated)
        }
        None => Default::default(),
    };
    let mut hooks = RunHooks {
        manifest,
        eval_ctx,
        run: &run.name,
        seed,
        dir,
        evaluated,
        started: Instant::now(),
    };
    let mut trained =
        train::train(s, policy.as_mut(), start, &mut hooks, progress).context("training")?;
    let at = evaluate::Point {
        run: &run.name,
        seed,
        step: trained.step,
    };
    // Every rank samples its share of the held-out completions; rank 0
    // judges them.
    let mut judged =
        evaluate::evaluate(manifest, eval_ctx, policy.as_ref(), &at).context("evaluating")?;
    if !align_distributed::world().is_root() {
        // Rank 0 keeps the trained policy and its evaluation; the others only train.
        let record = RunRecord {
            run: run.name.clone(),
            estimator: run.estimator.plugin.clone(),
            seed: Some(seed),
            steps: trained.step,
            seconds: hooks.seconds(),
            metrics: Vec::new(),
            columns: Vec::new(),
            eval_steps: Vec::new(),
            samples: None,
        };
        return Ok(checkpoint::Finished {
            record,
            samples: Vec::new(),
            log: trained.log,
            metrics: Metrics::new(),
        });
    }
    if manifest.train.eval_every > 0 || trained.stopped {
        if let Some((_, last)) = trained.log.last_mut() {
            last.extend(&judged.metrics);
        }
    }
    if trained.nonfinite_steps > 0 {
        // Run-level, so it reaches the summary (only where it happened).
        judged
            .metrics
            .set("nonfinite_steps", trained.nonfinite_steps as f64);
    }
    let mut eval_steps = hooks.evaluated.eval_steps.clone();
    eval_steps.push(trained.step);
    let seconds = hooks.seconds();
    let record = record(
        &run.name,
        &run.estimator.plugin,
        seed,
        trained.step,
        seconds,
        &judged,
        eval_steps,
    );
    let mut samples = std::mem::take(&mut hooks.evaluated.samples);
    samples.extend(judged.records);
    let done = checkpoint::Finished {
        record,
        samples,
        log: trained.log,
        metrics: judged.metrics,
    };
    checkpoint::save_finished(dir, Some(policy.as_ref()), &done)?;
    Ok(done)
}

/// Writes every judged sample and `runs.json` so far, then the tables, plots
/// and report recomputed from them; returns the summary as Markdown.
fn flush(
    out_dir: &Path,
    runs_file: &RunsFile,
    results: &[(String, RunResults)],
) -> anyhow::Result<String> {
    let mut runs = runs_file.clone();
    for (name, r) in results {
        let mut records = r.records.clone();
        if !r.samples.is_empty() {
            let file = align_report::format::samples_path(name);
            align_report::format::write_samples(out_dir, &file, &r.samples)?;
            for rec in &mut records {
                rec.samples = Some(file.clone());
            }
        }
        runs.rows.extend(records);
    }
    align_report::format::write_runs(out_dir, &runs)?;
    // Between two result files: runs.json is new, the tables are not yet.
    align_core::failpoint::hit("write");
    Ok(align_report::write_experiment(out_dir)?.markdown)
}

/// Each run's results go to files named after it (`steps/<slug>.csv`,
/// `samples/<slug>.jsonl`): two names with one slug, or a run named like
/// the untrained `prior` row, would overwrite each other's files.
fn check_run_names(manifest: &Manifest) -> anyhow::Result<()> {
    let mut seen: Vec<(String, &str)> = vec![(report::slug("prior"), "prior")];
    for run in &manifest.runs {
        let slug = report::slug(&run.name);
        anyhow::ensure!(
            !slug.is_empty(),
            "{}: run `{}` has no letters or digits to name its result files by; rename it",
            manifest.path.display(),
            run.name
        );
        if let Some((_, other)) = seen.iter().find(|(s, _)| *s == slug) {
            anyhow::bail!(
                "{}: runs `{other}` and `{}` would share the result files `{slug}.*` (names are compared by their file-name form; `prior` is the untrained model's row): rename one",
                manifest.path.display(),
                run.name
            );
        }
        seen.push((slug, &run.name));
    }
    Ok(())
}

fn record(
    run: &str,
    estimator: &str,
    seed: u64,
    steps: usize,
    seconds: f64,
    judged: &evaluate::Judged,
    eval_steps: Vec<usize>,
) -> RunRecord {
    // Column means are recomputed from the samples: keep only run-level metrics.
    let run_level: Vec<(String, Option<f64>)> = metric_pairs(&judged.metrics)
        .into_iter()
        .filter(|(n, _)| !judged.columns.contains(n))
        .collect();
    RunRecord {
        run: run.to_string(),
        estimator: estimator.to_string(),
        seed: Some(seed),
        steps,
        seconds,
        metrics: run_level,
        columns: judged.columns.clone(),
        eval_steps,
        samples: None,
    }
}
