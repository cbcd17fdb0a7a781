//! Every run of a manifest draws the same samples from the prior at the same
//! step (common random numbers): four estimators that draw 8 prior samples
//! per prompt share one draw per step, and each trains exactly as it does
//! alone. (Its own test binary: it counts the process's sampler calls.)

use align_core::manifest::Manifest;

/// The tests count the process's sampler calls: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const MANIFEST: &str = r#"
name = "shared"
seed = 1
seeds = [1, 2]
device = "cpu"
threads = 1

[task.enumerable]
prompts = 4
vocab = 5
length = 3

[model.tabular]
[reward.random-table]
[goodness.bt-exp]
tau = 1.0
[evaluators.exact-kl]

[train]
steps = 6
lr = 0.05

[[runs]]
name = "BRAIn"
[runs.estimator.brain]
n = 8
refresh_every = 0

[[runs]]
name = "DPO-sft"
[runs.estimator.dpo]
beta = 1.0
n = 8
pairs = "all"

[[runs]]
name = "RSO"
[runs.estimator.rso]
candidates = 8
accepted = 4

[[runs]]
name = "SLiC-HF"
[runs.estimator.slic]
delta = 1.0
lambda = 0.1
m = 8
"#;

fn load(dir: &std::path::Path) -> Manifest {
    let path = dir.join("shared.toml");
    std::fs::write(&path, MANIFEST).unwrap();
    Manifest::load(&path, &[]).unwrap()
}

#[test]
fn four_estimators_share_one_prior_draw_per_step() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = load(dir.path());
    let before = align_core::sampling::calls();
    let together = runner::run(&manifest, &dir.path().join("together"), false).unwrap();
    let calls = align_core::sampling::calls() - before;
    // Per seed: one shared draw at each of the 6 steps, and SLiC-HF's
    // reference outputs (the toy task has none: one prior sample per prompt,
    // drawn once when its run starts). Unshared, it would be 4 · 6 + 1.
    assert_eq!(calls, 2 * (6 + 1), "sampler calls");

    // Sharing changes nothing: each run alone trains to the same numbers.
    for (i, name) in ["BRAIn", "DPO-sft", "RSO", "SLiC-HF"].iter().enumerate() {
        // Only run `i`: every other [[runs]] block cut.
        let blocks: Vec<&str> = MANIFEST.split("[[runs]]").collect();
        let text = format!("{}[[runs]]{}", blocks[0], blocks[i + 1]);
        let path = dir.path().join(format!("alone-{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let alone = Manifest::load(&path, &[]).unwrap();
        let out = runner::run(&alone, &dir.path().join(format!("alone-{i}")), false).unwrap();
        for seed in [1, 2] {
            let row = |o: &runner::Outcome| {
                o.rows
                    .iter()
                    .find(|r| r.name == *name && r.seed == Some(seed))
                    .map(|r| r.metrics.clone())
                    .unwrap()
            };
            assert_eq!(row(&together), row(&out), "{name} at seed {seed}");
        }
    }
}

/// The manifest's runs, `[[runs]]` blocks `keep` only, with `extra` added
/// to its `[train]` table.
fn manifest_with(dir: &std::path::Path, name: &str, keep: &[usize], extra: &str) -> Manifest {
    let blocks: Vec<&str> = MANIFEST.split("[[runs]]").collect();
    let head = blocks[0].replace("[train]\n", &format!("[train]\n{extra}\n"));
    let mut text = head;
    for &i in keep {
        text.push_str("[[runs]]");
        text.push_str(blocks[i + 1]);
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, &text).unwrap();
    Manifest::load(&path, &[]).unwrap()
}

/// With `train.sample_cache = "disk"` the prior's draws outlive the
/// process: adding a fourth estimator to a three-estimator manifest draws
/// none of the shared samples again, and every run trains to the numbers it
/// gets with fresh draws.
#[test]
fn an_added_estimator_reads_the_prior_draws_from_disk() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // This binary's only user of the cache folder (tests here run in threads).
    std::env::set_var("BRAIN_RS_CACHE", dir.path().join("cache"));
    let disk = r#"sample_cache = "disk""#;
    let three = manifest_with(dir.path(), "three", &[0, 1, 2], disk);
    let before = align_core::sampling::calls();
    let first = runner::run(&three, &dir.path().join("three"), false).unwrap();
    // Per seed: one shared draw at each of the 6 steps.
    assert_eq!(align_core::sampling::calls() - before, 2 * 6, "first run");
    let files = std::fs::read_dir(dir.path().join("cache/samples"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert_eq!(files, 2 * 6, "one file per shared draw");

    let four = manifest_with(dir.path(), "four", &[0, 1, 2, 3], disk);
    let before = align_core::sampling::calls();
    let second = runner::run(&four, &dir.path().join("four"), false).unwrap();
    // Only SLiC-HF's reference outputs (one prior sample per prompt, drawn
    // when its run starts, not a shared draw) are sampled.
    assert_eq!(align_core::sampling::calls() - before, 2, "second run");

    // Read back, the draws train every run to the same numbers as fresh ones.
    let fresh = manifest_with(
        dir.path(),
        "fresh",
        &[0, 1, 2, 3],
        r#"sample_cache = "off""#,
    );
    let before = align_core::sampling::calls();
    let fresh = runner::run(&fresh, &dir.path().join("fresh"), false).unwrap();
    assert_eq!(
        align_core::sampling::calls() - before,
        2 * (4 * 6 + 1),
        "unshared"
    );
    let metrics = |o: &runner::Outcome, name: &str, seed: u64| {
        o.rows
            .iter()
            .find(|r| r.name == name && r.seed == Some(seed))
            .map(|r| r.metrics.clone())
            .unwrap()
    };
    for seed in [1, 2] {
        for name in ["BRAIn", "DPO-sft", "RSO"] {
            assert_eq!(metrics(&first, name, seed), metrics(&second, name, seed));
            assert_eq!(metrics(&first, name, seed), metrics(&fresh, name, seed));
        }
        let slic = "SLiC-HF";
        assert_eq!(metrics(&second, slic, seed), metrics(&fresh, slic, seed));
    }
}
