//! Result files: `summary.csv`, `summary.md` and `steps/<run>.csv`, each
//! written atomically.

use std::path::Path;

use align_core::io::write_atomic;

use crate::train::StepLog;
use crate::Row;

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

fn csv_bytes(header: &[String], rows: &[Vec<String>]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for r in rows {
        w.write_record(r)?;
    }
    Ok(w.into_inner()?)
}

/// A file-system-safe name for a run.
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
    // "BRAIn (no baseline)" → "brain-no-baseline"
    mapped
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

pub fn write_steps(out_dir: &Path, run: &str, log: &StepLog) -> anyhow::Result<()> {
    let cols = columns(log.iter().map(|(_, m)| m));
    let mut header = vec!["step".to_string()];
    header.extend(cols.iter().cloned());
    let rows: Vec<Vec<String>> = log
        .iter()
        .map(|(step, m)| {
            let mut r = vec![step.to_string()];
            r.extend(
                cols.iter()
                    .map(|c| m.get(c).map(|v| v.to_string()).unwrap_or_default()),
            );
            r
        })
        .collect();
    write_atomic(
        &out_dir.join("steps").join(format!("{}.csv", slug(run))),
        &csv_bytes(&header, &rows)?,
    )
}

fn summary_table(rows: &[Row]) -> (Vec<String>, Vec<Vec<String>>, Vec<Vec<String>>) {
    let cols = columns(rows.iter().map(|r| &r.metrics));
    let mut header: Vec<String> = ["run", "estimator", "steps", "seconds"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(cols.iter().cloned());
    let exact = |r: &Row| {
        let mut v = vec![
            r.name.clone(),
            r.estimator.clone(),
            r.steps.to_string(),
            format!("{:.3}", r.seconds),
        ];
        v.extend(
            cols.iter()
                .map(|c| r.metrics.get(c).map(|x| x.to_string()).unwrap_or_default()),
        );
        v
    };
    let pretty = |r: &Row| {
        let mut v = vec![
            r.name.clone(),
            r.estimator.clone(),
            r.steps.to_string(),
            format!("{:.1}", r.seconds),
        ];
        v.extend(cols.iter().map(|c| {
            r.metrics
                .get(c)
                .map(|x| format!("{x:.4}"))
                .unwrap_or_default()
        }));
        v
    };
    (
        header,
        rows.iter().map(exact).collect(),
        rows.iter().map(pretty).collect(),
    )
}

/// The summary as a Markdown table (what `runner` prints).
pub fn markdown(rows: &[Row]) -> String {
    let (header, _, cells) = summary_table(rows);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", parts.join(" | "))
    };
    let mut out = line(&header);
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i < 2 {
                "-".repeat(*w)
            } else {
                format!("{}:", "-".repeat(w - 1))
            }
        })
        .collect();
    out.push_str(&format!("| {} |\n", rule.join(" | ")));
    for r in &cells {
        out.push_str(&line(r));
    }
    out
}

pub fn write_summary(out_dir: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let (header, exact, _) = summary_table(rows);
    write_atomic(&out_dir.join("summary.csv"), &csv_bytes(&header, &exact)?)?;
    write_atomic(&out_dir.join("summary.md"), markdown(rows).as_bytes())
}
