//! `[sampler.server]` through the runner: `experiments/tiny-sentiment.toml`
//! draws its training samples on a stand-in vLLM server (on 127.0.0.1,
//! serving the same tiny Llama, with its true log-probs) and trains on them,
//! with the log-densities recomputed by the trainer; a server reporting
//! wrong log-probs stops the run with the server and both values named. With
//! proposal refreshes (`sglang-update-weights`), the stand-in loads each
//! exported HF directory with our loader and serves it: the trainer's
//! densities under its proposal then agree with the server's only if the
//! export is the proposal.

#[path = "common/data.rs"]
mod data;
#[path = "../crates/server-sampler/tests/common/mod.rs"]
mod standin;

use std::path::Path;

use align_core::manifest::Manifest;
use data::{data_present, root};
use standin::{tiny_llama, Action, Options, StandIn};

/// tiny-sentiment.toml in `dir` with a `[sampler.server]` table for `url`;
/// BRAIn draws from the prior (no proposal refreshes to serve).
fn manifest(dir: &Path, url: &str) -> Manifest {
    manifest_with(
        dir,
        url,
        "",
        &["runs.0.estimator.brain.refresh_every=0".into()],
    )
}

/// tiny-sentiment.toml in `dir` with a `[sampler.server]` table for `url`
/// (plus `server_keys`), and `overrides`.
fn manifest_with(dir: &Path, url: &str, server_keys: &str, overrides: &[String]) -> Manifest {
    let text = std::fs::read_to_string(root().join("experiments/tiny-sentiment.toml")).unwrap();
    let tiny = root()
        .join("tests/fixtures/tiny-llama")
        .canonicalize()
        .unwrap();
    let text = text.replace(
        "path = \"../tests/fixtures/tiny-llama\"",
        &format!("path = {:?}", tiny.display().to_string()),
    );
    let text = format!(
        "{text}\n[sampler.server]\nurls = [{url:?}]\nmodel = \"tiny-llama\"\nretries = 1\nbackoff_s = 0.01\n{server_keys}"
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    let mut all = vec!["device=cpu".into(), "train.sample_cache=\"memory\"".into()];
    all.extend_from_slice(overrides);
    Manifest::load(&path, &all).unwrap()
}

#[test]
fn a_manifest_trains_on_samples_drawn_on_a_server() {
    if !data_present() {
        eprintln!("SKIPPED: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    let server = StandIn::start(tiny_llama(), Options::default());
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &server.url);
    let resolved = m.resolved_toml();
    assert!(resolved.contains("[sampler.server]"), "{resolved}");
    let out = dir.path().join("out");
    let outcome = runner::run(&m, &out, false).unwrap();
    let names: Vec<&str> = outcome.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["prior", "brain", "dpo"]);
    // Every training step's draw went to the server: 2 steps × 2 prompts,
    // shared by BRAIn and DPO (both from the prior at the same seed).
    let asked: Vec<Vec<i64>> = server.completion_prompts().into_iter().flatten().collect();
    assert_eq!(asked.len(), 2 * 2 * 2, "{asked:?}");
    // Each step logs the servers' log-densities against the trainer's: the
    // stand-in reports the true ones (f32 rounding apart).
    for run in ["brain", "dpo"] {
        let mut csv = csv::Reader::from_path(out.join("steps").join(format!("{run}.csv"))).unwrap();
        let col = csv
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "server_logp_max_abs_diff")
            .expect("a server_logp_max_abs_diff column");
        let diffs: Vec<f64> = csv
            .records()
            .map(|r| r.unwrap()[col].parse().unwrap())
            .collect();
        assert_eq!(diffs.len(), 2, "{run}");
        assert!(
            diffs.iter().all(|d| (0.0..1e-3).contains(d)),
            "{run}: {diffs:?}"
        );
    }
}

#[test]
fn a_server_reporting_wrong_log_probs_stops_the_run() {
    if !data_present() {
        eprintln!("SKIPPED: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    let options = Options {
        behaviour: Box::new(|_, _| Action::Skew(0.3)),
        ..Options::default()
    };
    let server = StandIn::start(tiny_llama(), options);
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &server.url);
    let err = match runner::run(&m, &dir.path().join("out"), false) {
        Ok(_) => panic!("a server with skewed log-probs was believed"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&server.url), "{err}");
    assert!(err.contains("log-density"), "{err}");
}

/// BRAIn refreshing its proposal every step (a full fine-tune, large steps so
/// each refresh moves the densities), with SGLang-style reloads from disk.
fn refreshing(dir: &Path, url: &str) -> Manifest {
    let export = dir.join("exports");
    manifest_with(
        dir,
        url,
        &format!(
            "tolerance = 1e-3\ntolerance_per_token = 0.0\n\
             proposal = {{ proposal_model = \"proposal\", export_dir = {:?}, reload = \"sglang-update-weights\" }}\n",
            export.display().to_string()
        ),
        &[
            "train.steps=3".into(),
            "train.lr=0.05".into(),
            "runs.0.estimator.brain.refresh_every=1".into(),
            // BRAIn alone: DPO draws from the prior, which a reload replaced.
            "runs=[{name=\"brain\", estimator={brain={n=3, refresh_every=1}}}]".into(),
        ],
    )
}

#[test]
fn refreshed_proposals_are_served_from_their_exported_hf_directories() {
    if !data_present() {
        eprintln!("SKIPPED: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    let server = StandIn::start(tiny_llama(), Options::reloading());
    let dir = tempfile::tempdir().unwrap();
    let m = refreshing(dir.path(), &server.url);
    let out = dir.path().join("out");
    runner::run(&m, &out, false).unwrap();
    let loads: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.path == "/update_weights_from_disk")
        .map(|r| r.body["model_path"].as_str().unwrap().to_string())
        .collect();
    assert!(loads.len() >= 2, "refreshes reaching the server: {loads:?}");
    // The last export is an HF directory; the earlier ones, no longer
    // served, were removed.
    let (last, earlier) = loads.split_last().unwrap();
    let dir = Path::new(last);
    assert!(dir.join("config.json").is_file() && dir.join("tokenizer.json").is_file());
    assert!(
        earlier.iter().all(|d| !Path::new(d).exists()),
        "{earlier:?}"
    );
    // The server's log-densities match the trainer's proposal at every step
    // (tolerance 1e-3: a stale server would have stopped the run).
    let mut csv = csv::Reader::from_path(out.join("steps/brain.csv")).unwrap();
    let col = csv
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "server_logp_max_abs_diff")
        .unwrap();
    let diffs: Vec<f64> = csv
        .records()
        .map(|r| r.unwrap()[col].parse().unwrap())
        .collect();
    assert_eq!(diffs.len(), 3);
    assert!(diffs.iter().all(|d| (0.0..1e-3).contains(d)), "{diffs:?}");
}

/// The same run on a server that answers the reload but keeps its weights
/// stops at the first draw after a refresh, naming the server.
#[test]
fn a_server_that_keeps_its_old_weights_after_a_reload_stops_the_run() {
    if !data_present() {
        eprintln!("SKIPPED: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    let server = StandIn::start(tiny_llama(), Options::default());
    let dir = tempfile::tempdir().unwrap();
    let m = refreshing(dir.path(), &server.url);
    let err = match runner::run(&m, &dir.path().join("out"), false) {
        Ok(_) => panic!("a stale server was believed"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&server.url) && err.contains("log-density"),
        "{err}"
    );
}
