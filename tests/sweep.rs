//! `runner sweep`: a manifest's runs × grid × seeds as indexed jobs, each
//! its own process (run here all at once, as an array job runs them),
//! merged by `runner tables DIR` into the tables the whole manifest gives
//! in one process: every result file equal byte for byte, the wall-clock
//! seconds aside.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "common/results.rs"]
mod results;
use results::assert_same_results;

const EXACT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments/exact.toml");
const PROPOSAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../experiments/ablation-proposal.toml"
);

/// Shortened: two seeds, 30 steps, evaluated every 10, and with
/// `reward-stats` beside `exact-kl`, so that there are judged held-out
/// samples (`samples/*.jsonl`), intervals over them and the frontier plot
/// to merge too.
const SHORT: &[&str] = &[
    "--set",
    "train.steps=30",
    "--set",
    "train.eval_every=10",
    "--set",
    "seeds=[1, 2]",
    "--set",
    "evaluators.reward-stats={}",
];

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("BRAIN_RS_FAILPOINT");
    cmd
}

fn runner(args: &[&str]) -> Output {
    command(args).output().expect("runner starts")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn with(manifest: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![manifest.to_string()];
    a.extend(SHORT.iter().map(|s| s.to_string()));
    a.push("--quiet".into());
    a.push("--out".into());
    a.push(out.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs every job of the sweep at once, one process each; the index comes
/// from `--index`, Slurm's variable or Kubernetes', in turn.
fn run_all_jobs(manifest: &str, out: &Path) -> usize {
    let count_args = with(manifest, out, &["--count"]);
    let mut args = vec!["sweep".to_string()];
    args.extend(count_args);
    let count: usize = ok(&runner(&strs(&args))).trim().parse().expect("a count");
    let mut children = Vec::new();
    for i in 0..count {
        let mut args = vec!["sweep".to_string()];
        args.extend(with(manifest, out, &[]));
        let mut cmd = match i % 3 {
            0 => {
                args.push("--index".into());
                args.push(i.to_string());
                command(&strs(&args))
            }
            1 => {
                let mut c = command(&strs(&args));
                c.env("SLURM_ARRAY_TASK_ID", i.to_string());
                c
            }
            _ => {
                let mut c = command(&strs(&args));
                c.env("JOB_COMPLETION_INDEX", i.to_string());
                c
            }
        };
        children.push(
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        ok(&c.wait_with_output().unwrap());
    }
    count
}

/// What a merged sweep and the single manifest must both have written.
const MUST: &[&str] = &[
    "summary.md",
    "summary.csv",
    "runs.json",
    "manifest.resolved.toml",
    "report.html",
    "steps/",
    "samples/",
    "plots/",
];

fn direct_run(manifest: &str, out: &Path) {
    ok(&runner(&strs(&with(manifest, out, &[]))));
}

fn tables(dir: &Path) -> Output {
    runner(&["tables", &dir.display().to_string()])
}

#[test]
fn the_exact_manifest_as_jobs_merges_to_its_own_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let (direct, sweep) = (tmp.path().join("direct"), tmp.path().join("sweep"));
    direct_run(EXACT, &direct);
    // 3 runs × 2 seeds.
    assert_eq!(run_all_jobs(EXACT, &sweep), 6);
    ok(&tables(&sweep));
    assert_same_results(&direct, &sweep, MUST);
    let summary = std::fs::read_to_string(sweep.join("summary.md")).unwrap();
    for run in [
        "BRAIn",
        "BRAIn (no baseline)",
        "DPO-sft",
        "prior",
        "posterior (exact)",
    ] {
        assert!(summary.contains(run), "{run}: {summary}");
    }

    // A finished job run again is a no-op: nothing in its directory changes.
    let job = sweep.join("jobs/4");
    let before: Vec<(PathBuf, std::time::SystemTime)> = walk(&job);
    let mut args = vec!["sweep".to_string()];
    args.extend(with(EXACT, &sweep, &["--index", "4"]));
    let o = runner(&strs(&args));
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing to do"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(walk(&job), before);
    // Merging again gives the same tables.
    ok(&tables(&sweep));
    assert_same_results(&direct, &sweep, MUST);

    // `runner tables` over a folder holding the sweep merges it too.
    let parent = tmp.path();
    std::fs::remove_file(sweep.join("runs.json")).unwrap();
    ok(&tables(parent));
    assert_same_results(&direct, &sweep, MUST);

    // Another sweep (another learning rate) in the same directory: its job
    // refuses this one's finished job, …
    let mut args = vec!["sweep".to_string()];
    args.extend(with(
        EXACT,
        &sweep,
        &["--index", "1", "--set", "train.lr=0.03"],
    ));
    let o = runner(&strs(&args));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("holds a finished run of another manifest"),
        "{err}"
    );
    // … and, once that is removed, the merge refuses the mix.
    std::fs::remove_dir_all(sweep.join("jobs/1")).unwrap();
    ok(&runner(&strs(&args)));
    let o = tables(&sweep);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("jobs/1 belongs to another sweep than"),
        "{err}"
    );
}

/// The proposal ablation (prior only, refreshes every 20 and 5 steps, a
/// prior/proposal mixture): 4 runs × 2 seeds, each job drawing its own
/// samples where one process shares them between runs.
#[test]
fn the_proposal_ablation_as_jobs_merges_to_its_own_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let (direct, sweep) = (tmp.path().join("direct"), tmp.path().join("sweep"));
    direct_run(PROPOSAL, &direct);
    assert_eq!(run_all_jobs(PROPOSAL, &sweep), 8);
    ok(&tables(&sweep));
    assert_same_results(&direct, &sweep, MUST);
}

