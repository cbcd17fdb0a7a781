//! The `runner` binary: plugin listing and manifest errors (location, fix,
//! exit code).

use std::path::Path;
use std::process::Command;

fn runner(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runner starts");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_shows_every_plugin_by_kind() {
    let (code, stdout, _) = runner(Path::new("."), &["list"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(stdout);
}

const GOOD: &str = r#"name = "t"
seed = 1
device = "cpu"

[task.enumerable]
prompts = 2
vocab = 3
length = 2

[model.tabular]

[reward.random-table]

[goodness.bt-exp]
tau = 1.0

[evaluators.exact-kl]

[train]
steps = 3
lr = 0.1

[[runs]]
name = "brain"
[runs.estimator.brain]
n = 4
"#;

/// Writes `manifest` into a fresh directory, runs it there and returns the
/// exit code and stderr.
fn run_manifest(manifest: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), manifest).unwrap();
    let (code, _, stderr) = runner(dir.path(), &["--quiet", "bad.toml"]);
    (code, stderr)
}

#[test]
fn the_good_manifest_runs() {
    let (code, stderr) = run_manifest(GOOD);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn unknown_key() {
    let (code, stderr) = run_manifest(&GOOD.replace("n = 4", "n = 4\nsamples = 3"));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn unknown_top_level_key() {
    let (code, stderr) = run_manifest(&GOOD.replace("seed = 1", "sed = 1"));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn unknown_plugin() {
    let (code, stderr) =
        run_manifest(&GOOD.replace("[goodness.bt-exp]", "[goodness.bt-exponential]"));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn wrong_type() {
    let (code, stderr) = run_manifest(&GOOD.replace("n = 4", "n = \"four\""));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn missing_file_named_in_the_manifest() {
    let (code, stderr) = run_manifest(&GOOD.replace(
        "[model.tabular]",
        "[model.tabular]\ninit = \"prior.safetensors\"",
    ));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn missing_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = runner(dir.path(), &["nope.toml"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn invalid_estimator_setting_names_the_key() {
    let (code, stderr) = run_manifest(&GOOD.replace("n = 4", "n = 1"));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn toml_syntax_error() {
    let (code, stderr) = run_manifest(&GOOD.replace("lr = 0.1", "lr = 0.1.2"));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn set_overrides_values_and_reports_bad_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), GOOD).unwrap();
    let (code, _, stderr) = runner(
        dir.path(),
        &["--quiet", "m.toml", "--set", "runs.0.estimator.brain.n=1"],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("invalid `n` for estimator `brain`"),
        "{stderr}"
    );
    let (code, _, stderr) = runner(dir.path(), &["--quiet", "m.toml", "--set", "runs.3.lr=0.1"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("`runs` has 1 entries, so there is no entry 3"),
        "{stderr}"
    );
    let (code, _, stderr) = runner(
        dir.path(),
        &["--quiet", "m.toml", "--set", "train.steps=2", "--out", "o"],
    );
    assert_eq!(code, 0, "{stderr}");
    let resolved = std::fs::read_to_string(dir.path().join("o/manifest.resolved.toml")).unwrap();
    assert!(resolved.contains("steps = 2"), "{resolved}");
}

#[test]
fn invalid_dpo_beta_names_the_key() {
    let (code, stderr) = run_manifest(&GOOD.replace(
        "[runs.estimator.brain]\nn = 4",
        "[runs.estimator.dpo]\nbeta = 0.0",
    ));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn rso_cannot_accept_more_than_it_draws() {
    let (code, stderr) = run_manifest(&GOOD.replace(
        "[runs.estimator.brain]\nn = 4",
        "[runs.estimator.rso]\ncandidates = 4\naccepted = 8",
    ));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn invalid_run_sampling_names_the_key() {
    let (code, stderr) = run_manifest(&GOOD.replace(
        "name = \"brain\"",
        "name = \"brain\"\nsampling = { top_p = 1.5 }",
    ));
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

/// Every regular file under `root`, relative to it, sorted.
fn files_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// `runner tables results/` recomputes every committed table, plot and
/// report from the saved metrics and judged samples, byte for byte.
#[test]
fn tables_reproduce_the_committed_results() {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("results");
    let originals = files_under(&results);
    for rel in &originals {
        let to = copy.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(results.join(rel), &to).unwrap();
    }
    // Remove every derived file, so the command must write each one back.
    let derived = |rel: &Path| {
        let name = rel.file_name().unwrap().to_string_lossy().to_string();
        let has_runs = rel
            .parent()
            .is_some_and(|p| results.join(p).join("runs.json").is_file());
        (has_runs && matches!(name.as_str(), "summary.md" | "summary.csv" | "report.html"))
            || rel.starts_with("tables.md")
            || rel.starts_with("tables.csv")
            || rel.components().any(|c| c.as_os_str() == "plots")
    };
    let regenerated: Vec<_> = originals.iter().filter(|r| derived(r)).collect();
    assert!(
        regenerated.iter().any(|r| r.ends_with("summary.md")),
        "no committed experiment has runs.json"
    );
    for rel in &regenerated {
        std::fs::remove_file(copy.join(rel)).unwrap();
    }
    let (code, _, err) = runner(dir.path(), &["tables", "results"]);
    assert_eq!(code, 0, "{err}");
    for rel in &regenerated {
        let a = std::fs::read(results.join(rel)).unwrap();
        let b = std::fs::read(copy.join(rel))
            .unwrap_or_else(|e| panic!("{} was not regenerated: {e}", rel.display()));
        assert!(a == b, "{} differs from the committed file", rel.display());
    }
    assert_eq!(
        files_under(&copy),
        originals,
        "the command wrote other files"
    );
}

/// `--dry-run` checks everything, prints the plan with its work and trains
/// nothing: no results directory appears.
#[test]
fn dry_run_prints_the_plan_and_trains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/exact.toml");
    let m = manifest.to_str().unwrap();
    let (code, out, err) = runner(dir.path(), &[m, "--dry-run", "--set", "seeds=[1, 2]"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("runs (each at 2 seed(s): [1, 2])"), "{out}");
    assert!(out.contains("BRAIn (brain): 600 steps"), "{out}");
    assert!(out.contains("OK: nothing was trained"), "{out}");
    assert!(!dir.path().join("results").exists());
    // A bad setting fails the check as it would fail the run.
    let (code, _, err) = runner(dir.path(), &["check", m, "--set", "eval.samples=0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("eval.samples"), "{err}");
}

/// Runs whose names share a file name (or a run named `prior`) would
/// overwrite each other's results: refused before any training.
#[test]
fn run_names_that_share_result_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/exact.toml");
    let m = manifest.to_str().unwrap();
    for (name, clash) in [("brain", "BRAIn"), ("Prior", "prior")] {
        let set = format!("runs.2.name={name:?}");
        let (code, _, err) = runner(dir.path(), &[m, "--set", &set, "--out", "out"]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("runs `{clash}` and `{name}`")),
            "{err}"
        );
        assert!(!dir.path().join("out").exists(), "wrote results: {err}");
    }
}
