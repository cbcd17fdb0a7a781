//! Checkpoints, one directory per run and seed,
//! `<out>/checkpoints/<run>/seed-<seed>/`, each written whole or not at all
//! (a new one replaces the old only once complete):
//!
//! - during a run (every `train.checkpoint_every` steps): `model.safetensors`
//!   (the policy, HF tensor names), `optimizer.safetensors` (Adam's moments),
//!   `proposal.safetensors` (after a proposal refresh) and `state.json` (the
//!   step, the step log and every evaluation so far, the seconds spent);
//! - once it finished: `model.safetensors` (the aligned policy) and
//!   `finished.json` (its summary record, judged samples and step log); a
//!   LoRA policy (whose variable store is its adapters) also writes
//!   `adapter/` in PEFT's layout, and `merged/` (an HF directory) with
//!   `merge = true`.
//!
//! Every draw is seeded by its step, the data order is replayed, and the
//! weights and moments are saved bit for bit, so a resumed run continues
//! exactly where the checkpoint left it.

use std::path::{Path, PathBuf};

use align_core::io::{write_atomic, write_dir_atomic};
use align_core::{Metrics, Policy};
use align_report::format::{slug, RunRecord, SampleRecord};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::train::{Progress, Snapshot, StepLog};

const FORMAT: &str = "brain-rs-checkpoint-v1";

/// `<out>/checkpoints/<run>/seed-<seed>`.
pub fn dir(out: &Path, run: &str, seed: u64) -> PathBuf {
    out.join("checkpoints")
        .join(slug(run))
        .join(format!("seed-{seed}"))
}

/// A float that may be NaN or infinite (JSON has neither): finite values are
/// numbers (exact: serde_json round-trips floats), the others strings.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(v) => Ok(Num(v)),
            Raw::Text(t) => match t.as_str() {
                "NaN" => Ok(Num(f64::NAN)),
                "inf" => Ok(Num(f64::INFINITY)),
                "-inf" => Ok(Num(f64::NEG_INFINITY)),
                _ => Err(serde::de::Error::custom(format!("`{t}` is not a number"))),
            },
        }
    }
}

type MetricList = Vec<(String, Num)>;

fn to_list(m: &Metrics) -> MetricList {
    m.iter().map(|(n, v)| (n.to_string(), Num(v))).collect()
}

fn from_list(l: &MetricList) -> Metrics {
    let mut m = Metrics::new();
    for (n, v) in l {
        m.set(n.clone(), v.0);
    }
    m
}

fn log_to_list(log: &StepLog) -> Vec<(usize, MetricList)> {
    log.iter().map(|(s, m)| (*s, to_list(m))).collect()
}

fn log_from_list(l: &[(usize, MetricList)]) -> StepLog {
    l.iter().map(|(s, m)| (*s, from_list(m))).collect()
}

/// What a run has judged so far, beside its step log.
#[derive(Debug, Clone, Default)]
pub struct Evaluated {
    pub eval_steps: Vec<usize>,
    pub samples: Vec<SampleRecord>,
    /// Seconds spent on the run before this point (resumed runs add theirs).
    pub seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    run: String,
    seed: u64,
    step: usize,
    seconds: f64,
    nonfinite_steps: usize,
    optimizer_steps: u64,
    proposal: bool,
    log: Vec<(usize, MetricList)>,
    eval_steps: Vec<usize>,
    samples: Vec<SampleRecord>,
}

/// Saves `policy` at `at` with the evaluations so far into `dir`.
pub fn save(
    dir: &Path,
    run: &str,
    seed: u64,
    policy: &dyn Policy,
    at: &Snapshot,
    evaluated: &Evaluated,
) -> anyhow::Result<()> {
    let state = StateFile {
        format: FORMAT.into(),
        run: run.into(),
        seed,
        step: at.step,
        seconds: evaluated.seconds,
        nonfinite_steps: at.nonfinite_steps,
        optimizer_steps: at.optimizer_steps,
        proposal: at.proposal.is_some(),
        log: log_to_list(at.log),
        eval_steps: evaluated.eval_steps.clone(),
        samples: evaluated.samples.clone(),
    };
    make_parent(dir)?;
    write_dir_atomic(dir, |tmp| {
        policy.var_store().save(tmp.join("model.safetensors"))?;
        Tensor::write_safetensors(&at.optimizer_state, tmp.join("optimizer.safetensors"))?;
        if let Some(q) = at.proposal {
            q.var_store().save(tmp.join("proposal.safetensors"))?;
        }
        write_atomic(
            &tmp.join("state.json"),
            serde_json::to_string(&state)?.as_bytes(),
        )
    })
}

