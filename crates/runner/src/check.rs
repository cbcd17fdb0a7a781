//! `runner MANIFEST --dry-run` / `runner check MANIFEST`: validate what can
//! be validated without training (the manifest, every plugin setting and
//! path, the tokenizer, the task's data files and formats) and print the
//! plan with an estimate of its work.

use std::fmt::Write;

use align_core::manifest::Manifest;
use align_core::{Candidates, TaskContext};
use anyhow::Context;

/// The plan of `manifest` as text; an error if something would fail.
pub fn check(manifest: &Manifest, stage_lines: &[String]) -> anyhow::Result<String> {
    let mut out = String::new();
    let w = &mut out;
    writeln!(
        w,
        "experiment `{}` ({})",
        manifest.name,
        manifest.path.display()
    )?;
    for line in stage_lines {
        writeln!(w, "  stage: {line}")?;
    }
    if let Some(sft) = &manifest.sft {
        writeln!(
            w,
            "  stage: SFT of the base model on gold outputs, {} epoch(s), lr {}, batch {} (cached by a hash of weights, data and settings)",
            sft.epochs, sft.lr, sft.batch_size
        )?;
    }
    let codec = manifest
        .model
        .value
        .codec()
        .context("loading the model's tokenizer")?;
    let task = manifest
        .task
        .value
        .build(&TaskContext {
            seed: manifest.seed,
            codec: codec.clone(),
        })
        .context("building the task (its data files)")?;
    let train = task.train_prompts().len();
    let held_out = task.eval_prompts().len();
    let eval_prompts = manifest.eval.prompts.unwrap_or(held_out).min(held_out);
    writeln!(
        w,
        "  task `{}`: {train} training prompts, {held_out} held-out ({} with gold), ≤ {} new tokens",
        manifest.task.plugin,
        if task.eval_references().is_some() { "all" } else { "none" },
        task.max_new_tokens()
    )?;
    writeln!(
        w,
        "  model `{}`{}; reward `{}`; goodness `{}`",
        manifest.model.plugin,
        if codec.is_some() {
            " with its tokenizer"
        } else {
            ""
        },
        manifest.reward.plugin,
        manifest.goodness.plugin
    )?;
    if let Some(s) = &manifest.sampler {
        writeln!(
            w,
            "  training samples drawn on {} (`[sampler.{}]`; held-out samples in process)",
            s.value.describe(),
            s.plugin
        )?;
    }
    let seeds = manifest.seeds.len();
    let per_step_prompts = manifest
        .train
        .prompts_per_step
        .unwrap_or(train)
        .min(train.max(1));
    let max_new = task.max_new_tokens() as usize;
    let mut train_tokens = 0usize;
    writeln!(w, "  runs (each at {seeds} seed(s): {:?}):", manifest.seeds)?;
    for run in &manifest.runs {
        let plan = run.estimator.value.plan();
        let sampled: i64 = plan
            .candidates
            .iter()
            .filter(|c| matches!(c, Candidates::Sample { .. }))
            .map(Candidates::count)
            .sum();
        let tokens = run.steps * per_step_prompts * sampled as usize * max_new;
        train_tokens += tokens * seeds;
        let refresh = plan
            .refresh_every
            .map(|k| format!(", proposal refreshed every {k} steps"))
            .unwrap_or_default();
        writeln!(
            w,
            "    {} ({}): {} steps × {per_step_prompts} prompts × {sampled} samples{refresh}, ≤ {tokens} sampled tokens",
            run.name, run.estimator.plugin, run.steps
        )?;
    }
    let points: usize = manifest
        .runs
        .iter()
        .map(|r| match manifest.train.eval_every {
            0 => 1,
            k => r.steps.div_ceil(k).max(1),
        })
        .sum::<usize>()
        + 1; // the prior
    let judged = points * seeds * eval_prompts * manifest.eval.samples as usize;
    let evaluators: Vec<&str> = manifest
        .evaluators
        .iter()
        .map(|e| e.plugin.as_str())
        .collect();
    writeln!(
        w,
        "  evaluation: {points} policy evaluation point(s) × {seeds} seed(s) × {eval_prompts} prompts × {} sample(s) = {judged} judged completions, by {}",
        manifest.eval.samples,
        if evaluators.is_empty() { "no evaluator".to_string() } else { evaluators.join(", ") }
    )?;
    writeln!(
        w,
        "  work: ≤ {train_tokens} sampled tokens in training, ≤ {} in evaluation",
        judged * max_new
    )?;
    writeln!(w, "OK: nothing was trained (--dry-run)")?;
    Ok(out)
}
