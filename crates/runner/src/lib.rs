//! The pipeline behind `runner MANIFEST.toml`: build the plugins a manifest
//! names, train one policy per run, evaluate, and write `results/<name>/`.

pub mod report;
pub mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use align_core::manifest::Manifest;
use align_core::policy::frozen_copy;
use align_core::{EvalContext, Metrics, ModelContext, Policy, TaskContext};
use anyhow::Context;

// Links every plugin crate so its `inventory` registrations survive: build.rs
// writes one `use <crate> as _;` per dependency whose Cargo.toml declares
// `[package.metadata.brain-rs] plugin = true`. Adding a plugin crate = one
// dependency line in crates/runner/Cargo.toml.
include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// One row of the summary table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub estimator: String,
    pub steps: usize,
    pub seconds: f64,
    pub metrics: Metrics,
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub out_dir: PathBuf,
}

/// Runs every run of `manifest`, writing results into `out_dir`.
pub fn run(manifest: &Manifest, out_dir: &Path, progress: bool) -> anyhow::Result<Outcome> {
    if let Some(t) = manifest.threads {
        tch::set_num_threads(t);
    }
    let device = manifest.device.resolve()?;
    // The model comes first: a text task tokenizes its prompts with the model's
    // tokenizer, while a toy task tells the model its vocabulary through its spec.
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
    let evaluate = |policy: &dyn Policy| -> anyhow::Result<Metrics> {
        let mut m = Metrics::new();
        for e in &manifest.evaluators {
            m.extend(
                &e.value
                    .evaluate(&eval_ctx, policy)
                    .with_context(|| format!("evaluator `{}`", e.plugin))?,
            );
        }
        Ok(m)
    };

    let mut rows = Vec::new();
    for e in &manifest.evaluators {
        for (name, metrics) in e.value.reference_rows(&eval_ctx)? {
            rows.push(Row {
                name,
                estimator: "-".into(),
                steps: 0,
                seconds: 0.0,
                metrics,
            });
        }
    }
    rows.push(Row {
        name: "prior".into(),
        estimator: "-".into(),
        steps: 0,
        seconds: 0.0,
        metrics: evaluate(prior.as_ref())?,
    });

    for run in &manifest.runs {
        let started = Instant::now();
        let mut policy = frozen_copy(manifest.model.value.as_ref(), &model_ctx, prior.as_ref())?;
        policy.var_store_mut().unfreeze();
        let setup = train::Setup {
            manifest,
            run,
            task: task.as_ref(),
            model_ctx: &model_ctx,
            prior: prior.as_ref(),
            reward: reward.as_ref(),
            codec: codec.as_deref(),
        };
        let log = train::train(&setup, policy.as_mut(), &evaluate, progress)
            .with_context(|| format!("training run `{}`", run.name))?;
        let metrics = evaluate(policy.as_ref())?;
        report::write_steps(out_dir, &run.name, &log)?;
        rows.push(Row {
            name: run.name.clone(),
            estimator: run.estimator.plugin.clone(),
            steps: run.steps,
            seconds: started.elapsed().as_secs_f64(),
            metrics,
        });
    }
    align_core::io::write_atomic(
        &out_dir.join("manifest.resolved.toml"),
        manifest.resolved_toml().as_bytes(),
    )?;
    report::write_summary(out_dir, &rows)?;
    Ok(Outcome {
        rows,
        out_dir: out_dir.to_path_buf(),
    })
}
