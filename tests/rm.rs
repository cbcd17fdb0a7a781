//! `runner train-rm` and `runner score` end to end on the tiny fixtures: a
//! Bradley–Terry RM trained on the HH-RLHF fixture's pairs is written as an HF
//! directory that `score` then reads; `score` adds `reward` and
//! `log_goodness` to every record, matching transformers on the tiny
//! `LlamaForSequenceClassification`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(p)
        .canonicalize()
        .unwrap()
}

fn runner(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .unwrap()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn score_adds_reward_and_goodness_to_each_record() {
    let dir = tempfile::tempdir().unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama-rm/expected.json")).unwrap(),
    )
    .unwrap();
    let texts = expected["texts"].as_array().unwrap();
    // Empty prompts: the scored text (prompt + completion) is the fixture's text.
    let input = dir.path().join("samples.jsonl");
    let records: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"prompt": "", "completion": t, "sample_index": i}).to_string()
        })
        .collect();
    std::fs::write(&input, records.join("\n") + "\n").unwrap();
    let out = dir.path().join("scored.jsonl");
    let o = runner(&[
        "score",
        "--reward",
        fixture("tiny-llama-rm").to_str().unwrap(),
        "--goodness",
        "bt-exp",
        "--tau",
        "0.5",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let scored = lines(&out);
    assert_eq!(scored.len(), texts.len());
    for (i, rec) in scored.iter().enumerate() {
        let want = expected["logits"][i][0].as_f64().unwrap();
        let reward = rec["reward"].as_f64().unwrap();
        assert!(
            (reward - want).abs() < 1e-4 * want.abs().max(1.0),
            "{i}: {reward} vs {want}"
        );
        let g = rec["log_goodness"].as_f64().unwrap();
        assert!((g - reward / 0.5).abs() < 1e-5, "{i}: log goodness {g}");
        assert_eq!(rec["sample_index"], i, "other fields are kept");
    }

    // bt-vs-reference reads each record's `reference`; the lexicon judges.
    std::fs::write(
        &input,
        r#"{"prompt": "The movie", "completion": " was wonderful.", "reference": " was dull."}
{"prompt": "The movie", "completion": " was dull.", "reference": " was wonderful."}
"#,
    )
    .unwrap();
    let o = runner(&[
        "score",
        "--reward",
        "lexicon",
        "--goodness",
        "bt-vs-reference",
        "--text",
        "completion",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let scored = lines(&out);
    let g: Vec<f64> = scored
        .iter()
        .map(|r| r["log_goodness"].as_f64().unwrap())
        .collect();
    // log σ(d) + log σ(−d) with d > 0: the better completion is the likelier good one.
    assert!(g[0] > (0.5f64).ln() && g[1] < (0.5f64).ln(), "{g:?}");

    // A record without `reference` is named by file and line.
    std::fs::write(&input, "{\"prompt\": \"a\", \"completion\": \"b\"}\n").unwrap();
    let o = runner(&[
        "score",
        "--reward",
        "lexicon",
        "--goodness",
        "bt-vs-reference",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("samples.jsonl:1") && err.contains("`reference`"),
        "{err}"
    );
}

#[test]
fn train_rm_writes_a_reward_model_that_score_reads() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("rm");
    let manifest = dir.path().join("rm.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"name = "tiny-bt"
objective = "bradley-terry"
out = "{out}"

[model]
backbone = "{backbone}"
device = "cpu"

[data.preference-file]
format = "hh-rlhf"
path = "{data}"
# Every pair trains (the fixture is tiny); validation and test are empty or tiny.
split = {{ validation = 0.0, test = 0.3 }}

[train]
epochs = 2
batch_size = 4
lr = 1e-3
"#,
            out = model_dir.display(),
            backbone = fixture("tiny-llama").display(),
            data = fixture("data/hh-rlhf-clean.jsonl.gz").display(),
        ),
    )
    .unwrap();
    let results = dir.path().join("results");
    let o = runner(&[
        "train-rm",
        manifest.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(config["brain_rs_training"]["objective"], "bradley-terry");
    for f in ["summary.md", "epochs.csv", "manifest.resolved.toml"] {
        assert!(results.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(results.join("epochs.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    let input = dir.path().join("s.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"Human: hi\", \"completion\": \" Assistant: hello\"}\n",
    )
    .unwrap();
    let out = dir.path().join("scored.jsonl");
    let o = runner(&[
        "score",
        "--reward",
        model_dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lines(&out)[0]["reward"].as_f64().unwrap().is_finite());

    // Asking for two labels of this one-label model names both counts.
    let o = runner(&[
        "score",
        "--reward",
        model_dir.to_str().unwrap(),
        "--num-labels",
        "2",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("declares 1 label(s)") && err.contains("num_labels = 2"),
        "{err}"
    );
}

#[test]
fn train_rm_manifest_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("bad.toml");
    std::fs::write(
        &manifest,
        "name = \"x\"\nobjective = \"bradley-terry\"\nout = \"o\"\nlearning_rate = 3\n",
    )
    .unwrap();
    let o = runner(&["train-rm", manifest.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    // The experiments' loader: file:line:column, the line, a fix, exit code 2.
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.toml:4:1: unknown field `learning_rate`")
            && err.contains("4 | learning_rate = 3")
            && err.contains("fix: remove `learning_rate`"),
        "{err}"
    );
}

/// Paths in a train-rm manifest start at the manifest's directory, like an
/// experiment's, and a bad value is reported at its line.
#[test]
fn train_rm_paths_are_relative_to_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let body = |backbone: &str, epochs: usize| {
        format!(
            "name = \"x\"\nobjective = \"bradley-terry\"\nout = \"rm-out\"\n\n[model]\nbackbone = \"{backbone}\"\n\n[data.preference-file]\nformat = \"hh-rlhf\"\npath = \"{}\"\n\n[train]\nepochs = {epochs}\nlr = 1e-3\n",
            fixture("data/hh-rlhf.jsonl").display()
        )
    };
    let manifest = sub.join("rm.toml");
    std::fs::write(&manifest, body("no-such-backbone", 1)).unwrap();
    let o = runner(&["train-rm", manifest.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let looked = sub.join("no-such-backbone");
    assert!(
        err.contains(&format!(
            "rm.toml:6:12: file not found: `no-such-backbone` (looked at {})",
            looked.display()
        )),
        "{err}"
    );
    // A relative path that exists beside the manifest is found from any
    // working directory; the next error is then the zero epochs, at its line.
    std::os::unix::fs::symlink(fixture("tiny-llama"), sub.join("backbone")).unwrap();
    std::fs::write(&manifest, body("backbone", 0)).unwrap();
    let o = runner(&["train-rm", manifest.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rm.toml:13:1: `train.epochs` must be ≥ 1"),
        "{err}"
    );
}
