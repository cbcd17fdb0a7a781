//! Plugin tables refuse bad numbers and extreme settings when the manifest
//! is loaded, located at file:line:column with the key, the value and the
//! bound: estimators' sample counts and float settings, the tasks' counts.
//! Every plugin crate is linked here, as in the runner, so whole manifests
//! load; the shipped experiments still do.

use std::path::{Path, PathBuf};

use align_core::manifest::{Manifest, ManifestError};

// Link every plugin crate so its `inventory` registrations are kept.
use align_evaluators as _;
use align_goodness as _;
use align_models as _;
use align_rewards as _;
use {brain as _, dpo as _, rloo as _, rrhf as _, rso as _, slic as _};

/// An exact-style manifest with a run of every estimator.
const BASE: &str = r#"name = "plugin-limits"
seed = 1

[task.enumerable]
prompts = 2
vocab = 3
length = 2

[model.tabular]

[reward.random-table]

[goodness.bt-exp]
tau = 1.0

[train]
steps = 2
lr = 0.1

[[runs]]
name = "brain"
[runs.estimator.brain]
n = 4

[[runs]]
name = "dpo"
[runs.estimator.dpo]
beta = 0.1
n = 2

[[runs]]
name = "rso"
[runs.estimator.rso]
candidates = 4
accepted = 2
beta = 0.5

[[runs]]
name = "slic"
[runs.estimator.slic]
delta = 1.0
lambda = 0.1
m = 4

[[runs]]
name = "rrhf"
[runs.estimator.rrhf]
n = 4
lambda = 1.0

[[runs]]
name = "rloo"
[runs.estimator.rloo]
n = 4
clip = 0.2
"#;

fn load(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::from_str(Path::new("m.toml"), text)
}

/// `BASE` with the first line starting `start` after `section` replaced.
fn edited(base: &str, section: &str, start: &str, with: &str) -> String {
    let from = base.find(section).expect("section") + section.len();
    let at = from + base[from..].find(start).expect("line");
    let end = at + base[at..].find('\n').expect("newline");
    format!("{}{with}{}", &base[..at], &base[end..])
}

/// Refused at the line of `needle` (column 1: the key) with `message`.
fn refused_at(text: &str, needle: &str, message: &str) -> ManifestError {
    let e = match load(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    };
    let line = text[..text.find(needle).expect("needle")]
        .matches('\n')
        .count()
        + 1;
    let shown = e.to_string();
    assert_eq!(e.location, Some((line, 1)), "{shown}");
    assert_eq!(e.message, message, "{shown}");
    assert!(shown.starts_with(&format!("m.toml:{line}:1: {message}\n")));
    assert!(shown.contains(needle), "{shown}");
    e
}

#[test]
fn the_base_manifest_loads() {
    let m = load(BASE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.runs.len(), 6);
}

#[test]
fn astronomical_sample_counts_are_refused_with_the_bound() {
    for (section, key, what) in [
        ("[runs.estimator.brain]", "n", "samples per prompt"),
        ("[runs.estimator.dpo]", "n", "samples per prompt"),
        ("[runs.estimator.rrhf]", "n", "candidates per prompt"),
        ("[runs.estimator.rloo]", "n", "samples per prompt"),
        (
            "[runs.estimator.rso]",
            "candidates",
            "candidates drawn per prompt",
        ),
        ("[runs.estimator.slic]", "m", "decodes per prompt"),
    ] {
        let plugin = section
            .trim_start_matches("[runs.estimator.")
            .trim_end_matches(']');
        for v in ["65537", "9223372036854775807"] {
            let line = format!("{key} = {v}");
            let text = edited(BASE, section, &format!("{key} ="), &line);
            let e = refused_at(
                &text,
                &line,
                &format!(
                    "invalid `{key}` for estimator `{plugin}`: must be at most 65536 ({what}), got {v}"
                ),
            );
            assert!(e.fix.contains(&format!("estimator.{plugin}.{key}")), "{e}");
        }
        // The bound itself is allowed (rso also needs accepted ≤ candidates).
        let text = edited(
            BASE,
            section,
            &format!("{key} ="),
            &format!("{key} = 65536"),
        );
        load(&text).unwrap_or_else(|e| panic!("{plugin}.{key} = 65536: {e}"));
    }
}

