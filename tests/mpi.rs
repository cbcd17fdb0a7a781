//! Data-parallel training over MPI: `mpiexec -n 2 runner MANIFEST` against
//! one process on the same manifest (built with `--features mpi`, against
//! MPICH; `cargo xtask test` installs both and runs this).
//!
//! - The two ranks end every run with the same weights, bit for bit (each
//!   prints a SHA-256 of its weights).
//! - Rank 0's trained weights equal the single process's within
//!   [`TOLERANCE`]: the ranks split each step's prompts and draw exactly the
//!   single process's rows for them, and the gradients of their shares of
//!   the step's loss (each mean weighed by the rank's terms over every
//!   rank's) are summed before each step. On the
//!   tabular policy (one logit row per prefix, so no two prompts share a
//!   weight) with two prompts a rank, every product and sum is the single
//!   process's and the weights are equal bit for bit, with Adam. Elsewhere
//!   the gradients differ by float rounding (shares of 1/3 and 2/3, sums in
//!   another order, other padding). Those cases train with SGD: Adam's first
//!   steps move each weight by about ±lr whatever the size of its gradient,
//!   so a gradient that cancels to rounding noise (BRAIn's α − β at a
//!   uniform β) moves by a sign of that noise, and rounding-level gradients
//!   end lr-sized apart (measured: 0.18 on the tabular policy after 30
//!   steps, 0.065 on the tiny Llama after 4). With SGD the measured
//!   difference is 2.4e-7 (tabular, lr 0.5) and 3.1e-6 (tiny Llama, lr
//!   0.05, weights moved by 0.063). A larger step makes the tiny Llama's
//!   BRAIn loss itself unstable (lr 0.2: 1.1 → 2.4 in 4 steps), and there
//!   the rounding grows to 0.06 as well.
//! - Every step's mean reward over every candidate the ranks drew is the
//!   single process's (to 1e-12): the shards cover the step's work once.
//! - The ranks share each evaluation's held-out sampling; rank 0's judged
//!   samples are the single process's, byte for byte.
//! - A 2-rank run killed with SIGKILL inside a step resumes from rank 0's
//!   checkpoint, on 2 ranks, to the uninterrupted 2-rank run's results; and
//!   on another number of ranks (2 → 1 and 1 → 2) to the same weights.
//! - With `[sampler.server]` (a stand-in on 127.0.0.1 serving the tiny
//!   Llama, reloading each exported proposal), the 2 ranks ask the server
//!   for the single process's prompts with its seeds, rank 0 alone exports
//!   and reloads, and they train to its weights.

#[path = "common/data.rs"]
mod data;
#[path = "../crates/server-sampler/tests/common/mod.rs"]
mod standin;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use data::root;

/// Largest |Δ| allowed between a trained weight of the 2-rank run and of one
/// process (both f32, values of order 1).
const TOLERANCE: f64 = 1e-5;

/// The exact-posterior task on the tabular policy: BRAIn with proposal
/// refreshes, on-policy RLOO, and RSO (prior samples, a subset accepted by
/// one random stream over the step's prompts), checkpointed and evaluated
/// on the way.
const EXACT: &str = r#"name = "mpi-exact"
seed = 1
device = "cpu"
threads = 1

[task.enumerable]
prompts = 4
vocab = 6
length = 3

[model.tabular]
init_std = 1.0

[reward.random-table]
scale = 1.0
seed = 7

[goodness.bt-exp]
tau = 1.0

[evaluators.exact-kl]
[evaluators.reward-stats]

[eval]
samples = 3
batch_prompts = 1

[train]
steps = 30
lr = 0.05
eval_every = 10
checkpoint_every = 10

[[runs]]
name = "BRAIn"
[runs.estimator.brain]
n = 8
refresh_every = 10

[[runs]]
name = "RLOO"
[runs.estimator.rloo]
n = 4

[[runs]]
name = "RSO"
[runs.estimator.rso]
candidates = 16
accepted = 4
"#;

