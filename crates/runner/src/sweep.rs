//! `runner sweep MANIFEST`: a manifest's runs × its grid × its seeds as
//! indexed jobs, for a scheduler's array jobs (Slurm's `sbatch --array`,
//! Kubernetes' indexed Jobs) or a shell loop.
//!
//! A manifest's `[sweep]` table names the grid: each key is a setting of a
//! run (`runs.KEY` for every run, `runs.I.KEY` for one; `KEY` is `lr`,
//! `steps`, `sampling.NAME` or `estimator.PLUGIN.NAME`, the last only for
//! runs of that estimator) and its value the list of values to try:
//!
//! ```toml
//! [sweep]
//! grid = { "runs.lr" = [0.02, 0.05], "runs.estimator.brain.n" = [4, 8] }
//! ```
//!
//! Each run becomes one run per point of the grid keys that apply to it,
//! named after the point (`BRAIn [n=4, lr=0.02]`; keys in name order), and
//! each of those runs at each seed is one job: job `I` runs the manifest
//! with that run alone and `seeds = [that seed]` into `DIR/jobs/I/`, an
//! ordinary experiment directory. Jobs write nothing else, so any number
//! run at once; `runner tables DIR` merges them (`align_report::sweep`)
//! into the tables the whole manifest, with those runs written out, gives
//! in one process. A finished job run again is a no-op; an interrupted one
//! resumes from its checkpoints.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use align_core::manifest::{apply_overrides, limits, Manifest, ManifestError};
use align_report::sweep::{self as merge, JobFile, SweepJob, SweepPlan};
use serde::Deserialize;
use toml::Spanned;

use crate::outdir::{self, OutDir};