fn make_parent(dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().expect("checkpoint dirs have parents");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

/// A mid-run checkpoint, read back.
pub struct Restored {
    pub progress: Progress,
    pub evaluated: Evaluated,
}

/// Reads the mid-run checkpoint in `dir` (`None` if there is none), loading
/// the policy's weights into `policy` and the proposal's into one built by
/// `new_proposal`.
pub fn load(
    dir: &Path,
    run: &str,
    seed: u64,
    policy: &mut dyn Policy,
    new_proposal: impl FnOnce() -> anyhow::Result<Box<dyn Policy>>,
) -> anyhow::Result<Option<Restored>> {
    let file = dir.join("state.json");
    if !file.is_file() {
        return Ok(None);
    }
    let read = || -> anyhow::Result<Restored> {
        let state: StateFile = serde_json::from_slice(&std::fs::read(&file)?)?;
        anyhow::ensure!(
            state.format == FORMAT && state.run == run && state.seed == seed,
            "written for run `{}` seed {} in format `{}`, not run `{run}` seed {seed} in `{FORMAT}`",
            state.run,
            state.seed,
            state.format
        );
        policy
            .var_store_mut()
            .load(dir.join("model.safetensors"))
            .context("loading the policy")?;
        let proposal = if state.proposal {
            let mut q = new_proposal()?;
            q.var_store_mut()
                .load(dir.join("proposal.safetensors"))
                .context("loading the proposal")?;
            Some(q)
        } else {
            None
        };
        let optimizer_state = Tensor::read_safetensors(dir.join("optimizer.safetensors"))
            .context("loading the optimizer state")?;
        Ok(Restored {
            progress: Progress {
                step: state.step,
                log: log_from_list(&state.log),
                nonfinite_steps: state.nonfinite_steps,
                stopped: false,
                optimizer_steps: state.optimizer_steps,
                optimizer_state,
                proposal,
            },
            evaluated: Evaluated {
                eval_steps: state.eval_steps,
                samples: state.samples,
                seconds: state.seconds,
            },
        })
    };
    read()
        .with_context(|| format!("reading the checkpoint {}", dir.display()))
        .map(Some)
}

/// A finished run (or the prior's evaluation) at one seed: what the results
/// are made of.
#[derive(Debug, Clone)]
pub struct Finished {
    pub record: RunRecord,
    pub samples: Vec<SampleRecord>,
    pub log: StepLog,
    /// The final evaluation's metrics (the summary row).
    pub metrics: Metrics,
}

#[derive(Serialize, Deserialize)]
struct FinishedFile {
    format: String,
    record: RunRecord,
    samples: Vec<SampleRecord>,
    log: Vec<(usize, MetricList)>,
    metrics: MetricList,
}

/// Replaces the run's checkpoint by its final form: the aligned weights (when
/// there are any) and `finished.json`.
pub fn save_finished(
    dir: &Path,
    policy: Option<&dyn Policy>,
    finished: &Finished,
) -> anyhow::Result<()> {
    let file = FinishedFile {
        format: FORMAT.into(),
        record: finished.record.clone(),
        samples: finished.samples.clone(),
        log: log_to_list(&finished.log),
        metrics: to_list(&finished.metrics),
    };
    make_parent(dir)?;
    write_dir_atomic(dir, |tmp| {
        if let Some(p) = policy {
            p.var_store().save(tmp.join("model.safetensors"))?;
            // A LoRA policy's PEFT adapter (and merged model) beside it.
            p.export(tmp)?;
        }
        write_atomic(
            &tmp.join("finished.json"),
            serde_json::to_string(&file)?.as_bytes(),
        )
    })
}

/// The finished run in `dir`, if it finished.
pub fn load_finished(dir: &Path) -> anyhow::Result<Option<Finished>> {
    let path = dir.join("finished.json");
    if !path.is_file() {
        return Ok(None);
    }
    let read = || -> anyhow::Result<Finished> {
        let f: FinishedFile = serde_json::from_slice(&std::fs::read(&path)?)?;
        anyhow::ensure!(f.format == FORMAT, "format `{}`, not `{FORMAT}`", f.format);
        Ok(Finished {
            record: f.record,
            samples: f.samples,
            log: log_from_list(&f.log),
            metrics: from_list(&f.metrics),
        })
    };
    read()
        .with_context(|| format!("reading {}", path.display()))
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_round_trip_with_non_finite_values() {
        let mut m = Metrics::new();
        for (i, v) in [
            0.1 + 0.2,
            f64::NAN,
            f64::INFINITY,
            -f64::INFINITY,
            -0.0,
            1e-310,
        ]
        .into_iter()
        .enumerate()
        {
            m.set(format!("m{i}"), v);
        }
        let json = serde_json::to_string(&to_list(&m)).unwrap();
        let back = from_list(&serde_json::from_str(&json).unwrap());
        for ((a, x), (b, y)) in m.iter().zip(back.iter()) {
            assert_eq!(a, b);
            assert_eq!(x.to_bits(), y.to_bits(), "{a}: {x} became {y}");
        }
    }
}
