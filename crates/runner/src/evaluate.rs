//! One evaluation point: draw the policy's held-out completions once (the
//! ranks of a data-parallel run share the drawing), let every evaluator
//! judge them, and keep each judged completion as a record for
//! `samples/<run>.jsonl` (what the tables are recomputed from).

use std::collections::BTreeMap;

use align_core::manifest::Manifest;
use align_core::{EvalContext, Evaluation, HeldOut, Metrics, Policy};
use align_report::format::SampleRecord;
use anyhow::Context;

/// What one evaluation found.
pub struct Judged {
    /// Run-level metrics and each column's plain mean (for logs and tests;
    /// the tables recompute means and intervals from `records`).
    pub metrics: Metrics,
    /// Column names in order.
    pub columns: Vec<String>,
    pub records: Vec<SampleRecord>,
}

/// Who is being evaluated, for the records.
pub struct Point<'a> {
    pub run: &'a str,
    pub seed: u64,
    pub step: usize,
}

/// Evaluates `policy` at `at`. Data parallel, every rank calls it: the
/// ranks share the held-out sampling ([`HeldOut::draw_shared`]), and rank 0
/// alone judges; the others get nothing back.
pub fn evaluate(
    manifest: &Manifest,
    ctx: &EvalContext,
    policy: &dyn Policy,
    at: &Point,
) -> anyhow::Result<Judged> {
    let comm = align_distributed::world();
    let needs_held_out = manifest.evaluators.iter().any(|e| e.value.needs_held_out());
    let held_out = if needs_held_out {
        let seed = at.seed.wrapping_add(manifest.eval.seed);
        HeldOut::draw_shared(ctx, policy, &manifest.eval, seed, comm)
            .context("drawing held-out completions")?
    } else {
        None
    };
    if !comm.is_root() {
        return Ok(Judged {
            metrics: Metrics::new(),
            columns: Vec::new(),
            records: Vec::new(),
        });
    }
    let mut all = Evaluation::default();
    for e in &manifest.evaluators {
        let found = e
            .value
            .evaluate(ctx, policy, held_out.as_ref())
            .with_context(|| format!("evaluator `{}`", e.plugin))?;
        for (name, _) in &found.columns {
            anyhow::ensure!(
                !all.columns.iter().any(|(n, _)| n == name),
                "evaluator `{}` writes the column `{name}`, which another evaluator wrote too: rename one of the judges",
                e.plugin
            );
        }
        if let Some(h) = &held_out {
            for (name, values) in &found.columns {
                anyhow::ensure!(
                    values.len() == h.len(),
                    "evaluator `{}`: column `{name}` has {} values for {} completions",
                    e.plugin,
                    values.len(),
                    h.len()
                );
            }
        }
        all.extend(found);
    }
    let mut metrics = all.metrics.clone();
    for (name, values) in &all.columns {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        metrics.set(
            name.clone(),
            finite.iter().sum::<f64>() / finite.len() as f64,
        );
    }
    let records = match &held_out {
        Some(h) => records(h, &all, at),
        None => Vec::new(),
    };
    Ok(Judged {
        metrics,
        columns: all.columns.iter().map(|(n, _)| n.clone()).collect(),
        records,
    })
}

fn ids_text(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(" ")
}

fn records(h: &HeldOut, all: &Evaluation, at: &Point) -> Vec<SampleRecord> {
    let completions = h.batch.completions();
    let gold_completions = h.gold.as_ref().map(|g| g.completions());
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    (0..h.len())
        .map(|i| {
            let p = h.batch.prompt_index[i];
            let sample = seen.entry(p).or_insert(0);
            let k = *sample;
            *sample += 1;
            let prompt = &h.prompts[p];
            let response = match &h.batch.texts {
                Some(t) => t[i].completion.clone(),
                None => ids_text(&completions[i]),
            };
            let gold = match (&h.gold, &gold_completions) {
                (Some(g), Some(ids)) => Some(match &g.texts {
                    Some(t) => t[p].completion.clone(),
                    None => ids_text(&ids[p]),
                }),
                _ => None,
            };
            SampleRecord {
                run: at.run.to_string(),
                seed: Some(at.seed),
                step: at.step,
                prompt_index: p,
                sample: k,
                prompt: prompt.text.clone().unwrap_or_else(|| ids_text(&prompt.ids)),
                response,
                gold,
                columns: all
                    .columns
                    .iter()
                    .map(|(n, v)| (n.clone(), v[i].is_finite().then_some(v[i])))
                    .collect(),
            }
        })
        .collect()
}
