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
