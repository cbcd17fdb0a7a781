//! A sweep's directory (`runner sweep`): one experiment split into indexed
//! jobs, each an ordinary experiment directory of its own under
//! `jobs/<index>/` (one run at one seed), plus `jobs/<index>/job.json`, the
//! sweep's plan as that job saw it. [`merge`] puts the jobs' results back
//! together as one experiment directory: `runs.json`, `samples/`, `steps/`
//! and `manifest.resolved.toml` in the order one process running the whole
//! manifest writes them, so the tables recomputed from them are the ones
//! that process would have written.
//!
//! Every job writes only under its own `jobs/<index>/`; only the merge
//! writes the sweep directory's top level.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::format::{read_runs, slug, write_atomic, write_runs, RunRecord, RunsFile};

/// The folder of the jobs' directories, inside the sweep directory.
pub const JOBS_DIR: &str = "jobs";
/// A finished job's plan, inside its directory.
pub const JOB_FILE: &str = "job.json";

/// The whole sweep, as every job computes it from the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPlan {
    pub experiment: String,
    /// The manifest's training seeds.
    pub seeds: Vec<u64>,
    /// The manifest with every grid point as a run of its own, resolved:
    /// what one process running the whole sweep would run.
    pub resolved_manifest: String,
    pub jobs: Vec<SweepJob>,
}

/// One job: one run (a grid point of one of the manifest's runs) at one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepJob {
    pub index: usize,
    /// The run's name in the results (the manifest's name, then the grid
    /// point's settings in brackets).
    pub run: String,
    pub seed: u64,
    /// What the job sets on top of the manifest (`--set` form).
    pub set: Vec<String>,
}

/// `jobs/<index>/job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFile {
    pub index: usize,
    pub plan: SweepPlan,
}

/// The directory of job `index`.
pub fn job_dir(sweep_dir: &Path, index: usize) -> PathBuf {
    sweep_dir.join(JOBS_DIR).join(index.to_string())
}

/// Writes `jobs/<index>/job.json` (atomically).
pub fn write_job_file(sweep_dir: &Path, job: &JobFile) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(job)?;
    text.push('\n');
    write_atomic(
        &job_dir(sweep_dir, job.index).join(JOB_FILE),
        text.as_bytes(),
    )
}