fn manifest(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn runner_args(manifest: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![manifest.display().to_string()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(["--quiet".into(), "--out".into(), out.display().to_string()]);
    a
}

/// One process (no launcher in its environment).
fn single(args: &[String]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .env_remove("BRAIN_RS_FAILPOINT")
        .output()
        .expect("runner starts");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// `mpiexec -n 2 runner ARGS` (MPICH's hydra passes the environment on).
fn two_ranks(args: &[String], failpoint: Option<&str>) -> Output {
    let mut cmd = Command::new("mpiexec");
    cmd.args(["-n", "2"])
        .arg(env!("CARGO_BIN_EXE_runner"))
        .args(args);
    match failpoint {
        Some(f) => cmd.env("BRAIN_RS_FAILPOINT", f),
        None => cmd.env_remove("BRAIN_RS_FAILPOINT"),
    };
    cmd.output()
        .expect("mpiexec starts (MPICH: apt-get install mpich, or `cargo xtask test`)")
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "{:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `(run, rank) → weights sha256` from the ranks' closing lines.
fn digests(stderr: &str) -> BTreeMap<(String, usize), String> {
    let mut out = BTreeMap::new();
    for line in stderr.lines() {
        let Some(at) = line.find("rank ") else {
            continue;
        };
        let rest = &line[at + "rank ".len()..];
        let (Some((rank, rest)), true) = (rest.split_once(" of 2: "), line.contains(" sha256 "))
        else {
            continue;
        };
        let (run, hash) = (
            rest.split_once(" (seed ").expect("a run").0,
            line.rsplit_once("weights sha256 ").expect("a digest").1,
        );
        let rank = rank
            .parse()
            .unwrap_or_else(|_| panic!("a rank in {line:?}"));
        out.insert((run.to_string(), rank), hash.trim().to_string());
    }
    out
}

/// The ranks agree on every run's weights.
fn ranks_agree(stderr: &str, runs: &[&str]) {
    let d = digests(stderr);
    for run in runs {
        let (a, b) = (d.get(&(run.to_string(), 0)), d.get(&(run.to_string(), 1)));
        assert!(
            a.is_some() && a == b,
            "{run}: rank 0 {a:?}, rank 1 {b:?}\n{stderr}"
        );
    }
}

fn weights(out: &Path, run: &str) -> Vec<(String, Vec<f64>)> {
    let path = out.join(format!("checkpoints/{run}/seed-1/model.safetensors"));
    let mut named =
        tch::Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
        .into_iter()
        .map(|(n, t)| {
            let v = Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).view([-1])).unwrap();
            (n, v)
        })
        .collect()
}

/// Largest |Δ| between two runs' weights (same names and shapes).
fn max_diff(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]) -> f64 {
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    a.iter()
        .zip(b)
        .flat_map(|((_, x), (_, y))| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

/// A column of `steps/<run>.csv`.
fn column(out: &Path, run: &str, name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join(format!("steps/{run}.csv"))).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let at = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no `{name}` in steps/{run}.csv"));
    reader
        .records()
        .map(|r| r.unwrap()[at].parse().unwrap())
        .collect()
}

/// Checks the 2-rank run in `dp` against the single process in `one`.
fn same_training(one: &Path, dp: &Path, runs: &[(&str, &str)], tolerance: f64, what: &str) {
    for (run, slug) in runs {
        let (a, b) = (weights(one, slug), weights(dp, slug));
        let diff = max_diff(&a, &b);
        eprintln!("{what}: {run}: largest |Δweight| 2 ranks vs 1 process = {diff:e}");
        assert!(diff <= tolerance, "{what}: {run}: {diff} > {tolerance}");
        let (x, y) = (
            column(one, slug, "reward_mean"),
            column(dp, slug, "reward_mean"),
        );
        assert_eq!(x.len(), y.len());
        for (step, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!(
                (p - q).abs() <= 1e-12,
                "{what}: {run} step {}: mean reward {q} on 2 ranks, {p} in one process",
                step + 1
            );
        }
        let (x, y) = (column(one, slug, "loss"), column(dp, slug, "loss"));
        for (p, q) in x.iter().zip(&y) {
            assert!(
                (p - q).abs() <= 1e-4 * (1.0 + p.abs()),
                "{what}: {run}: loss {q} vs {p}"
            );
        }
    }
}

#[test]
fn two_ranks_train_as_one_process_on_the_combined_batch() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), "exact.toml", EXACT);
    let runs = [("BRAIn", "brain"), ("RLOO", "rloo")];
    // 4 prompts a step: 2 per rank, with Adam; 3: 1 and 2 (shares 1/3 and
    // 2/3), with SGD (see the top of this file).
    for per_step in ["4", "3"] {
        let set = format!("train.prompts_per_step={per_step}");
        let sgd = if per_step == "3" {
            ["--set", "train.optimizer=\"sgd\"", "--set", "train.lr=0.5"]
        } else {
            [
                "--set",
                "train.optimizer=\"adam\"",
                "--set",
                "train.lr=0.05",
            ]
        };
        let extra = [&["--set", set.as_str()][..], &sgd[..]].concat();
        let (one, dp) = (
            dir.path().join(format!("one-{per_step}")),
            dir.path().join(format!("dp-{per_step}")),
        );
        single(&runner_args(&m, &one, &extra));
        let o = ok(two_ranks(&runner_args(&m, &dp, &extra), None));
        let stderr = String::from_utf8_lossy(&o.stderr);
        ranks_agree(&stderr, &["BRAIn", "RLOO", "RSO"]);
        // Rank 0 alone reports (and writes): one summary table.
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.matches("| run ").count(), 1, "{stdout}");
        let what = format!("tabular, {per_step} prompts a step");
        // The tabular policy shares no weight between prompts: exact when the
        // shares are powers of two.
        let tolerance = if per_step == "4" { 0.0 } else { TOLERANCE };
        same_training(&one, &dp, &runs, tolerance, &what);
        if per_step == "4" {
            // The ranks share every evaluation's held-out sampling (a batch
            // of one prompt each here, two a rank) and rank 0 judges: with
            // the single process's weights, its judged samples, byte for byte.
            for file in ["prior", "brain", "rloo", "rso"] {
                let file = format!("samples/{file}.jsonl");
                let (a, b) = (
                    std::fs::read(one.join(&file)).unwrap(),
                    std::fs::read(dp.join(&file)).unwrap(),
                );
                assert!(!a.is_empty() && a == b, "{what}: {file} differs");
            }
        }
        // The comparison is of trained weights, not of two untouched priors:
        // two estimators from one prior end apart.
        let apart = max_diff(&weights(&dp, "brain"), &weights(&dp, "rloo"));
        assert!(apart > 1e-2, "{what}: BRAIn and RLOO {apart} apart");
        // RSO draws from the prior and accepts from the gathered rewards:
        // the same samples at every step as one process. Its loss is a mean
        // over the step's valid pairs, which the ranks hold in unequal
        // numbers: each rank's mean is weighed by its pairs over every
        // rank's (`Estimator::loss_means`), so its weights are the single
        // process's too.
        let (x, y) = (
            column(&one, "rso", "accepted_reward_mean"),
            column(&dp, "rso", "accepted_reward_mean"),
        );
        assert_eq!(x.len(), 30);
        for (step, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!(
                (p - q).abs() <= 1e-12,
                "{what}: RSO step {}: accepted reward {q} on 2 ranks, {p} in one process",
                step + 1
            );
        }
        let rso = max_diff(&weights(&one, "rso"), &weights(&dp, "rso"));
        eprintln!("{what}: RSO: largest |Δweight| 2 ranks vs 1 process = {rso:e}");
        assert!(rso <= TOLERANCE, "{what}: RSO: {rso} > {TOLERANCE}");
    }
}