fn walk(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p, e.metadata().unwrap().modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// exact.toml up to its runs.
fn header() -> String {
    let text = std::fs::read_to_string(EXACT).unwrap();
    let at = text.find("[[runs]]").expect("runs");
    text[..at].to_string()
}

const GRID: &str =
    "[sweep]\ngrid = { \"runs.0.estimator.brain.n\" = [2, 4], \"runs.lr\" = [0.02, 0.05] }\n";

fn grid_manifest(dir: &Path) -> String {
    let text = std::fs::read_to_string(EXACT).unwrap();
    let at = text.find("[[runs]]").unwrap();
    // The grid between the header and the runs: the lines after it keep
    // their numbers in errors.
    let m = format!("{}{GRID}\n{}", &text[..at], &text[at..]);
    let p = dir.join("grid.toml");
    std::fs::write(&p, m).unwrap();
    p.display().to_string()
}

#[test]
fn a_grid_as_jobs_merges_to_the_tables_of_its_runs_written_out() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = grid_manifest(tmp.path());
    // The same runs, written out by hand: BRAIn at 2 × 2 points, the other
    // two at the two learning rates.
    let mut single = header();
    for n in [2, 4] {
        for lr in ["0.02", "0.05"] {
            single.push_str(&format!(
                "[[runs]]\nname = \"BRAIn [n={n}, lr={lr}]\"\nlr = {lr}\n[runs.estimator.brain]\nn = {n}\nbaseline = \"self-normalized\"\ntarget = \"softmax\"\nrefresh_every = 20\n\n"
            ));
        }
    }
    for lr in ["0.02", "0.05"] {
        single.push_str(&format!(
            "[[runs]]\nname = \"BRAIn (no baseline) [lr={lr}]\"\nlr = {lr}\n[runs.estimator.brain]\nn = 8\nbaseline = \"none\"\ntarget = \"softmax\"\nrefresh_every = 20\n\n"
        ));
    }
    for lr in ["0.02", "0.05"] {
        single.push_str(&format!(
            "[[runs]]\nname = \"DPO-sft [lr={lr}]\"\nlr = {lr}\n[runs.estimator.dpo]\nbeta = 1.0\nn = 2\n\n"
        ));
    }
    let single_path = tmp.path().join("single.toml");
    std::fs::write(&single_path, single).unwrap();
    let (direct, sweep) = (tmp.path().join("direct"), tmp.path().join("sweep"));
    direct_run(&single_path.display().to_string(), &direct);

    // `--list`: every job with its index, seed, run and settings.
    let mut args = vec!["sweep".to_string()];
    args.extend(with(&grid, &sweep, &["--list"]));
    let list = ok(&runner(&strs(&args)));
    assert!(list.starts_with("# 16 jobs: sbatch --array=0-15"), "{list}");
    assert!(
        list.contains(
            "\n3\t2\tBRAIn [n=2, lr=0.05]\truns.0.estimator.brain.n=2 runs.0.lr=0.05 seeds=[2]\n"
        ),
        "{list}"
    );
    assert!(
        list.contains("\n15\t2\tDPO-sft [lr=0.05]\truns.2.lr=0.05 seeds=[2]\n"),
        "{list}"
    );
    assert_eq!(list.lines().count(), 2 + 16, "{list}");

    // A merge before every job has finished is refused, naming those left.
    let mut args = vec!["sweep".to_string()];
    args.extend(with(&grid, &sweep, &["--index", "0"]));
    ok(&runner(&strs(&args)));
    let o = tables(&sweep);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("15 of the sweep's 16 jobs have not finished (index 1, 2,"),
        "{err}"
    );

    assert_eq!(run_all_jobs(&grid, &sweep), 16);
    ok(&tables(&sweep));
    assert_same_results(&direct, &sweep, MUST);
}

