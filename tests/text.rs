//! The text pipeline end to end on a tiny random Llama (tests/fixtures): the
//! sentiment task tokenized with the model's tokenizer, samples decoded for
//! the lexicon reward, BRAIn and DPO steps, and held-out reward statistics.
//! Needs the sentiment data that `cargo xtask setup` downloads.

#[path = "common/data.rs"]
mod data;

use std::path::Path;

use align_core::manifest::Manifest;
use data::data_present;

#[test]
fn sentiment_on_a_tiny_llama() {
    if !data_present() {
        eprintln!(
            "SKIPPED sentiment_on_a_tiny_llama: sentiment data not found; run `cargo xtask setup`"
        );
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/tiny-sentiment.toml");
    let manifest = Manifest::load(&path, &["device=cpu".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = runner::run(&manifest, &dir.path().join("out"), false).unwrap();
    let names: Vec<&str> = outcome.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["prior", "brain", "dpo"]);
    for row in &outcome.rows {
        let win = row.metrics.get("win_train").expect("win rate");
        assert!((0.0..=1.0).contains(&win), "{}: win rate {win}", row.name);
        let length = row.metrics.get("length").unwrap();
        assert!(
            length > 0.0 && length <= 6.0,
            "{}: length {length}",
            row.name
        );
        assert!(row.metrics.get("reward").unwrap().abs() <= 1.0);
        assert!(row.metrics.get("kl").is_some());
    }
    // The prior's Monte-Carlo KL to itself is zero up to float rounding (the
    // sampler's KV-cache log-probs against a full forward pass).
    let self_kl = outcome.rows[0].metrics.get("kl").unwrap();
    assert!(self_kl.abs() < 1e-4, "prior's KL to itself {self_kl}");
    let steps = std::fs::read_to_string(dir.path().join("out/steps/brain.csv")).unwrap();
    assert_eq!(steps.lines().count(), 3, "{steps}");
    // Every judged completion is kept: 4 held-out prompts × 2 samples per row.
    let samples = std::fs::read_to_string(dir.path().join("out/samples/brain.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 8, "{samples}");
    assert!(dir.path().join("out/report.html").is_file());
}

/// DPO's "direct" mode trains on a preference file's pairs (here the HH-RLHF
/// fixture, through the tiny Llama's tokenizer): the loss starts at log 2
/// (policy = reference) and falls as the policy learns to prefer `chosen`.
#[test]
fn direct_dpo_learns_the_dataset_preferences() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let manifest = format!(
        r#"name = "direct"
seed = 1
device = "cpu"

[task.preference-file]
format = "hh-rlhf"
path = "{}"
split = {{ validation = 0.0, test = 0.0 }}

[model.hf]
path = "{}"

[reward.lexicon]

[goodness.bt-exp]

[train]
steps = 40
lr = 1e-2

[[runs]]
name = "dpo-direct"
[runs.estimator.dpo]
source = "direct"
beta = 1.0
"#,
        fixtures.join("data/hh-rlhf-clean.jsonl.gz").display(),
        fixtures.join("tiny-llama").display()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, manifest).unwrap();
    let manifest = Manifest::load(&path, &[]).unwrap();
    runner::run(&manifest, &dir.path().join("out"), false).unwrap();
    let steps = std::fs::read_to_string(dir.path().join("out/steps/dpo-direct.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(steps.as_bytes());
    let loss_col = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "loss")
        .unwrap();
    let losses: Vec<f64> = reader
        .records()
        .map(|r| r.unwrap()[loss_col].parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 40);
    assert!(
        (losses[0] - std::f64::consts::LN_2).abs() < 1e-4,
        "first loss {}",
        losses[0]
    );
    let last = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(
        last < 0.2,
        "DPO did not learn the preferences: losses {losses:?}"
    );
}

/// A trained reward model as the experiment's reward: `[reward.hf-rm]` with
/// the tiny `LlamaForSequenceClassification` scores the decoded samples.
#[test]
fn hf_reward_model_scores_the_samples_of_a_run() {
    if !data_present() {
        eprintln!("SKIPPED hf_reward_model_scores_the_samples_of_a_run: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fixtures = root.join("tests/fixtures").canonicalize().unwrap();
    let text = std::fs::read_to_string(root.join("experiments/tiny-sentiment.toml"))
        .unwrap()
        .replace(
            "[reward.lexicon]",
            &format!(
                "[reward.hf-rm]\npath = \"{}\"",
                fixtures.join("tiny-llama-rm").display()
            ),
        )
        .replace(
            "../tests/fixtures/tiny-llama",
            &fixtures.join("tiny-llama").display().to_string(),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rm-sentiment.toml");
    std::fs::write(&path, text).unwrap();
    let manifest = Manifest::load(&path, &["device=cpu".into()]).unwrap();
    let outcome = runner::run(&manifest, &dir.path().join("out"), false).unwrap();
    for row in &outcome.rows {
        let r = row.metrics.get("reward").unwrap();
        // The random head's rewards are far from the lexicon's [-1, 1] zeros.
        assert!(r.is_finite() && r != 0.0, "{}: reward {r}", row.name);
    }
    // Asking for two labels of the one-label checkpoint fails naming both.
    let bad = Manifest::load(
        &path,
        &["device=cpu".into(), "reward.hf-rm.num_labels=2".into()],
    )
    .unwrap();
    let err = format!(
        "{:#}",
        runner::run(&bad, &dir.path().join("bad"), false)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("declares 1 label(s)") && err.contains("num_labels = 2"),
        "{err}"
    );
}