/// BRAIn on the tiny Llama and the HH fixture, with proposal refreshes.
fn llama_manifest() -> String {
    let fixtures = root().join("tests/fixtures");
    format!(
        r#"name = "mpi-llama"
seed = 1
device = "cpu"
threads = 1

[task.preference-file]
format = "hh-rlhf"
path = "{}"
split = {{ validation = 0.0, test = 0.0 }}
max_new_tokens = 4

[model.hf]
path = "{}"

[reward.lexicon]

[goodness.bt-exp]
tau = 0.5

[train]
steps = 4
optimizer = "sgd"
lr = 0.05
prompts_per_step = 4

[[runs]]
name = "brain"
[runs.estimator.brain]
n = 3
refresh_every = 2
"#,
        fixtures.join("data/hh-rlhf-clean.jsonl.gz").display(),
        fixtures.join("tiny-llama").display()
    )
}

/// The tiny Llama on the HH fixture: weights shared by every prompt, so the
/// summed gradients differ from one process's by rounding.
#[test]
fn two_ranks_train_a_tiny_llama_as_one_process() {
    let text = llama_manifest();
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), "llama.toml", &text);
    let (one, dp) = (dir.path().join("one"), dir.path().join("dp"));
    single(&runner_args(&m, &one, &[]));
    let o = ok(two_ranks(&runner_args(&m, &dp, &[]), None));
    ranks_agree(&String::from_utf8_lossy(&o.stderr), &["brain"]);
    same_training(&one, &dp, &[("brain", "brain")], TOLERANCE, "tiny Llama");
    assert_trained(&dp);
}