/// The line of `needle` in the grid manifest (1-based).
fn line_of(path: &str, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .position(|l| l.contains(needle))
        .expect("the line")
        + 1
}

fn sweep_err(manifest: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["sweep", manifest, "--set", "train.steps=5"];
    args.extend(extra);
    let o = runner(&args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_grids_and_indices_are_refused_with_where_and_a_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = grid_manifest(tmp.path());
    let line = line_of(&grid, "grid = {");
    let text = std::fs::read_to_string(&grid).unwrap();
    let write = |name: &str, grid_line: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text.replace(GRID.lines().nth(1).unwrap(), grid_line)).unwrap();
        p.display().to_string()
    };

    // A setting of the whole experiment.
    let m = write("train.toml", "grid = { \"train.steps\" = [10, 20] }");
    let (code, err) = sweep_err(&m, &["--list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("train.toml:{line}:")), "{err}");
    assert!(err.contains("is not a setting of the runs"), "{err}");
    assert!(err.contains("fix: write `runs.steps`"), "{err}");

    // A key the estimator does not have: the loader's refusal, located at
    // the grid key.
    let m = write(
        "typo.toml",
        "grid = { \"runs.estimator.brain.nn\" = [2, 4] }",
    );
    let (code, err) = sweep_err(&m, &["--list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("typo.toml:{line}:")), "{err}");
    assert!(err.contains("unknown field `nn`"), "{err}");
    assert!(err.contains("fix: remove `nn`"), "{err}");

    // An estimator no run uses; a value that is not a list; one listed twice.
    let m = write("rso.toml", "grid = { \"runs.estimator.rso.beta\" = [1.0] }");
    let (code, err) = sweep_err(&m, &["--count"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("which no run uses (they use `brain`, `dpo`)"),
        "{err}"
    );
    let m = write("scalar.toml", "grid = { \"runs.lr\" = 0.1 }");
    let (code, err) = sweep_err(&m, &["--count"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("scalar.toml:{line}:")) && err.contains("needs a list"),
        "{err}"
    );
    let m = write("twice.toml", "grid = { \"runs.lr\" = [0.1, 0.1] }");
    let (code, err) = sweep_err(&m, &["--count"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lists `0.1` twice"), "{err}");
    let m = write("unknown.toml", "grids = { \"runs.lr\" = [0.1] }");
    let (code, err) = sweep_err(&m, &["--count"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("unknown.toml:{line}:")) && err.contains("unknown field `grids`"),
        "{err}"
    );

    // The plain runner on a sweep: located, and pointed at `runner sweep`.
    let o = runner(&[&grid, "--dry-run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("grid.toml:{}:", line - 1)), "{err}");
    assert!(
        err.contains(
            "fix: this manifest is a sweep: `runner sweep MANIFEST --list` shows its jobs"
        ),
        "{err}"
    );

    // No index given, nor any scheduler's; one past the end; a bad variable
    // (one seed: 4 + 2 + 2 jobs).
    let out = tmp.path().join("out").display().to_string();
    let (code, err) = sweep_err(&grid, &["--out", &out]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("give --index I (0 to 7)")
            && err.contains("$SLURM_ARRAY_TASK_ID")
            && err.contains("$JOB_COMPLETION_INDEX"),
        "{err}"
    );
    let (code, err) = sweep_err(&grid, &["--out", &out, "--index", "8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("it has 8 jobs, 0 to 7"), "{err}");
    let o = command(&["sweep", &grid, "--out", &out])
        .env("SLURM_ARRAY_TASK_ID", "x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("$SLURM_ARRAY_TASK_ID is `x`"));
    assert!(
        !Path::new(&out).exists(),
        "nothing is written before a job runs"
    );
}
