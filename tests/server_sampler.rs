//! `[sampler.server]` through the runner: `experiments/tiny-sentiment.toml`
//! draws its training samples on a stand-in vLLM server (on 127.0.0.1,
//! serving the same tiny Llama, with its true log-probs) and trains on them,
//! with the log-densities recomputed by the trainer; a server reporting
//! wrong log-probs stops the run with the server and both values named.

#[path = "../crates/server-sampler/tests/common/mod.rs"]
mod standin;

use std::path::{Path, PathBuf};

use align_core::manifest::Manifest;
use standin::{Action, Options, StandIn};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data_present() -> bool {
    let dir = std::env::var_os("BRAIN_RS_DATA")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/brain-rs/data")));
    dir.is_some_and(|d| d.join("vaderSentiment-3.3.2.tar.gz").is_file())
}

fn tiny_llama() -> Box<dyn align_core::Policy> {
    align_models::load(
        &root().join("tests/fixtures/tiny-llama"),
        align_models::DType::F32,
        tch::Device::Cpu,
    )
    .unwrap()
    .policy
}

/// tiny-sentiment.toml in `dir` with a `[sampler.server]` table for `url`;
/// BRAIn draws from the prior (no proposal refreshes to serve).
fn manifest(dir: &Path, url: &str) -> Manifest {
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
        "{text}\n[sampler.server]\nurls = [{url:?}]\nmodel = \"tiny-llama\"\nretries = 1\nbackoff_s = 0.01\n"
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    Manifest::load(
        &path,
        &[
            "device=cpu".into(),
            "train.sample_cache=\"memory\"".into(),
            "runs.0.estimator.brain.refresh_every=0".into(),
        ],
    )
    .unwrap()
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