/// The environment variables an array job's index is read from, in order.
pub const INDEX_VARS: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Experiment manifest; its `[sweep]` table holds the grid (without
    /// one, the jobs are its runs × seeds).
    pub manifest: PathBuf,
    /// Override a manifest value, as for a plain run (every job gets it).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub overrides: Vec<String>,
    /// The sweep's directory (default: results/<name>-sweep); job I writes
    /// DIR/jobs/I/, and `runner tables DIR` merges them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print every job (index, seed, run, what it sets) and exit.
    #[arg(long, conflicts_with_all = ["count", "index"])]
    pub list: bool,
    /// Print the number of jobs N and exit (`sbatch --array=0-(N-1)`).
    #[arg(long, conflicts_with = "index")]
    pub count: bool,
    /// Run job I (default: $SLURM_ARRAY_TASK_ID, else $JOB_COMPLETION_INDEX).
    #[arg(long, value_name = "I")]
    pub index: Option<usize>,
    /// Hide progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// A run of the manifest as its text has it (before any plugin is built).
struct RawRun {
    name: String,
    /// The estimator plugin's name.
    plugin: Option<String>,
    /// Whether the run has its own `sampling` table.
    own_sampling: bool,
}

/// One key of the grid.
struct GridKey {
    /// As written, e.g. `runs.estimator.brain.n`.
    key: String,
    span: Range<usize>,
    /// `runs.I.…`: only run I.
    target: Option<usize>,
    /// The setting inside a run, e.g. `estimator.brain.n`.
    rest: String,
    /// `estimator.PLUGIN.…`: only runs of that estimator.
    plugin: Option<String>,
    /// How the run names show it (`n`, `lr`, `sampling.temperature`).
    label: String,
    values: Vec<toml::Value>,
}

impl GridKey {
    fn applies_to(&self, i: usize, run: &RawRun) -> bool {
        self.target.is_none_or(|t| t == i)
            && self
                .plugin
                .as_ref()
                .is_none_or(|p| run.plugin.as_ref() == Some(p))
    }
}

/// One job: run `run` of the manifest at one point of its grid, at `seed`.
#[derive(Debug, Clone)]
pub struct Job {
    pub index: usize,
    /// Index of the run in the manifest's `runs`.
    pub run: usize,
    /// The run's name in the results.
    pub name: String,
    pub seed: u64,
    /// The grid point as overrides of the manifest (`runs.I.KEY=VALUE`).
    pub point: Vec<String>,
    /// The key that decided the name (where errors about the point go).
    key: Option<usize>,
}

impl Job {
    /// Everything the job sets on top of the manifest.
    pub fn sets(&self) -> Vec<String> {
        let mut s = self.point.clone();
        s.push(format!("seeds=[{}]", self.seed));
        s
    }
}

/// A manifest read as a sweep: its text, its grid and its jobs.
pub struct Sweep {
    path: PathBuf,
    overrides: Vec<String>,
    /// The text after `--set`, with the `[sweep]` lines blanked (so every
    /// other line keeps its number).
    text: String,
    /// The text after `--set`, `[sweep]` included (for locating its errors).
    full: String,
    pub name: String,
    pub seeds: Vec<u64>,
    keys: Vec<GridKey>,
    pub jobs: Vec<Job>,
}

/// What stops a sweep: a manifest's error (exit code 2) or any other.
pub enum Failure {
    Manifest(ManifestError),
    Usage(String),
    Other(anyhow::Error),
}

impl From<ManifestError> for Failure {
    fn from(e: ManifestError) -> Failure {
        Failure::Manifest(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Other(e)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A located error in `text`, rendered as the loader renders its own.
fn located(
    file: &Path,
    text: &str,
    span: Option<Range<usize>>,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> ManifestError {
    let (location, snippet) = match span {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            let src = text.lines().nth(line - 1).unwrap_or("");
            let width = line.to_string().len();
            let len = span
                .len()
                .clamp(1, src.chars().count().saturating_sub(col - 1).max(1));
            let snippet = format!(
                "{:width$} |\n{line} | {src}\n{:width$} | {}{}",
                "",
                "",
                " ".repeat(col - 1),
                "^".repeat(len)
            );
            (Some((line, col)), snippet)
        }
        None => (None, String::new()),
    };
    ManifestError {
        file: file.to_path_buf(),
        location,
        message: message.into(),
        snippet,
        fix: fix.into(),
    }
}

/// `text` with the lines of its `[sweep]` tables (and a top-level `sweep =`
/// line) blank; `None` when that does not remove exactly `sweep` (the
/// caller says how to write it).
fn without_sweep(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let (mut inside, mut top) = (false, true);
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(header) = t.strip_prefix('[') {
            top = false;
            let h = header.trim_start_matches('[').trim_start();
            inside = h
                .strip_prefix("sweep")
                .is_some_and(|r| matches!(r.trim_start().chars().next(), Some(']' | '.')));
        }
        let top_key = top
            && t.strip_prefix("sweep")
                .is_some_and(|r| matches!(r.trim_start().chars().next(), Some('=' | '.')));
        if inside || top_key {
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    let mut before: toml::Table = text.parse().ok()?;
    let after: toml::Table = out.parse().ok()?;
    before.remove("sweep");
    (before == after).then_some(out)
}

/// The `[sweep]` table.
#[derive(Deserialize)]
struct Top {
    #[serde(default)]
    sweep: Option<Spanned<SweepSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepSpec {
    #[serde(default)]
    grid: std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

const GRID_FIX: &str = "write e.g. `[sweep]` then `grid = { \"runs.lr\" = [0.02, 0.05], \"runs.estimator.brain.n\" = [4, 8] }` \
     (README.md: Sweeps on a cluster scheduler)";

/// How a value reads in a run's name.
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Sweep {
    /// Reads the manifest at `path` with `--set` `overrides` and expands its
    /// grid into jobs. Only the text is read: the plugins are built by
    /// [`Sweep::plan`] (and by each job).
    pub fn read(path: &Path, overrides: &[String]) -> Result<Sweep, ManifestError> {
        let bare = |message: String, fix: &str| ManifestError {
            file: path.to_path_buf(),
            location: None,
            message,
            snippet: String::new(),
            fix: fix.into(),
        };
        let raw = std::fs::read_to_string(path).map_err(|e| {
            bare(
                format!("cannot read the manifest: {e}"),
                "check the path (it is relative to the current directory); experiments/ holds the shipped manifests",
            )
        })?;
        let full = apply_overrides(&raw, overrides).map_err(|m| {
            bare(
                m,
                "give --set a dotted key path that exists (array entries by index) and a TOML value",
            )
        })?;
        // Syntax errors, located by the loader itself.
        Manifest::stages(path, overrides)?;
        let top: Top = toml::from_str(&full).map_err(|e| {
            located(
                path,
                &full,
                e.span(),
                format!("in `[sweep]`: {}", e.message().trim()),
                GRID_FIX,
            )
        })?;
        let sweep_span = top.sweep.as_ref().map(|s| s.span());
        let text = without_sweep(&full).ok_or_else(|| {
            located(
                path,
                &full,
                sweep_span.clone(),
                "the sweep must be a table of its own, `[sweep]` (or `[sweep.grid]`), apart from the other tables",
                GRID_FIX,
            )
        })?;
        let table: toml::Table = text.parse().expect("checked by without_sweep");
        // What the loader would refuse, it refuses (with its location).
        let loader = |what: &str| -> ManifestError {
            match Manifest::from_str(path, &text) {
                Err(e) => e,
                Ok(_) => bare(format!("cannot read {what}"), "see README.md: Manifests"),
            }
        };
        let name = table
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| loader("the manifest's `name`"))?
            .to_string();
        limits::plain_name(&name).map_err(|_| loader("the manifest's `name`"))?;
        let runs: Vec<RawRun> = table
            .get("runs")
            .and_then(|r| r.as_array())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| loader("the manifest's `runs`"))?
            .iter()
            .map(|r| {
                let t = r.as_table()?;
                let plugin = match t.get("estimator")? {
                    toml::Value::String(s) => Some(s.clone()),
                    toml::Value::Table(e) if e.len() == 1 => e.keys().next().cloned(),
                    _ => None,
                };
                Some(RawRun {
                    name: t.get("name")?.as_str()?.to_string(),
                    plugin,
                    own_sampling: t.contains_key("sampling"),
                })
            })
            .collect::<Option<_>>()
            .ok_or_else(|| loader("the manifest's `runs`"))?;
        let seeds: Vec<u64> = match (table.get("seeds"), table.get("seed")) {
            (Some(s), _) => s
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|v| v.as_integer().and_then(|i| u64::try_from(i).ok()))
                        .collect::<Option<Vec<_>>>()
                })
                .filter(|s| !s.is_empty())
                .ok_or_else(|| loader("the manifest's `seeds`"))?,
            (None, Some(s)) => vec![s
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| loader("the manifest's `seed`"))?],
            (None, None) => vec![0],
        };
        let sampling = table.get("sampling").and_then(|s| s.as_table()).cloned();

        let at = |span: Range<usize>, message: String, fix: &str| {
            located(path, &full, Some(span), message, fix)
        };
        let mut keys: Vec<GridKey> = Vec::new();
        let grid = top.sweep.map(|s| s.into_inner().grid).unwrap_or_default();
        for (k, v) in grid {
            let span = k.span();
            let key = k.into_inner();
            let parts: Vec<&str> = key.split('.').collect();
            if parts[0] != "runs" {
                let fix = match parts.as_slice() {
                    ["train", s @ ("steps" | "lr")] => format!(
                        "write `runs.{s}` (every run's `{s}`; `train.{s}` is their default) or `runs.0.{s}` (the first run's)"
                    ),
                    ["sampling", ..] => format!("write `runs.{key}` (every run's) or `runs.0.{key}` (the first run's)"),
                    _ => "a setting of the whole experiment gives another experiment: sweep it with one `--set` per value (and --out per sweep)".to_string(),
                };
                return Err(at(
                    span,
                    format!("the grid key `{key}` is not a setting of the runs (`runs.…`)"),
                    &fix,
                ));
            }
            let (target, rest) = match parts.get(1).map(|p| p.parse::<usize>()) {
                Some(Ok(i)) => {
                    if i >= runs.len() {
                        return Err(at(
                            span,
                            format!(
                                "the grid key `{key}` names run {i}, but `runs` has {} entries",
                                runs.len()
                            ),
                            &format!(
                                "use an index from 0 to {}, or `runs.{}` for every run",
                                runs.len() - 1,
                                parts[2..].join(".")
                            ),
                        ));
                    }
                    (Some(i), &parts[2..])
                }
                _ => (None, &parts[1..]),
            };
            let setting_fix = "vary `lr`, `steps`, `sampling.NAME` or `estimator.PLUGIN.NAME` of the runs, e.g. `runs.estimator.brain.n`";
            let plugin = match rest {
                ["lr" | "steps"] => None,
                ["sampling", _, ..] => None,
                ["estimator", p, _, ..] => {
                    let targeted: Vec<&RawRun> = runs
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| target.is_none_or(|t| t == *i))
                        .map(|(_, r)| r)
                        .collect();
                    if !targeted.iter().any(|r| r.plugin.as_deref() == Some(*p)) {
                        let mut used: Vec<String> = Vec::new();
                        for p in targeted.iter().filter_map(|r| r.plugin.clone()) {
                            if !used.contains(&p) {
                                used.push(p);
                            }
                        }
                        return Err(at(
                            span,
                            format!(
                                "the grid key `{key}` is about the estimator `{p}`, which {} uses (they use `{}`)",
                                if target.is_some() { "that run never" } else { "no run" },
                                used.join("`, `")
                            ),
                            "name the estimator of the runs to vary",
                        ));
                    }
                    Some(p.to_string())
                }
                _ => {
                    return Err(at(
                        span,
                        format!("the grid key `{key}` is not a run setting a grid can vary"),
                        setting_fix,
                    ))
                }
            };
            let rest = rest.join(".");
            let label = match &plugin {
                Some(p) => rest
                    .strip_prefix(&format!("estimator.{p}."))
                    .unwrap_or(&rest)
                    .to_string(),
                None => rest.clone(),
            };
            let vspan = v.span();
            let values = match v.into_inner() {
                toml::Value::Array(a) if !a.is_empty() => a,
                _ => {
                    return Err(at(
                        vspan,
                        format!("the grid key `{key}` needs a list of the values to try"),
                        "write a non-empty list, e.g. `[0.02, 0.05]`",
                    ))
                }
            };
            for (i, x) in values.iter().enumerate() {
                if values[..i].contains(x) {
                    return Err(at(
                        vspan,
                        format!("the grid key `{key}` lists `{x}` twice"),
                        "list each value once",
                    ));
                }
            }
            let candidate = GridKey {
                key,
                span,
                target,
                rest,
                plugin,
                label,
                values,
            };
            for (i, r) in runs.iter().enumerate() {
                let clash = keys.iter().find(|o| {
                    o.rest == candidate.rest && o.applies_to(i, r) && candidate.applies_to(i, r)
                });
                if let Some(other) = clash {
                    return Err(at(
                        candidate.span.clone(),
                        format!(
                            "the grid keys `{}` and `{}` both set `{}` of run `{}`",
                            other.key, candidate.key, candidate.rest, r.name
                        ),
                        "keep one of them",
                    ));
                }
            }
            keys.push(candidate);
        }

        // Jobs: each run, each point of its keys (the first key varying
        // slowest), each seed.
        let mut jobs = Vec::new();
        let mut names: Vec<(String, String)> = vec![(crate::report::slug("prior"), "prior".into())];
        for (i, run) in runs.iter().enumerate() {
            let applied: Vec<usize> = (0..keys.len())
                .filter(|&k| keys[k].applies_to(i, run))
                .collect();
            let mut digits = vec![0usize; applied.len()];
            loop {
                let mut point = Vec::new();
                if !run.own_sampling
                    && applied
                        .iter()
                        .any(|&k| keys[k].rest.starts_with("sampling."))
                {
                    // A run's `sampling` replaces the manifest's whole: start
                    // from the manifest's.
                    for (f, v) in sampling.iter().flatten() {
                        let set = format!("sampling.{f}");
                        if !applied.iter().any(|&k| keys[k].rest == set) {
                            point.push(format!("runs.{i}.{set}={v}"));
                        }
                    }
                }
                let mut labels = Vec::new();
                for (d, &k) in digits.iter().zip(&applied) {
                    let v = &keys[k].values[*d];
                    point.push(format!("runs.{i}.{}={v}", keys[k].rest));
                    labels.push(format!("{}={}", keys[k].label, shown(v)));
                }
                let name = if labels.is_empty() {
                    run.name.clone()
                } else {
                    format!("{} [{}]", run.name, labels.join(", "))
                };
                let key = applied.first().copied();
                if let Some(k) = key {
                    let span = keys[k].span.clone();
                    if let Err(why) = limits::run_name(&name) {
                        return Err(at(
                            span,
                            format!("the grid names a run `{name}`, which is refused: {why}"),
                            "use values without `/`, `\\` or control characters, or shorter ones",
                        ));
                    }
                    let slug = crate::report::slug(&name);
                    if let Some((_, other)) = names.iter().find(|(s, _)| *s == slug) {
                        return Err(at(
                            span,
                            format!("the grid's runs `{other}` and `{name}` would share the result files `{slug}.*`"),
                            "use values that differ in letters or digits",
                        ));
                    }
                    names.push((slug, name.clone()));
                }
                for &seed in &seeds {
                    jobs.push(Job {
                        index: jobs.len(),
                        run: i,
                        name: name.clone(),
                        seed,
                        point: point.clone(),
                        key,
                    });
                }
                // The next point: the last key varies fastest.
                let (mut j, mut carry) = (applied.len(), true);
                while carry && j > 0 {
                    j -= 1;
                    digits[j] += 1;
                    carry = digits[j] == keys[applied[j]].values.len();
                    if carry {
                        digits[j] = 0;
                    }
                }
                if carry {
                    break;
                }
            }
        }
        Ok(Sweep {
            path: path.to_path_buf(),
            overrides: overrides.to_vec(),
            text,
            full,
            name,
            seeds,
            keys,
            jobs,
        })
    }

    /// The manifest with `sets` applied, built by the loader; an error of a
    /// grid point is located at its key.
    fn load(&self, job: &Job, sets: &[String]) -> Result<Manifest, ManifestError> {
        let text = apply_overrides(&self.text, sets)
            .map_err(|m| located(&self.path, &self.full, None, m, "check the grid's keys"))?;
        Manifest::from_str(&self.path, &text).map_err(|e| match job.key {
            Some(k) => located(
                &self.path,
                &self.full,
                Some(self.keys[k].span.clone()),
                format!(
                    "the grid's run `{}` ({}) is refused: {}",
                    job.name,
                    job.point.join(" "),
                    e.message
                ),
                e.fix,
            ),
            None => e,
        })
    }

    /// Job `job`'s manifest: its run alone, renamed, at its seed alone.
    pub fn job_manifest(&self, job: &Job) -> Result<Manifest, ManifestError> {
        let mut m = self.load(job, &job.sets())?;
        let mut run = m.runs.swap_remove(job.run);
        run.name = job.name.clone();
        m.runs = vec![run];
        Ok(m)
    }

    /// The whole sweep as one manifest (every grid point a run of its own)
    /// and its jobs; every grid point is built by the loader, so this is
    /// also the check of every job's settings.
    pub fn plan(&self) -> Result<SweepPlan, ManifestError> {
        let mut base = Manifest::from_str(&self.path, &self.text)?;
        let mut runs = Vec::new();
        for job in &self.jobs {
            if job.seed != self.seeds[0] {
                continue; // one per run of the sweep
            }
            let mut m = self.load(job, &job.point)?;
            let mut run = m.runs.swap_remove(job.run);
            run.name = job.name.clone();
            runs.push(run);
        }
        base.runs = runs;
        Ok(SweepPlan {
            experiment: self.name.clone(),
            seeds: self.seeds.clone(),
            resolved_manifest: base.resolved_toml(),
            jobs: self
                .jobs
                .iter()
                .map(|j| SweepJob {
                    index: j.index,
                    run: j.name.clone(),
                    seed: j.seed,
                    set: j.sets(),
                })
                .collect(),
        })
    }

    /// The stages the manifest lists, trained (or found cached) first: the
    /// plugins read what they write.
    fn stages(&self, progress: bool) -> Result<(), Failure> {
        let stages = Manifest::stages(&self.path, &self.overrides)
            .and_then(|s| crate::stages::load(&s.reward_models))?;
        for l in crate::stages::reward_models(&stages, progress)? {
            eprintln!("stage: {l}");
        }
        Ok(())
    }

    /// Whether the stages are all cached (so the plugins can be built).
    fn stages_ready(&self) -> Result<bool, Failure> {
        let stages = Manifest::stages(&self.path, &self.overrides)
            .and_then(|s| crate::stages::load(&s.reward_models))?;
        Ok(crate::stages::plan_reward_models(&stages)?.1)
    }
}

