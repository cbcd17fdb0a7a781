//! Every run of a manifest draws the same samples from the prior at the same
//! step (common random numbers): four estimators that draw 8 prior samples
//! per prompt share one draw per step, and each trains exactly as it does
//! alone. (Its own test binary: it counts the process's sampler calls.)

use align_core::manifest::Manifest;

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
