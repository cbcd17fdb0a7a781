//! The paper's two settings end to end on the format fixtures: the real
//! `experiments/hh.toml` and `experiments/tldr.toml` (and their reward-model
//! stages, `rm-hh.toml` and `rm-tldr.toml`), loaded with `--set` overrides
//! that swap in the fixture data files and tiny random models and cut the
//! budgets. Each test trains the RM stage on its fixture, runs the
//! experiment (SFT stage, BRAIn, DPO-sft, RSO, SLiC-HF) with that RM as the
//! training reward and the tiny Llama as the LLM judge, and checks the
//! results: every run has rows, samples with gold responses, a summary
//! column per judge and the HTML report.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use align_core::manifest::Manifest;
use align_rewards::pipeline::{self, RmManifest, StageStatus};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn fixture(p: &str) -> String {
    root().join("tests/fixtures").join(p).display().to_string()
}

/// The SFT stage caches into `$BRAIN_RS_CACHE/stages`: a fresh directory
/// under cargo's test scratch space (never `~/.cache`), set once per process.
fn stage_cache() {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("pipelines-cache-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        std::env::set_var("BRAIN_RS_CACHE", &dir);
        dir
    });
}

/// Trains the reward-model stage of `rm_manifest` on a fixture into `dir`,
/// with the tiny Llama as its body; returns the trained model's directory.
fn train_rm_stage(rm_manifest: &str, format: &str, data: &str, dir: &Path) -> PathBuf {
    let path = root().join("experiments").join(rm_manifest);
    let out = dir.join("rm");
    let m = RmManifest::load(
        &path,
        &[
            format!("out={:?}", out.display().to_string()),
            format!("model.backbone={:?}", fixture("tiny-llama")),
            "model.device=\"cpu\"".into(),
            // The tiny Llama's position limit.
            "model.max_len=64".into(),
            format!("data.preference-file.format={format:?}"),
            format!("data.preference-file.path={:?}", fixture(data)),
            // The format fixtures hold deliberately malformed rows.
            "data.preference-file.max_bad_fraction=0.5".into(),
            "data.preference-file.split={ validation = 0.0, test = 0.5 }".into(),
            "train.epochs=1".into(),
            "train.batch_size=2".into(),
            "train.lr=1e-3".into(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.objective, pipeline::Objective::BradleyTerry);
    let done = pipeline::ensure_trained(&m, &dir.join("rm-results"), false).unwrap();
    assert_eq!(done.status, StageStatus::Trained);
    assert!(done.model_dir.join("config.json").is_file());
    done.model_dir
}

/// Loads `experiment` with the fixture overrides, runs it into `dir/out`
/// and checks what it wrote.
fn run_experiment(experiment: &str, data: &str, rm: &Path, dir: &Path) {
    let path = root().join("experiments").join(experiment);
    // The stage is wired to the RM manifest trained above.
    let stages = Manifest::stages(&path, &[]).unwrap();
    assert_eq!(stages.reward_models.len(), 1, "{:?}", stages.reward_models);
    let tiny = fixture("tiny-llama");
    let overrides = [
        "device=\"cpu\"".to_string(),
        "stages.reward_models=[]".into(),
        format!("task.preference-file.path={:?}", fixture(data)),
        "task.preference-file.max_bad_fraction=0.5".into(),
        "task.preference-file.split={ validation = 0.0, test = 0.5 }".into(),
        "task.preference-file.max_new_tokens=4".into(),
        "task.preference-file.eval_prompts=2".into(),
        format!("model.hf.path={tiny:?}"),
        "sft.batch_size=2".into(),
        "sft.max_len=4".into(),
        "sft.lr=1e-3".into(),
        format!("reward.hf-rm.path={:?}", rm.display().to_string()),
        "reward.hf-rm.max_len=64".into(),
        format!("evaluators.winrate-llm.backend.local.path={tiny:?}"),
        "train.steps=2".into(),
        "train.prompts_per_step=2".into(),
        "train.eval_every=0".into(),
        "train.lr=1e-3".into(),
    ];
    let manifest = Manifest::load(&path, &overrides).unwrap_or_else(|e| panic!("{e}"));
    assert!(manifest.sft.is_some(), "the setting fine-tunes first");
    let out = dir.join("out");
    let outcome = runner::run(&manifest, &out, false).unwrap();

    let runs = ["BRAIn", "DPO-sft", "RSO", "SLiC-HF"];
    for run in runs {
        let rows: Vec<_> = outcome.rows.iter().filter(|r| r.name == run).collect();
        assert!(!rows.is_empty(), "no rows for {run}");
        for row in rows {
            for col in ["win_train", "win_llm"] {
                let w = row
                    .metrics
                    .get(col)
                    .unwrap_or_else(|| panic!("{run}: no {col}"));
                assert!((0.0..=1.0).contains(&w), "{run}: {col} = {w}");
            }
        }
        let samples = out.join(align_report::format::samples_path(run));
        let text = std::fs::read_to_string(&samples)
            .unwrap_or_else(|e| panic!("{}: {e}", samples.display()));
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!records.is_empty(), "{}: empty", samples.display());
        for r in &records {
            let gold = r["gold"].as_str().unwrap_or_else(|| panic!("no gold: {r}"));
            assert!(!gold.is_empty(), "empty gold: {r}");
        }
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for col in ["win_train", "win_llm"] {
        assert!(summary.contains(col), "summary.md lacks {col}:\n{summary}");
    }
    for run in runs {
        assert!(summary.contains(run), "summary.md lacks {run}:\n{summary}");
    }
    assert!(out.join("report.html").is_file());
}

#[test]
fn hh_rlhf_end_to_end_on_the_fixture() {
    stage_cache();
    let dir = tempfile::tempdir().unwrap();
    let data = "data/hh-rlhf-clean.jsonl.gz";
    let rm = train_rm_stage("rm-hh.toml", "hh-rlhf", data, dir.path());
    run_experiment("hh.toml", data, &rm, dir.path());
}

#[test]
fn tldr_end_to_end_on_the_fixtures() {
    stage_cache();
    let dir = tempfile::tempdir().unwrap();
    let rm = train_rm_stage(
        "rm-tldr.toml",
        "summarize-from-feedback",
        "data/comparisons.jsonl",
        dir.path(),
    );
    run_experiment(
        "tldr.toml",
        "data/openai_summarize_tldr.parquet",
        &rm,
        dir.path(),
    );
}

/// A missing data file stops the experiment with what to download and where
/// to put it.
#[test]
fn a_missing_data_file_says_what_to_download_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("hh-rlhf/helpful-base/test.jsonl.gz");
    let path = root().join("experiments/hh.toml");
    let err = Manifest::load(
        &path,
        &[format!(
            "task.preference-file.path={:?}",
            missing.display().to_string()
        )],
    )
    .err()
    .expect("the data file is missing")
    .to_string();
    for part in [
        "download `helpful-base/test.jsonl.gz`",
        "https://huggingface.co/datasets/Anthropic/hh-rlhf",
        &format!("put it at {}", missing.display()),
    ] {
        assert!(err.contains(part), "`{part}` not in:\n{err}");
    }
    let missing = dir.path().join("tldr/test.parquet");
    let err = Manifest::load(
        &root().join("experiments/tldr.toml"),
        &[format!(
            "task.preference-file.path={:?}",
            missing.display().to_string()
        )],
    )
    .err()
    .expect("the data file is missing")
    .to_string();
    for part in [
        "https://huggingface.co/datasets/CarperAI/openai_summarize_tldr",
        &format!("put it at {}", missing.display()),
    ] {
        assert!(err.contains(part), "`{part}` not in:\n{err}");
    }
}
