//! What a run leaves in `results/<experiment>/`, and what every table, plot
//! and report is recomputed from (`runner tables`):
//!
//! - `runs.json` ([`RunsFile`]): one [`RunRecord`] per trained policy and
//!   seed (plus the prior and reference rows): timings, run-level metrics,
//!   the names of its per-completion columns and its evaluation steps;
//! - `samples/<run>.jsonl` ([`SampleRecord`]): every judged completion of
//!   that run, at every evaluation step and seed: prompt, response, gold and
//!   each column's value (a judge's verdict, the reward, the log-ratio);
//! - `steps/<run>.csv`: the training metrics of each step (`step`, `seed`, …);
//! - `manifest.resolved.toml`: the manifest with every default filled in.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// `runs.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsFile {
    pub experiment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where it ran: CPU model, threads, device (floats differ across machines).
    pub machine: String,
    /// The manifest's training seeds.
    pub seeds: Vec<u64>,
    pub rows: Vec<RunRecord>,
}

/// One row of the summary before aggregation: a run at one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run name as in the manifest (`prior` for the untrained model; a
    /// reference row such as `exact posterior` has `estimator = "-"`).
    pub run: String,
    pub estimator: String,
    /// Training seed (`None` for reference rows that do not depend on one).
    pub seed: Option<u64>,
    pub steps: usize,
    pub seconds: f64,
    /// Run-level metrics in column order (`null` in JSON for NaN).
    pub metrics: Vec<(String, Option<f64>)>,
    /// Per-completion columns in order, read from `samples` (empty if none).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Steps at which the policy was evaluated (the last is the final one).
    #[serde(default)]
    pub eval_steps: Vec<usize>,
    /// `samples/<run>.jsonl`, relative to the experiment directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<String>,
}

/// One line of `samples/<run>.jsonl`: a judged completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub run: String,
    pub seed: Option<u64>,
    /// Training step at which the policy was evaluated (0: before training).
    pub step: usize,
    /// Index of the held-out prompt (completions of one prompt share it).
    pub prompt_index: usize,
    /// Which of that prompt's completions (0-based).
    pub sample: usize,
    /// Text when the task has it (token ids otherwise, space-separated).
    pub prompt: String,
    pub response: String,
    pub gold: Option<String>,
    /// Each column's value for this completion (`win_<judge>`: 1 / ½ / 0).
    pub columns: BTreeMap<String, Option<f64>>,
}

