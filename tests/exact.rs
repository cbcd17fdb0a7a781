//! End to end on the shipped exact-posterior manifest: BRAIn gets close to the
//! exact posterior, results are written, and CPU runs are reproducible.

use std::path::{Path, PathBuf};

use align_core::manifest::Manifest;

fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/exact.toml")
}

fn metric(rows: &[runner::Row], run: &str, name: &str) -> f64 {
    rows.iter()
        .find(|r| r.name == run)
        .and_then(|r| r.metrics.get(name))
        .unwrap_or_else(|| panic!("no {name} for {run}"))
}

#[test]
fn brain_approaches_the_exact_posterior_and_runs_reproduce() {
    let manifest = Manifest::load(&manifest_path(), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = runner::run(&manifest, &dir.path().join("a"), false).unwrap();
    let prior = metric(&first.rows, "prior", "kl_post_policy");
    let brain = metric(&first.rows, "BRAIn", "kl_post_policy");
    assert!(
        prior > 0.1,
        "the prior should be far from the posterior, KL = {prior}"
    );
    assert!(
        brain < 0.1 * prior,
        "BRAIn KL(post‖policy) = {brain}, prior's = {prior}"
    );
    for f in [
        "summary.csv",
        "summary.md",
        "manifest.resolved.toml",
        "steps/brain.csv",
        "steps/dpo-sft.csv",
    ] {
        assert!(dir.path().join("a").join(f).is_file(), "{f} missing");
    }
    // The resolved manifest loads again and runs the same experiment.
    let resolved = Manifest::load(&dir.path().join("a/manifest.resolved.toml"), &[]).unwrap();
    let second = runner::run(&resolved, &dir.path().join("b"), false).unwrap();
    for (a, b) in first.rows.iter().zip(&second.rows) {
        assert_eq!(a.name, b.name);
        assert_eq!(
            a.metrics, b.metrics,
            "run {} differs between identical runs",
            a.name
        );
    }
    let steps_a = std::fs::read_to_string(dir.path().join("a/steps/brain.csv")).unwrap();
    let steps_b = std::fs::read_to_string(dir.path().join("b/steps/brain.csv")).unwrap();
    assert_eq!(steps_a, steps_b);
}

/// RSO and SLiC-HF go through the same loop: RSO trains on its accepted
/// samples, which have higher reward than the candidates they came from, and
/// SLiC-HF receives the reference log-probs it regularises with.
#[test]
fn every_estimator_trains_through_the_loop() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/estimators.toml");
    let manifest = Manifest::load(
        &path,
        &["train.steps=30".into(), "train.eval_every=0".into()],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = runner::run(&manifest, dir.path(), false).unwrap();
    assert_eq!(outcome.rows.len(), 2 + manifest.runs.len());
    let steps = std::fs::read_to_string(dir.path().join("steps/rso.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(steps.as_bytes());
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let (accepted, all) = (col("accepted_reward_mean"), col("reward_mean"));
    let (mut gain, mut rows) = (0.0, 0.0);
    for record in reader.records() {
        let r = record.unwrap();
        gain += r[accepted].parse::<f64>().unwrap() - r[all].parse::<f64>().unwrap();
        rows += 1.0;
    }
    assert!(
        gain / rows > 0.2,
        "accepted samples should out-score the candidates; mean gain {}",
        gain / rows
    );
    let slic = std::fs::read_to_string(dir.path().join("steps/slic-hf.csv")).unwrap();
    assert!(
        slic.lines().next().unwrap().contains("reference_nll"),
        "{slic}"
    );
}

/// Samples pooled from the prior and the refreshed proposal, weighted by the
/// mixture density, still bring BRAIn to the posterior.
#[test]
fn pooled_proposals_reach_the_posterior() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/ablation-proposal.toml");
    let manifest = Manifest::load(&path, &["train.eval_every=0".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = runner::run(&manifest, dir.path(), false).unwrap();
    let prior = metric(&outcome.rows, "prior", "kl_post_policy");
    let pooled = metric(
        &outcome.rows,
        "refresh 20, half from the prior",
        "kl_post_policy",
    );
    assert!(
        pooled < 0.05 * prior,
        "pooled KL(post‖policy) = {pooled}, prior's = {prior}"
    );
}