/// Trained: far further from the tiny Llama fixture's weights than the
/// tolerance between 2 ranks and one process.
fn assert_trained(out: &Path) {
    let path = root().join("tests/fixtures/tiny-llama/model.safetensors");
    let start: Vec<(String, Vec<f64>)> = tch::Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let v = Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).view([-1])).unwrap();
            (n, v)
        })
        .collect();
    let trained = weights(out, "brain");
    let moved = trained
        .iter()
        .filter_map(|(n, v)| Some((v, &start.iter().find(|(m, _)| m == n)?.1)))
        .flat_map(|(v, w)| v.iter().zip(w).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f64::max);
    assert!(moved > 100.0 * TOLERANCE, "the weights moved {moved}");
}

#[test]
fn a_killed_two_rank_run_resumes_to_the_uninterrupted_results() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), "exact.toml", EXACT);
    let straight = dir.path().join("straight");
    ok(two_ranks(&runner_args(&m, &straight, &[]), None));

    // BRAIn's 25th step, after its checkpoint at step 20: every rank dies
    // there (they step together), as `kill -9` would leave them.
    let killed = dir.path().join("killed");
    let o = two_ranks(&runner_args(&m, &killed, &[]), Some("train-step:25"));
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(killed
        .join("checkpoints/brain/seed-1/model.safetensors")
        .exists());
    assert!(!killed
        .join("checkpoints/brain/seed-1/finished.json")
        .exists());

    let o = ok(two_ranks(&runner_args(&m, &killed, &["--resume"]), None));
    let stderr = String::from_utf8_lossy(&o.stderr);
    // Both ranks read rank 0's checkpoint.
    assert_eq!(
        stderr
            .matches("BRAIn (seed 1): resuming at step 20 of 30")
            .count(),
        2,
        "{stderr}"
    );
    ranks_agree(&stderr, &["BRAIn", "RLOO", "RSO"]);
    for run in ["brain", "rloo", "rso"] {
        for file in [
            format!("steps/{run}.csv"),
            format!("checkpoints/{run}/seed-1/model.safetensors"),
        ] {
            let (a, b) = (
                std::fs::read(straight.join(&file)).unwrap(),
                std::fs::read(killed.join(&file)).unwrap(),
            );
            assert!(a == b, "{file} differs after the resume");
        }
    }
}

/// A checkpoint holds no trace of the world size: a 2-rank run killed
/// inside a step resumes in one process, and a one-process run killed the
/// same way resumes on 2 ranks, each to the uninterrupted run's weights
/// (bit for bit: on this manifest 2 ranks train as one process does) and
/// step logs.
#[test]
fn a_killed_run_resumes_on_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), "exact.toml", EXACT);
    let straight = dir.path().join("straight");
    ok(two_ranks(&runner_args(&m, &straight, &[]), None));
    let runs = [("BRAIn", "brain"), ("RLOO", "rloo"), ("RSO", "rso")];

    // Killed on 2 ranks, resumed in one process.
    let down = dir.path().join("down");
    let o = two_ranks(&runner_args(&m, &down, &[]), Some("train-step:25"));
    assert!(!o.status.success());
    let o = single(&runner_args(&m, &down, &["--resume"]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("BRAIn (seed 1): resuming at step 20 of 30"),
        "{stderr}"
    );
    same_training(&straight, &down, &runs, 0.0, "2 ranks, then 1");

    // Killed in one process, resumed on 2 ranks.
    let up = dir.path().join("up");
    let o = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(runner_args(&m, &up, &[]))
        .env("BRAIN_RS_FAILPOINT", "train-step:25")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = ok(two_ranks(&runner_args(&m, &up, &["--resume"]), None));
    let stderr = String::from_utf8_lossy(&o.stderr);
    ranks_agree(&stderr, &["BRAIn", "RLOO", "RSO"]);
    same_training(&straight, &up, &runs, 0.0, "1 rank, then 2");
}

