//! `steps/<run>.csv`: the training metrics of every step at every seed,
//! written atomically. The summary, plots and report are `align_report`'s.

use std::path::Path;

use align_core::io::write_atomic;

use crate::train::StepLog;

/// Metric names in order of first appearance across `metrics`.
fn columns<'a>(metrics: impl Iterator<Item = &'a align_core::Metrics>) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for m in metrics {
        for (name, _) in m.iter() {
            if !cols.iter().any(|c| c == name) {
                cols.push(name.to_string());
            }
        }
    }
    cols
}

pub use align_report::format::slug;

/// Writes `steps/<run>.csv`: one line per step and seed.
pub fn write_steps(out_dir: &Path, run: &str, logs: &[(u64, StepLog)]) -> anyhow::Result<()> {
    let cols = columns(logs.iter().flat_map(|(_, l)| l.iter().map(|(_, m)| m)));
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["step".to_string(), "seed".to_string()];
    header.extend(cols.iter().cloned());
    w.write_record(&header)?;
    for (seed, log) in logs {
        for (step, m) in log {
            let mut r = vec![step.to_string(), seed.to_string()];
            r.extend(
                cols.iter()
                    .map(|c| m.get(c).map(|v| v.to_string()).unwrap_or_default()),
            );
            w.write_record(&r)?;
        }
    }
    write_atomic(
        &out_dir.join("steps").join(format!("{}.csv", slug(run))),
        &w.into_inner()?,
    )
}