/// Reads `runs.json` in `dir`.
pub fn read_runs(dir: &Path) -> Result<RunsFile, String> {
    let path = dir.join("runs.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads every record of a samples file.
pub fn read_samples(path: &Path) -> Result<Vec<SampleRecord>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// A file-system-safe name for a run or judge: `"BRAIn (no baseline)"` →
/// `"brain-no-baseline"` (what `samples/<run>.jsonl` and the plots use).
pub fn slug(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// `samples/<slug>.jsonl`: where a run's judged samples go, relative to the
/// experiment directory (the value of [`RunRecord::samples`]).
pub fn samples_path(run: &str) -> String {
    format!("samples/{}.jsonl", slug(run))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory (so the rename cannot cross file systems), then a rename, so a
/// reader never sees half a file. Refuses to replace anything but a regular
/// file (a directory, a symlink, a FIFO someone put there).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_file(),
            "{} exists and is not a regular file; not replacing it",
            path.display()
        );
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `runs.json` in `dir` (atomically, pretty-printed so diffs of
/// committed results read well).
pub fn write_runs(dir: &Path, runs: &RunsFile) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(runs)?;
    text.push('\n');
    write_atomic(&dir.join("runs.json"), text.as_bytes())
}

/// The JSONL text of `records`, one per line.
pub fn samples_jsonl(records: &[SampleRecord]) -> anyhow::Result<String> {
    let mut out = String::new();
    for r in records {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    Ok(out)
}

/// Writes a samples file (`dir.join(rel)`, e.g. [`samples_path`]) atomically.
pub fn write_samples(dir: &Path, rel: &str, records: &[SampleRecord]) -> anyhow::Result<()> {
    write_atomic(&dir.join(rel), samples_jsonl(records)?.as_bytes())
}

/// Collects a run's samples as they are judged (every eval step, every
/// seed) and writes the file once at the end, atomically: a crashed run
/// leaves the previous file, not a truncated one.
#[derive(Debug)]
pub struct SamplesWriter {
    path: std::path::PathBuf,
    text: String,
}

impl SamplesWriter {
    /// A writer for `dir.join(rel)`.
    pub fn new(dir: &Path, rel: &str) -> Self {
        SamplesWriter {
            path: dir.join(rel),
            text: String::new(),
        }
    }

    pub fn push(&mut self, record: &SampleRecord) -> anyhow::Result<()> {
        self.text.push_str(&serde_json::to_string(record)?);
        self.text.push('\n');
        Ok(())
    }

    /// Writes what was pushed (also when nothing was: an empty file).
    pub fn finish(self) -> anyhow::Result<()> {
        write_atomic(&self.path, self.text.as_bytes())
    }
}

/// An experiment directory read into memory: `runs.json` and every samples
/// file its rows name (each read once, however many seeds share it).
#[derive(Debug, Clone)]
pub struct Experiment {
    pub dir: std::path::PathBuf,
    pub runs: RunsFile,
    /// Records by the `samples` path of the rows, relative to `dir`.
    pub samples: BTreeMap<String, Vec<SampleRecord>>,
    /// `manifest.resolved.toml`, when there is one.
    pub manifest: Option<String>,
}

impl Experiment {
    pub fn load(dir: &Path) -> anyhow::Result<Experiment> {
        let runs = read_runs(dir).map_err(anyhow::Error::msg)?;
        let mut samples = BTreeMap::new();
        for row in &runs.rows {
            if let Some(rel) = &row.samples {
                if !samples.contains_key(rel) {
                    let records = read_samples(&dir.join(rel)).map_err(anyhow::Error::msg)?;
                    samples.insert(rel.clone(), records);
                }
            }
        }
        let manifest_path = dir.join("manifest.resolved.toml");
        let manifest = if manifest_path.is_file() {
            Some(
                std::fs::read_to_string(&manifest_path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", manifest_path.display()))?,
            )
        } else {
            None
        };
        Ok(Experiment {
            dir: dir.to_path_buf(),
            runs,
            samples,
            manifest,
        })
    }

    /// The records of one row (its run and seed), in file order.
    pub fn records_of(&self, row: &RunRecord) -> Vec<&SampleRecord> {
        row.samples
            .as_ref()
            .and_then(|rel| self.samples.get(rel))
            .map(|all| {
                all.iter()
                    .filter(|r| r.run == row.run && r.seed == row.seed)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The final evaluation step of a row: the last of its `eval_steps`, else
/// the latest step among its records.
pub fn final_step(row: &RunRecord, records: &[&SampleRecord]) -> Option<usize> {
    row.eval_steps
        .last()
        .copied()
        .or_else(|| records.iter().map(|r| r.step).max())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: usize) -> SampleRecord {
        SampleRecord {
            run: "BRAIn".into(),
            seed: Some(1),
            step,
            prompt_index: 3,
            sample: 0,
            prompt: "say \"<b>\" & go".into(),
            response: "ok\nfine".into(),
            gold: None,
            columns: [("win_llm".to_string(), Some(0.5)), ("kl".into(), None)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn runs_and_samples_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let runs = RunsFile {
            experiment: "e".into(),
            description: None,
            machine: "m".into(),
            seeds: vec![1, 2],
            rows: vec![RunRecord {
                run: "BRAIn".into(),
                estimator: "brain".into(),
                seed: Some(1),
                steps: 10,
                seconds: 1.5,
                metrics: vec![("loss".into(), Some(0.25)), ("ess".into(), None)],
                columns: vec!["win_llm".into(), "kl".into()],
                eval_steps: vec![0, 10],
                samples: Some(samples_path("BRAIn")),
            }],
        };
        write_runs(dir.path(), &runs).unwrap();
        assert_eq!(read_runs(dir.path()).unwrap(), runs);
        let mut w = SamplesWriter::new(dir.path(), &samples_path("BRAIn"));
        w.push(&record(0)).unwrap();
        w.push(&record(10)).unwrap();
        w.finish().unwrap();
        let back = read_samples(&dir.path().join("samples/brain.jsonl")).unwrap();
        assert_eq!(back, vec![record(0), record(10)]);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("samples"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn atomic_write_refuses_non_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("summary.csv");
        std::fs::create_dir(&target).unwrap();
        let err = write_atomic(&target, b"x").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(slug("BRAIn (no baseline)"), "brain-no-baseline");
    }
}