/// The server sampler under `mpiexec -n 2`: each rank sends its block of
/// each step's prompts, seeded by where they stand in the step, so the
/// server sees the single process's (prompt, seed) pairs and answers them
/// alike; rank 0 alone exports each refresh and has the server reload it
/// (the stand-in loads the exported HF directory and serves it, and the
/// densities are checked to 1e-3 at every draw); the ranks train to the
/// single process's weights.
#[test]
fn two_ranks_sample_on_a_server_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let serve = || standin::StandIn::start(standin::tiny_llama(), standin::Options::reloading());
    // A reward that varies between the tiny Llama's gibberish completions
    // (the lexicon scores them all 0, and BRAIn's gradient would then be
    // rounding noise).
    let text = llama_manifest().replace(
        "[reward.lexicon]",
        "[reward.random-table]\nscale = 1.0\nseed = 7",
    );
    let with_server = |url: &str, exports: &Path| {
        format!(
            "{}\n[sampler.server]\nurls = [{url:?}]\nmodel = \"tiny-llama\"\nretries = 1\n\
             backoff_s = 0.01\ntolerance = 1e-3\ntolerance_per_token = 0.0\n\
             proposal = {{ proposal_model = \"proposal\", export_dir = {:?}, \
             reload = \"sglang-update-weights\" }}\n",
            text,
            exports.display().to_string()
        )
    };
    // (prompt ids, seed) of every completion request, sorted.
    let asked = |server: &standin::StandIn| -> Vec<(Vec<i64>, u64)> {
        let mut pairs: Vec<(Vec<i64>, u64)> = server
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/completions")
            .flat_map(|r| {
                let seed = r.body["seed"].as_u64().unwrap();
                r.prompts().into_iter().map(move |p| (p, seed))
            })
            .collect();
        pairs.sort();
        pairs
    };
    let reloads = |server: &standin::StandIn| {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/update_weights_from_disk")
            .count()
    };

    let (server_one, server_dp) = (serve(), serve());
    let m_one = manifest(
        dir.path(),
        "one.toml",
        &with_server(&server_one.url, &dir.path().join("exports-one")),
    );
    let m_dp = manifest(
        dir.path(),
        "dp.toml",
        &with_server(&server_dp.url, &dir.path().join("exports-dp")),
    );
    let (one, dp) = (dir.path().join("one"), dir.path().join("dp"));
    single(&runner_args(&m_one, &one, &[]));
    let o = ok(two_ranks(&runner_args(&m_dp, &dp, &[]), None));
    ranks_agree(&String::from_utf8_lossy(&o.stderr), &["brain"]);

    let (a, b) = (asked(&server_one), asked(&server_dp));
    assert_eq!(a.len(), 4 * 4, "4 steps of 4 prompts: {a:?}");
    assert_eq!(a, b, "the ranks asked for other prompts or seeds");
    // One reload per refresh (at steps 2 and, on the way, none other), from rank 0 only.
    assert_eq!(reloads(&server_one), 1);
    assert_eq!(
        reloads(&server_dp),
        1,
        "a rank other than 0 reloaded the server"
    );
    same_training(
        &one,
        &dp,
        &[("brain", "brain")],
        TOLERANCE,
        "tiny Llama on a server",
    );
    assert_trained(&dp);
    let diffs = column(&dp, "brain", "server_logp_max_abs_diff");
    assert!(diffs.iter().all(|d| (0.0..1e-3).contains(d)), "{diffs:?}");
}
