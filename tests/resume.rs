//! Checkpoints and `--resume`: a run killed with SIGKILL (during sampling,
//! inside a training step, between two result files) and resumed ends with
//! the same results as one that was never interrupted; the output
//! directory's marker and lock refuse what would mix or lose results.
//!
//! The kills come from the runner itself (`BRAIN_RS_FAILPOINT=NAME:K`: the
//! K-th pass through a point sends the process SIGKILL), so they land where
//! the test says, with no cleanup, as `kill -9` or a crash would.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

#[path = "common/results.rs"]
mod results;
use results::{assert_same_results, results};

const EXACT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments/exact.toml");

/// Three runs (one with proposal refreshes every 20 steps) at two seeds, 60
/// steps each, evaluated every 20, checkpointed every 10.
const SETTINGS: &[&str] = &[
    "--set",
    "train.steps=60",
    "--set",
    "train.eval_every=20",
    "--set",
    "train.checkpoint_every=10",
    "--set",
    "seeds=[1, 2]",
];

fn runner(args: &[&str], out: &Path, failpoint: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(args).arg("--quiet").arg("--out").arg(out);
    match failpoint {
        Some(f) => cmd.env("BRAIN_RS_FAILPOINT", f),
        None => cmd.env_remove("BRAIN_RS_FAILPOINT"),
    };
    cmd.output().expect("runner starts")
}

fn exact(extra: &[&str]) -> Vec<String> {
    let mut a = vec![EXACT.to_string()];
    a.extend(SETTINGS.iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_ok(args: &[String], out: &Path) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = runner(&args, out, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn killed(o: &Output) -> bool {
    o.status.signal() == Some(9)
}

#[test]
fn runs_killed_anywhere_resume_to_the_uninterrupted_results() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    run_ok(&exact(&[]), &straight);

    // 360 sampling calls, 360 steps and 8 flushes of the results in all:
    // killed in seed 1's second run at its step 40, in seed 2's second run
    // at step 15 (both past a checkpoint), and after seed 1's second run.
    for failpoint in ["sample:100", "train-step:255", "write:3"] {
        let out = dir.path().join(failpoint.replace(':', "-"));
        let args = exact(&[]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = runner(&argv, &out, Some(failpoint));
        assert!(
            killed(&o),
            "{failpoint}: {:?} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );

        // Without --resume, the unfinished run is refused, and untouched.
        let before = results(&out);
        let again = runner(&argv, &out, None);
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(!again.status.success());
        assert!(
            stderr.contains("unfinished run") && stderr.contains("--resume"),
            "{stderr}"
        );
        assert_eq!(results(&out), before);

        let resumed = run_ok(&exact(&["--resume"]), &out);
        let stderr = String::from_utf8_lossy(&resumed.stderr);
        if failpoint != "write:3" {
            assert!(stderr.contains("resuming at step"), "{failpoint}: {stderr}");
        }
        assert_same_results(&straight, &out, &["summary.md"]);
        let state = std::fs::read_to_string(out.join("run-state.json")).unwrap();
        assert!(state.contains("\"finished\""), "{state}");
    }
}

/// The text pipeline (a tiny Llama, held-out samples judged at every
/// evaluation, proposal refreshes every step): killed inside its third
/// training step, after a checkpoint that holds an evaluation's samples.
#[test]
fn a_text_run_resumes_with_its_judged_samples() {
    let data = std::env::var_os("BRAIN_RS_DATA")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/brain-rs/data")));
    if !data.is_some_and(|d| d.join("vaderSentiment-3.3.2.tar.gz").is_file()) {
        eprintln!("SKIPPED: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../experiments/tiny-sentiment.toml"
    );
    let args = [
        manifest,
        "--set",
        "device=\"cpu\"",
        "--set",
        "train.steps=4",
        "--set",
        "train.eval_every=2",
        "--set",
        "train.checkpoint_every=2",
    ];
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let o = runner(&args, &straight, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("killed");
    assert!(killed(&runner(&args, &out, Some("train-step:3"))));
    let mut resume = args.to_vec();
    resume.push("--resume");
    let o = runner(&resume, &out, None);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("brain (seed 3): resuming at step 2 of 4"),
        "{stderr}"
    );
    assert_same_results(&straight, &out, &["summary.md"]);
    let samples = std::fs::read_to_string(out.join("samples/brain.jsonl")).unwrap();
    assert_eq!(
        samples.lines().count(),
        16,
        "2 evaluations × 4 prompts × 2 samples"
    );
}

#[test]
fn a_second_writer_fails_at_once_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let _held = runner::outdir::OutDir::lock(&out).unwrap();
    let args = exact(&[]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = runner(&argv, &out, None);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let pid = std::process::id().to_string();
    assert!(
        stderr.contains("being written by another runner") && stderr.contains(&pid),
        "{stderr}"
    );
    assert!(
        !out.join("runs.json").exists(),
        "the second writer wrote nothing"
    );
}

#[test]
fn another_manifests_results_are_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run_ok(&exact(&[]), &out);
    let before = results(&out);
    for resume in [false, true] {
        let mut args = exact(&["--set", "train.lr=0.01"]);
        if resume {
            args.push("--resume".into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = runner(&argv, &out, None);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(stderr.contains("of another manifest"), "{stderr}");
        assert_eq!(results(&out), before);
    }
}

/// Rerunning a finished manifest starts over: what this runner wrote before
/// goes (a stale file in its steps/ folder too), what others put there stays.
#[test]
fn starting_over_removes_only_what_the_runner_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run_ok(&exact(&[]), &out);
    std::fs::write(out.join("steps/stale.csv"), "step\n").unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    run_ok(&exact(&[]), &out);
    assert!(!out.join("steps/stale.csv").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    // --resume over a finished run rewrites the same results from its checkpoints.
    let before = results(&out);
    run_ok(&exact(&["--resume"]), &out);
    assert_eq!(results(&out), before);
}

#[test]
fn a_directory_the_runner_did_not_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("thesis.tex"), "precious").unwrap();
    let args = exact(&[]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = runner(&argv, &out, None);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("holds no results of this runner"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("thesis.tex")).unwrap(),
        "precious"
    );
    assert!(!out.join("runs.json").exists());
}

/// A learning rate that overflows the weights on the first update: "skip"
/// skips every such step, "stop" ends each run there; either way the weights
/// stay the prior's (KL 0) and the count is in the summary.
#[test]
fn non_finite_updates_are_skipped_or_stop_the_run() {
    for (mode, steps) in [("skip", "10"), ("stop", "0")] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let on = format!("train.on_nonfinite=\"{mode}\"");
        let args: Vec<String> = [
            EXACT,
            "--set",
            "train.steps=10",
            "--set",
            "train.eval_every=0",
            "--set",
            "train.optimizer=\"sgd\"",
            "--set",
            "train.lr=1e300",
            "--set",
            &on,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = run_ok(&args, &out);
        let summary = String::from_utf8_lossy(&o.stdout).into_owned();
        let header: Vec<&str> = summary
            .lines()
            .next()
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let brain = summary.lines().find(|l| l.starts_with("| BRAIn ")).unwrap();
        let cells: Vec<&str> = brain.split('|').map(str::trim).collect();
        assert_eq!(cells[col("steps")], steps, "{mode}: {summary}");
        let expected = if mode == "skip" { "10.0000" } else { "1.0000" };
        assert_eq!(cells[col("nonfinite_steps")], expected, "{mode}: {summary}");
        assert_eq!(cells[col("kl_policy_prior")], "0.0000", "{mode}: {summary}");
    }
}