/// The job index: `--index`, else the scheduler's variable.
fn index_of(a: &SweepArgs, count: usize) -> Result<usize, Failure> {
    let (index, from) = match a.index {
        Some(i) => (i, "--index".to_string()),
        None => {
            let Some((var, value)) = INDEX_VARS
                .iter()
                .find_map(|v| std::env::var(v).ok().map(|x| (*v, x)))
            else {
                return Err(Failure::Usage(format!(
                    "which job? give --index I (0 to {}), or run it as an array job, which sets ${} (Slurm) or ${} (a Kubernetes indexed Job); `--list` shows the jobs",
                    count - 1,
                    INDEX_VARS[0],
                    INDEX_VARS[1]
                )));
            };
            let i = value.trim().parse::<usize>().map_err(|_| {
                Failure::Usage(format!(
                    "${var} is `{value}`, not a job index: give --index I instead"
                ))
            })?;
            (i, format!("${var}"))
        }
    };
    if index >= count {
        return Err(Failure::Usage(format!(
            "job {index} ({from}) is past the sweep's last job: it has {count} jobs, 0 to {} (`sbatch --array=0-{}`)",
            count - 1,
            count - 1
        )));
    }
    Ok(index)
}

/// `runner sweep`.
pub fn main(a: &SweepArgs) -> ExitCode {
    match sweep(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Manifest(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sweep(a: &SweepArgs) -> Result<(), Failure> {
    let sw = Sweep::read(&a.manifest, &a.overrides)?;
    let root = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(format!("{}-sweep", sw.name)));
    let count = sw.jobs.len();
    if a.list || a.count {
        // Every job's settings go through the loader now, not on the
        // cluster; where the stages have not trained yet, the plugins that
        // read them cannot be built, so only the grid is checked.
        if sw.stages_ready()? {
            sw.plan()?;
        } else {
            eprintln!(
                "note: the stages have not trained, so the jobs' plugins are not checked yet; every job trains them first (or train them now: `runner train-rm`)"
            );
        }
        if a.count {
            println!("{count}");
            return Ok(());
        }
        println!(
            "# {count} jobs: sbatch --array=0-{} (each writes {}/jobs/<index>; merge with `runner tables {}`)",
            count - 1,
            root.display(),
            root.display()
        );
        println!("index\tseed\trun\tsets");
        for j in &sw.jobs {
            println!(
                "{}\t{}\t{}\t{}",
                j.index,
                j.seed,
                j.name,
                j.sets().join(" ")
            );
        }
        return Ok(());
    }
    let index = index_of(a, count)?;
    let job = &sw.jobs[index];
    sw.stages(!a.quiet)?;
    let plan = sw.plan()?;
    let manifest = sw.job_manifest(job)?;
    let dir = merge::job_dir(&root, index);
    let resolved = manifest.resolved_toml();
    let done = merge::read_job_file(&root, index)
        .ok()
        .flatten()
        .is_some_and(|f| f.plan == plan);
    if done && outdir::is_finished(&dir, &resolved) {
        eprintln!(
            "job {index} ({} at seed {}) has finished in {}: nothing to do (remove that directory to run it again)",
            job.name,
            job.seed,
            dir.display()
        );
        return Ok(());
    }
    let mut out = OutDir::lock(&dir)?;
    // An interrupted job (killed, preempted) goes on from its checkpoints.
    let resume = dir.join("run-state.json").is_file();
    eprintln!(
        "{} job {index} of {count}: `{}` at seed {} → {}",
        if resume { "resuming" } else { "running" },
        job.name,
        job.seed,
        dir.display()
    );
    let outcome = crate::run_locked(&manifest, &mut out, !a.quiet, resume)?;
    merge::write_job_file(&root, &JobFile { index, plan })?;
    print!("{}", outcome.markdown);
    eprintln!(
        "wrote {}; when every job has finished, `runner tables {}` merges them",
        dir.display(),
        root.display()
    );
    Ok(())
}