/// Job `index`'s plan, if it finished and wrote one.
pub fn read_job_file(sweep_dir: &Path, index: usize) -> anyhow::Result<Option<JobFile>> {
    let p = job_dir(sweep_dir, index).join(JOB_FILE);
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a sweep job's plan", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Whether `dir` is a sweep's directory: it has `jobs/<i>/job.json` for
/// some job.
pub fn is_sweep(dir: &Path) -> bool {
    job_files(dir).map(|j| !j.is_empty()).unwrap_or(false)
}

/// The indices of the jobs under `dir/jobs` that wrote a `job.json`, sorted.
fn job_files(dir: &Path) -> std::io::Result<Vec<usize>> {
    let jobs = dir.join(JOBS_DIR);
    if !jobs.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for e in std::fs::read_dir(&jobs)? {
        let e = e?;
        let Some(index) = e.file_name().to_str().and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if e.path().join(JOB_FILE).is_file() {
            found.push(index);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Whether the job directory's marker (`run-state.json`, the runner's)
/// says its run finished.
fn finished(job: &Path) -> bool {
    std::fs::read(job.join("run-state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("state").and_then(|s| s.as_str()) == Some("finished"))
}

/// What [`merge`] did.
#[derive(Debug, Clone)]
pub struct Merged {
    pub experiment: String,
    pub jobs: usize,
    /// Every file written, in the order written.
    pub written: Vec<PathBuf>,
}

/// Merges every job of the sweep in `dir` into `dir/runs.json`,
/// `dir/samples/`, `dir/steps/` and `dir/manifest.resolved.toml`, in the
/// order a single process running the whole manifest writes them: the
/// reference rows, the prior at each seed, then each run at each seed.
/// The reference and prior rows, which every job evaluates, are taken from
/// the first job at each seed. Refuses, naming them, while any job has not
/// finished, and when the jobs belong to different sweeps.
pub fn merge(dir: &Path) -> anyhow::Result<Merged> {
    let present = job_files(dir).with_context(|| format!("reading {}", dir.display()))?;
    let first = *present.first().with_context(|| {
        format!(
            "{} holds no finished sweep job ({}/<index>/{JOB_FILE})",
            dir.display(),
            JOBS_DIR
        )
    })?;
    let plan = read_job_file(dir, first)?
        .expect("listed because it exists")
        .plan;
    let mut missing = Vec::new();
    for job in &plan.jobs {
        let jd = job_dir(dir, job.index);
        match read_job_file(dir, job.index)? {
            Some(f) if f.plan != plan || f.index != job.index => anyhow::bail!(
                "{} belongs to another sweep than {} (its manifest, grid, seeds or --set differ): \
                 remove the jobs of the other sweep, or give each sweep its own --out",
                jd.display(),
                job_dir(dir, first).display()
            ),
            Some(_) if finished(&jd) => {}
            _ => missing.push(job.index),
        }
    }
    if let Some(&extra) = present.iter().find(|&&i| i >= plan.jobs.len()) {
        anyhow::bail!(
            "{} is past the sweep's last job ({} jobs): it belongs to another sweep; remove it, or give each sweep its own --out",
            job_dir(dir, extra).display(),
            plan.jobs.len()
        );
    }
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(20).map(|i| i.to_string()).collect();
        anyhow::bail!(
            "{} of the sweep's {} jobs have not finished (index {}{}): run them (`runner sweep MANIFEST --index I`, \
             or resubmit those array indices), then merge again",
            missing.len(),
            plan.jobs.len(),
            shown.join(", "),
            if missing.len() > shown.len() { ", …" } else { "" }
        );
    }

    let runs: Vec<RunsFile> = plan
        .jobs
        .iter()
        .map(|j| read_runs(&job_dir(dir, j.index)).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    // The first job at each seed, in the manifest's seed order.
    let first_at = |seed: u64| plan.jobs.iter().position(|j| j.seed == seed);
    let mut rows: Vec<(usize, RunRecord)> = Vec::new();
    for r in &runs[0].rows {
        if r.seed.is_none() {
            rows.push((0, r.clone()));
        }
    }
    for &seed in &plan.seeds {
        let Some(j) = first_at(seed) else { continue };
        for r in &runs[j].rows {
            if r.seed.is_some() && r.run == "prior" && r.estimator == "-" {
                rows.push((j, r.clone()));
            }
        }
    }
    for (j, job) in plan.jobs.iter().enumerate() {
        let own: Vec<&RunRecord> = runs[j].rows.iter().filter(|r| r.run == job.run).collect();
        anyhow::ensure!(
            !own.is_empty(),
            "{} has no row of its run `{}`",
            job_dir(dir, job.index).join("runs.json").display(),
            job.run
        );
        rows.extend(own.into_iter().map(|r| (j, r.clone())));
    }
    let mut machines: Vec<&str> = Vec::new();
    for r in &runs {
        if !machines.contains(&r.machine.as_str()) {
            machines.push(&r.machine);
        }
    }
    let merged = RunsFile {
        experiment: plan.experiment.clone(),
        description: runs[0].description.clone(),
        machine: machines.join(" | "),
        seeds: plan.seeds.clone(),
        rows: rows.iter().map(|(_, r)| r.clone()).collect(),
    };

    // Each samples file: the rows' files, job by job, in row order.
    let mut samples: Vec<(String, Vec<u8>)> = Vec::new();
    let mut read: Vec<(usize, String)> = Vec::new();
    for (j, r) in &rows {
        let Some(rel) = &r.samples else { continue };
        if read.iter().any(|(k, s)| k == j && s == rel) {
            continue;
        }
        read.push((*j, rel.clone()));
        let p = job_dir(dir, plan.jobs[*j].index).join(rel);
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        match samples.iter_mut().find(|(s, _)| s == rel) {
            Some((_, all)) => all.extend(bytes),
            None => samples.push((rel.clone(), bytes)),
        }
    }

    // steps/<run>.csv: each run's seeds in order; columns in order of first
    // appearance, as the runner writes them.
    let mut steps: Vec<(String, Vec<usize>)> = Vec::new();
    for (j, job) in plan.jobs.iter().enumerate() {
        match steps.iter_mut().find(|(run, _)| *run == job.run) {
            Some((_, js)) => js.push(j),
            None => steps.push((job.run.clone(), vec![j])),
        }
    }
    let mut steps_files = Vec::new();
    for (run, js) in &steps {
        let rel = format!("steps/{}.csv", slug(run));
        let mut header: Vec<String> = Vec::new();
        let mut lines: Vec<BTreeMap<String, String>> = Vec::new();
        let mut any = false;
        for &j in js {
            let p = job_dir(dir, plan.jobs[j].index).join(&rel);
            if !p.is_file() {
                continue;
            }
            any = true;
            let mut r =
                csv::Reader::from_path(&p).with_context(|| format!("reading {}", p.display()))?;
            let names: Vec<String> = r
                .headers()
                .with_context(|| format!("reading {}", p.display()))?
                .iter()
                .map(str::to_string)
                .collect();
            for n in &names {
                if !header.contains(n) {
                    header.push(n.clone());
                }
            }
            for rec in r.records() {
                let rec = rec.with_context(|| format!("reading {}", p.display()))?;
                lines.push(
                    names
                        .iter()
                        .cloned()
                        .zip(rec.iter().map(str::to_string))
                        .collect(),
                );
            }
        }
        if !any {
            continue;
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&header)?;
        for l in &lines {
            w.write_record(
                header
                    .iter()
                    .map(|h| l.get(h).map(String::as_str).unwrap_or("")),
            )?;
        }
        steps_files.push((rel, w.into_inner()?));
    }

    // Written afresh: what an earlier merge wrote there goes first.
    for sub in ["samples", "steps"] {
        let p = dir.join(sub);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("removing the earlier {}", p.display()))?;
        }
    }
    let mut written = Vec::new();
    let mut put = |rel: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let p = dir.join(rel);
        write_atomic(&p, bytes)?;
        written.push(p);
        Ok(())
    };
    put("manifest.resolved.toml", plan.resolved_manifest.as_bytes())?;
    for (rel, bytes) in &samples {
        put(rel, bytes)?;
    }
    for (rel, bytes) in &steps_files {
        put(rel, bytes)?;
    }
    write_runs(dir, &merged)?;
    written.push(dir.join("runs.json"));
    Ok(Merged {
        experiment: plan.experiment,
        jobs: plan.jobs.len(),
        written,
    })
}