#[test]
fn non_finite_estimator_settings_are_refused() {
    for (section, start, line, message) in [
        (
            "[runs.estimator.dpo]",
            "beta",
            "beta = nan",
            "invalid `beta` for estimator `dpo`: must be > 0, got NaN",
        ),
        (
            "[runs.estimator.dpo]",
            "beta",
            "beta = inf",
            "invalid `beta` for estimator `dpo`: must be > 0, got inf",
        ),
        (
            "[runs.estimator.dpo]",
            "beta",
            "beta = 0.1\nlabel_smoothing = nan",
            "invalid `label_smoothing` for estimator `dpo`: must be in [0, 0.5), got NaN",
        ),
        (
            "[runs.estimator.rso]",
            "beta",
            "beta = -inf",
            "invalid `beta` for estimator `rso`: must be > 0, got -inf",
        ),
        (
            "[runs.estimator.rso]",
            "beta",
            "beta = 0.5\ngamma = nan",
            "invalid `gamma` for estimator `rso`: must be > 0, got NaN",
        ),
        (
            "[runs.estimator.slic]",
            "delta",
            "delta = nan",
            "invalid `delta` for estimator `slic`: must be > 0, got NaN",
        ),
        (
            "[runs.estimator.slic]",
            "lambda",
            "lambda = inf",
            "invalid `lambda` for estimator `slic`: must be ≥ 0, got inf",
        ),
        (
            "[runs.estimator.rrhf]",
            "lambda",
            "lambda = nan",
            "invalid `lambda` for estimator `rrhf`: must be ≥ 0, got NaN",
        ),
        (
            "[runs.estimator.rloo]",
            "clip",
            "clip = nan",
            "invalid `clip` for estimator `rloo`: must be in (0, 1), got NaN",
        ),
        (
            "[runs.estimator.rloo]",
            "clip",
            "clip = 0.2\ntau = inf",
            "invalid `tau` for estimator `rloo`: must be ≥ 0, got inf",
        ),
        (
            "[runs.estimator.brain]",
            "n",
            "n = 4\nprior_fraction = nan",
            "invalid `prior_fraction` for estimator `brain`: must be in [0, 1), got NaN",
        ),
        (
            "[goodness.bt-exp]",
            "tau",
            "tau = nan",
            "invalid `tau` for goodness `bt-exp`: must be > 0, got NaN",
        ),
        (
            "[goodness.bt-exp]",
            "tau",
            "tau = inf",
            "invalid `tau` for goodness `bt-exp`: must be > 0, got inf",
        ),
    ] {
        let text = edited(BASE, section, start, line);
        let needle = line.lines().last().unwrap();
        refused_at(&text, needle, message);
    }
}

#[test]
fn the_toy_task_refuses_lengths_past_its_exponent() {
    // 2^32 + 2 was read as length 2 by `vocab^(length as i32)`: accepted,
    // then an overflow when the output space was enumerated.
    let text = edited(BASE, "[task.enumerable]", "length", "length = 4294967298");
    refused_at(
        &text,
        "length = 4294967298",
        "invalid `length` for task `enumerable`: must be at most 64 (vocab^length must stay ≤ 1e6 to enumerate), got 4294967298",
    );
    let text = edited(BASE, "[task.enumerable]", "length", "length = 13");
    refused_at(
        &text,
        "length = 13",
        "invalid `length` for task `enumerable`: vocab^length must stay ≤ 1e6 to enumerate",
    );
}

/// `BASE` with its task replaced by `task` (a `[task.NAME]` table).
fn with_task(task: &str) -> String {
    let at = BASE.find("[task.enumerable]").unwrap();
    let end = BASE.find("[model.tabular]").unwrap();
    format!("{}{task}\n\n{}", &BASE[..at], &BASE[end..])
}

fn hh_fixture() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/data/hh-rlhf.jsonl")
        .display()
        .to_string()
}

#[test]
fn text_tasks_bound_their_counts() {
    let sentiment = "[task.sentiment]\nmax_new_tokens = 8\ntrain_prompts = 4\neval_prompts = 4\n";
    load(&with_task(sentiment)).unwrap_or_else(|e| panic!("{e}"));
    for (line, message) in [
        (
            "max_new_tokens = 0",
            "invalid `max_new_tokens` for task `sentiment`: must be between 1 and 1048576 (tokens per completion), got 0",
        ),
        (
            "max_new_tokens = 1048577",
            "invalid `max_new_tokens` for task `sentiment`: must be between 1 and 1048576 (tokens per completion), got 1048577",
        ),
        (
            "train_prompts = 0",
            "invalid `train_prompts` for task `sentiment`: must be between 1 and 16777216 (training prompts), got 0",
        ),
        (
            "train_prompts = 100000000",
            "invalid `train_prompts` for task `sentiment`: must be between 1 and 16777216 (training prompts), got 100000000",
        ),
        (
            "eval_prompts = 100000000",
            "invalid `eval_prompts` for task `sentiment`: must be between 0 and 16777216 (held-out prompts), got 100000000",
        ),
    ] {
        let key = line.split(' ').next().unwrap();
        let text = with_task(&edited(sentiment, "", key, line));
        refused_at(&text, line, message);
    }
    let file = format!(
        "[task.preference-file]\nformat = \"hh-rlhf\"\npath = {:?}",
        hh_fixture()
    );
    load(&with_task(&file)).unwrap_or_else(|e| panic!("{e}"));
    for (line, message) in [
        (
            "max_new_tokens = 9223372036854775807",
            "invalid `max_new_tokens` for task `preference-file`: must be between 1 and 1048576 (tokens per completion), got 9223372036854775807",
        ),
        (
            "train_records = 0",
            "invalid `train_records` for task `preference-file`: must be between 1 and 16777216 (training prompts), got 0",
        ),
        (
            "max_bad_fraction = nan",
            "invalid `max_bad_fraction` for task `preference-file`: must be in [0, 1], got NaN",
        ),
    ] {
        let text = with_task(&format!("{file}\n{line}"));
        refused_at(&text, line, message);
    }
}

/// The bounds leave every shipped experiment loadable: each loads, or stops
/// only at a file this machine lacks (a downloaded model or reward model).
#[test]
fn the_shipped_experiments_still_load() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        if name.starts_with("rm-") {
            match align_rewards::pipeline::RmManifest::load(&path, &[]) {
                Ok(_) => loaded += 1,
                Err(e) => assert!(e.message.contains("not found"), "{name}: {e}"),
            }
            continue;
        }
        match Manifest::load(&path, &[]) {
            Ok(_) => loaded += 1,
            Err(e) => assert!(
                e.message.contains("not found") || e.message.contains("does not exist"),
                "{name}: {e}"
            ),
        }
    }
    // The toy manifests need no download.
    assert!(loaded >= 6, "only {loaded} manifests loaded");
}
