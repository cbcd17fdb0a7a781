//! The reward model as a cached stage, on the tiny BERT fixture and the
//! HH-RLHF pairs fixture: a second `ensure_trained` reuses the model without
//! training, a changed setting or input retrains and replaces it, and an
//! `out` the pipeline did not write is refused and left as it was.

use std::path::{Path, PathBuf};

use align_rewards::pipeline::{
    ensure_trained, stage_key, train_rm, RmManifest, StageRecord, StageStatus, STAGE_FILE,
    STAGE_FORMAT,
};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(p)
}

/// A backbone directory: the tiny BERT's config and weights with the tiny
/// BERT reward model's tokenizer (same vocabulary), so tests may edit it.
fn backbone(dir: &Path) -> PathBuf {
    let b = dir.join("backbone");
    std::fs::create_dir(&b).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-bert").join(f), b.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-bert-rm").join(f), b.join(f)).unwrap();
    }
    b
}

/// A temporary directory holding a backbone, a copy of the pairs data and a
/// Bradley–Terry manifest on them that writes `rm/`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        backbone(dir.path());
        std::fs::copy(
            fixture("data/hh-rlhf-clean.jsonl.gz"),
            dir.path().join("pairs.jsonl.gz"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rm.toml"),
            r#"name = "tiny-stage"
objective = "bradley-terry"
out = "rm"

[model]
backbone = "backbone"
pooling = "mean"
max_len = 32
device = "cpu"

[data.preference-file]
format = "hh-rlhf"
path = "pairs.jsonl.gz"
split = { validation = 0.0, test = 0.3 }

[train]
epochs = 2
batch_size = 4
lr = 1e-3
"#,
        )
        .unwrap();
        Setup { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn manifest(&self, overrides: &[&str]) -> RmManifest {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RmManifest::load(&self.path("rm.toml"), &o).unwrap()
    }

    fn record(&self) -> StageRecord {
        let text = std::fs::read_to_string(self.path("rm").join(STAGE_FILE)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every entry of the temporary directory (no temporary siblings left).
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn second_call_is_cached_and_does_not_train() {
    let s = Setup::new();
    let m = s.manifest(&[]);
    let first = ensure_trained(&m, &s.path("results-1"), false).unwrap();
    assert_eq!(first.status, StageStatus::Trained);
    assert!(first.trained.is_some());
    let rec = s.record();
    assert_eq!(rec.written_by, "brain-rs train-rm");
    assert_eq!(rec.format, STAGE_FORMAT);
    assert_eq!(rec.key, stage_key(&m).unwrap().key);
    assert_eq!(rec.manifest, "tiny-stage");
    assert_eq!(rec.metrics.epochs.len(), 2);
    assert!(!rec.metrics.held_out.is_empty());
    // Backbone config, tokenizer files and weights, then the data file.
    let roles: Vec<&str> = rec.hashed.files.iter().map(|f| f.role.as_str()).collect();
    assert_eq!(
        roles,
        ["backbone", "backbone", "backbone", "backbone", "data"]
    );
    assert!(rec.hashed.settings.get("out").is_none());
    assert!(s.path("results-1/summary.md").is_file());
    let weights = s.path("rm/model.safetensors");
    let written = modified(&weights);

    let second = ensure_trained(&m, &s.path("results-2"), false).unwrap();
    assert_eq!(second.status, StageStatus::Cached);
    assert!(second.trained.is_none());
    assert_eq!(second.record.key, rec.key);
    assert_eq!(modified(&weights), written, "the model was rewritten");
    assert!(
        !s.path("results-2").exists(),
        "a cached stage wrote results"
    );
    // The name is cosmetic: renaming the manifest reuses the model.
    let renamed = ensure_trained(&s.manifest(&["name=other"]), &s.path("r"), false).unwrap();
    assert_eq!(renamed.status, StageStatus::Cached);
    // The model directory is a reward model the `hf-rm` loader reads.
    let rm = align_rewards::scalar::ScalarRm::from_checkpoint(
        &s.path("rm"),
        &align_rewards::scalar::Expect {
            num_labels: 1,
            label: None,
        },
        tch::Device::Cpu,
    )
    .unwrap();
    assert!(rm.score_texts(&["hello there"], 1).unwrap()[0].is_finite());
}

/// Two processes (threads here: each holds its own open file, as two
/// processes would) asking for the same stage at once: one trains while the
/// other waits for its lock, then reuses its model; no lock file is left.
#[test]
fn concurrent_callers_train_the_stage_once() {
    let s = Setup::new();
    let before = s.entries();
    let statuses: Vec<StageStatus> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let (m, results) = (s.manifest(&[]), s.path(&format!("results-{i}")));
                scope.spawn(move || ensure_trained(&m, &results, false).unwrap().status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let trained = statuses
        .iter()
        .filter(|s| **s == StageStatus::Trained)
        .count();
    assert_eq!(trained, 1, "{statuses:?}");
    assert!(statuses.contains(&StageStatus::Cached), "{statuses:?}");
    let mut want = before;
    want.push("rm".into());
    want.push(
        if s.path("results-0").exists() {
            "results-0"
        } else {
            "results-1"
        }
        .into(),
    );
    want.sort();
    assert_eq!(
        s.entries(),
        want,
        "only the model and one results directory"
    );
}

#[test]
fn a_changed_setting_or_input_retrains_and_replaces() {
    let s = Setup::new();
    let before = s.entries();
    let first = ensure_trained(&s.manifest(&[]), &s.path("results"), false).unwrap();
    assert_eq!(first.status, StageStatus::Trained);
    let old_key = s.record().key;

    let changed = s.manifest(&["train.lr=2e-3"]);
    let again = ensure_trained(&changed, &s.path("results"), false).unwrap();
    assert_eq!(again.status, StageStatus::Trained);
    let new_key = s.record().key;
    assert_ne!(new_key, old_key);
    assert_eq!(new_key, stage_key(&changed).unwrap().key);
    // Replaced in place: no temporary or old directory left beside it.
    let mut after = before.clone();
    after.extend(["results".to_string(), "rm".to_string()]);
    after.sort();
    assert_eq!(s.entries(), after);
    // The new settings are now the cached ones; the old ones are stale.
    let cached = ensure_trained(&changed, &s.path("results"), false).unwrap();
    assert_eq!(cached.status, StageStatus::Cached);

    // The bytes of the backbone and of the data are in the key.
    let tokenizer_config = s.path("backbone/tokenizer_config.json");
    let text = std::fs::read_to_string(&tokenizer_config).unwrap();
    std::fs::write(&tokenizer_config, format!("{text}\n")).unwrap();
    let touched = stage_key(&changed).unwrap().key;
    assert_ne!(touched, new_key, "backbone bytes");
    std::fs::write(s.path("pairs.jsonl.gz"), b"other bytes").unwrap();
    assert_ne!(stage_key(&changed).unwrap().key, touched, "data bytes");
    // Where it runs is not what it learns.
    assert_eq!(
        stage_key(&s.manifest(&["model.device=auto"])).unwrap().key,
        stage_key(&s.manifest(&[])).unwrap().key
    );
}

#[test]
fn a_foreign_out_is_refused_and_left_untouched() {
    let s = Setup::new();
    let out = s.path("rm");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let m = s.manifest(&[]);
    for result in [
        ensure_trained(&m, &s.path("results"), false).map(|_| ()),
        train_rm(&m, &s.path("results"), false).map(|_| ()),
    ] {
        let err = format!("{:#}", result.unwrap_err());
        assert!(
            err.contains(&out.display().to_string())
                && err.contains("not written by this pipeline")
                && err.contains("Move it away"),
            "{err}"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(names.len(), 1);
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(!s.path("results").exists(), "refused only after training");

    // A stage.json someone else wrote does not make it ours.
    std::fs::write(out.join(STAGE_FILE), r#"{"key": "x"}"#).unwrap();
    let err = format!(
        "{:#}",
        ensure_trained(&m, &s.path("results"), false).unwrap_err()
    );
    assert!(err.contains("not written by `runner train-rm`"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );

    // Nor is a regular file a model directory.
    let file_out = s.path("rm-file");
    std::fs::write(&file_out, "a file").unwrap();
    let m = s.manifest(&["out=rm-file"]);
    let err = format!(
        "{:#}",
        ensure_trained(&m, &s.path("results"), false).unwrap_err()
    );
    assert!(
        err.contains(&file_out.display().to_string()) && err.contains("is a file"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file_out).unwrap(), "a file");
}

#[test]
fn train_rm_always_trains_and_an_empty_out_is_free() {
    let s = Setup::new();
    std::fs::create_dir(s.path("rm")).unwrap();
    let m = s.manifest(&[]);
    let first = train_rm(&m, &s.path("results"), false).unwrap();
    let rec = s.record();
    assert_eq!(rec.key, first.key);
    let second = train_rm(&m, &s.path("results"), false).unwrap();
    assert_eq!(second.key, first.key);
    assert!(s.record().finished_unix >= rec.finished_unix);
    let summary = std::fs::read_to_string(s.path("results/summary.md")).unwrap();
    assert!(summary.contains(&first.key[..12]), "{summary}");
    // What train-rm wrote, ensure_trained reuses.
    let cached = ensure_trained(&m, &s.path("results"), false).unwrap();
    assert_eq!(cached.status, StageStatus::Cached);
}

#[test]
fn a_frozen_backbone_trains_the_head_on_a_subset() {
    let s = Setup::new();
    let m = s.manifest(&["train.freeze_backbone=true", "train.max_examples=3"]);
    let o = ensure_trained(&m, &s.path("results"), false).unwrap();
    assert_eq!(o.status, StageStatus::Trained);
    let rec = s.record();
    assert_eq!(rec.hashed.settings["train"]["freeze_backbone"], true);
    assert_eq!(rec.hashed.settings["train"]["max_examples"], 3);
    // The body is the backbone's, unchanged.
    let load = |p: &Path| tch::Tensor::read_safetensors(p).unwrap();
    let body = load(&s.path("backbone/model.safetensors"));
    let saved = load(&s.path("rm/model.safetensors"));
    let name = "encoder.layer.0.attention.self.query.weight";
    let before = &body.iter().find(|(n, _)| n == name).unwrap().1;
    let after = &saved
        .iter()
        .find(|(n, _)| n == &format!("bert.{name}"))
        .unwrap()
        .1;
    assert!(before.allclose(after, 0.0, 0.0, false), "the body moved");
}

/// `train_rm` (not only `ensure_trained`) refuses a regular file at `out`
/// before any work: the file is untouched, nothing is left beside it, and no
/// results are written.
#[test]
fn train_rm_refuses_a_file_out_and_leaves_nothing() {
    let s = Setup::new();
    let file_out = s.path("rm-file");
    std::fs::write(&file_out, "a file").unwrap();
    let before = s.entries();
    let m = s.manifest(&["out=rm-file"]);
    let err = format!("{:#}", train_rm(&m, &s.path("results"), false).unwrap_err());
    assert!(
        err.starts_with(&format!("{}: `out` is a file", file_out.display()))
            && err.contains("refusing to replace it"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file_out).unwrap(), "a file");
    assert_eq!(s.entries(), before, "stray files beside `out`");
}

/// An `out` or results directory that cannot be written (under a regular
/// file, which stops root too) is refused before the backbone loads: with a
/// backbone whose weights cannot load, the error is still about the path.
#[test]
fn unwritable_out_or_results_fail_before_training() {
    let s = Setup::new();
    std::fs::write(s.path("blocker"), "x").unwrap();
    std::fs::write(s.path("backbone/model.safetensors"), b"not safetensors").unwrap();
    let before = s.entries();
    let under = s.path("blocker/rm");
    let m = s.manifest(&["out=blocker/rm"]);
    for result in [
        train_rm(&m, &s.path("results"), false).map(|_| ()),
        ensure_trained(&m, &s.path("results"), false).map(|_| ()),
    ] {
        let err = format!("{:#}", result.unwrap_err());
        assert_eq!(
            err,
            format!(
                "`out`: {}: cannot be written: {} is not a directory",
                under.display(),
                s.path("blocker").display()
            )
        );
    }
    let m = s.manifest(&[]);
    let err = format!(
        "{:#}",
        train_rm(&m, &s.path("blocker/results"), false).unwrap_err()
    );
    assert!(
        err.starts_with("the results directory: ")
            && err.contains(&s.path("blocker/results").display().to_string())
            && err.ends_with(&format!(
                "{} is not a directory",
                s.path("blocker").display()
            )),
        "{err}"
    );
    assert_eq!(s.entries(), before);
    // Where both can be written, the same call gets as far as the weights.
    let err = format!("{:#}", train_rm(&m, &s.path("results"), false).unwrap_err());
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(!s.path("rm").exists() && !s.path("results").exists());
}

/// A link at `out` to a model directory of ours is kept; the directory it
/// points to is retrained in place.
#[test]
fn a_linked_out_is_followed_and_kept() {
    let s = Setup::new();
    let store = s.path("store");
    std::fs::create_dir(&store).unwrap();
    std::os::unix::fs::symlink("store/rm", s.path("rm")).unwrap();
    let m = s.manifest(&["train.epochs=1"]);
    train_rm(&m, &s.path("results"), false).unwrap();
    assert!(std::fs::symlink_metadata(s.path("rm"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(store.join("rm/model.safetensors").is_file());
    let key = s.record().key;
    let again = ensure_trained(&s.manifest(&[]), &s.path("results"), false).unwrap();
    assert_eq!(again.status, StageStatus::Trained);
    assert_ne!(s.record().key, key);
    assert!(std::fs::symlink_metadata(s.path("rm"))
        .unwrap()
        .file_type()
        .is_symlink());
    let names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["rm"], "stray files beside the linked model");
}
