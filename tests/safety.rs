//! Output safety: what the runner writes, replaces and refuses, end to end
//! through the `runner` binary on the tiny fixtures.
//!
//! - `--out` of `sample` / `score`: a FIFO is written through (and stays a
//!   FIFO); a link is kept and the file it points to replaced, a link to the
//!   runner's stdout pipe (`/dev/stdout`) written through; a directory is
//!   refused by name, untouched; one that cannot be written (under a regular
//!   file, which stops root too) is refused before any model loads.
//! - Model outputs that are not finite (finite weights that overflow) are
//!   an error naming the model and the input line, for `logprobs`, `sample`
//!   and `score`, and nothing is written; NaN weights are refused as the
//!   model loads, naming the file.
//! - `train-rm` refuses, untouched and before training, an `out` directory
//!   it did not write, a regular file at `out`, and an `out` that cannot be
//!   written; nothing is left beside it.
//!
//! Character devices are tested in `align_core::io`'s unit tests only (through
//! a link in a temporary directory, after the FIFO case), never here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc::Receiver;
use std::time::Duration;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(p)
        .canonicalize()
        .unwrap()
}

fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .expect("runner starts")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).unwrap().file_type().is_fifo()
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .unwrap()
        .file_type()
        .is_symlink()
}

fn mkfifo(p: &Path) {
    let status = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(status.success(), "mkfifo {}", p.display());
}

/// Reads the FIFO `p` to its end on a thread.
fn fifo_reader(p: &Path) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = p.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&p).unwrap());
    });
    rx
}

/// What the reader read; fails (rather than hangs) if the writer never
/// opened the FIFO.
fn read_back(rx: Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(120))
        .expect("nothing was written through the FIFO")
}

/// Two prompts, after a blank line (so that line numbers are not indices).
fn prompts(dir: &Path) -> PathBuf {
    let p = dir.join("prompts.jsonl");
    std::fs::write(
        &p,
        "\n{\"prompt\": \"Hello\"}\n{\"prompt\": \"The quick brown fox\"}\n",
    )
    .unwrap();
    p
}

fn sample(model: &Path, prompts: &Path, out: &Path) -> Output {
    runner(&[
        "sample",
        "--model",
        s(model),
        "--prompts",
        s(prompts),
        "--out",
        s(out),
        "--device",
        "cpu",
        "--max-new-tokens",
        "3",
        "--seed",
        "1",
        "--quiet",
    ])
}

/// Two samples the lexicon scores (no model to load).
fn samples(dir: &Path) -> PathBuf {
    let p = dir.join("samples.jsonl");
    std::fs::write(
        &p,
        "{\"prompt\": \"The movie\", \"completion\": \" was wonderful.\"}\n\
         {\"prompt\": \"The movie\", \"completion\": \" was dull.\"}\n",
    )
    .unwrap();
    p
}

fn score(reward: &str, input: &Path, out: &Path) -> Output {
    runner(&[
        "score",
        "--reward",
        reward,
        "--input",
        s(input),
        "--out",
        s(out),
        "--device",
        "cpu",
        "--quiet",
    ])
}

/// A copy of the fixture model `name` with its weights changed by `edit`.
fn edited_model(
    dir: &Path,
    name: &str,
    tag: &str,
    edit: impl Fn(&str, &tch::Tensor) -> Option<tch::Tensor>,
) -> PathBuf {
    let src = fixture(name);
    let dst = dir.join(format!("{name}-{tag}"));
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let weights = dst.join("model.safetensors");
    let mut tensors = tch::Tensor::read_safetensors(&weights).unwrap();
    let mut edited = 0;
    for (n, t) in tensors.iter_mut() {
        if let Some(new) = edit(n, t) {
            *t = new;
            edited += 1;
        }
    }
    assert!(edited > 0, "{name}: nothing edited");
    tch::Tensor::write_safetensors(&tensors, &weights).unwrap();
    dst
}

/// Finite weights whose outputs are not: the final norm's gains are ±1e30
/// (alternating) and the output head's 1e30, so every logit (reward) sums
/// overflowing terms of both signs, NaN.
fn overflowing_model(dir: &Path, name: &str) -> PathBuf {
    edited_model(dir, name, "overflow", |n, t| match n {
        "model.norm.weight" => {
            let signs: Vec<f32> = (0..t.numel()).map(|i| [1e30, -1e30][i % 2]).collect();
            Some(tch::Tensor::from_slice(&signs).view_as(t))
        }
        "lm_head.weight" | "score.weight" => Some(t.full_like(1e30)),
        _ => None,
    })
}

/// A NaN in the weights themselves.
fn nan_weights_model(dir: &Path, name: &str) -> PathBuf {
    edited_model(dir, name, "nan", |n, t| {
        (n == "model.norm.weight").then(|| t.full_like(f64::NAN))
    })
}

// ---- --out: FIFOs, links, directories, unwritable paths ----

#[test]
fn a_fifo_out_is_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts(dir.path());
    let fifo = dir.path().join("out.fifo");
    mkfifo(&fifo);
    let before = entries(dir.path());

    let rx = fifo_reader(&fifo);
    let o = sample(&fixture("tiny-llama"), &prompts, &fifo);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = jsonl(&read_back(rx));
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["prompt"], "The quick brown fox");
    assert!(is_fifo(&fifo), "sample replaced the FIFO");

    let input = samples(dir.path());
    let rx = fifo_reader(&fifo);
    let o = score("lexicon", &input, &fifo);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = jsonl(&read_back(rx));
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["reward"].as_f64().unwrap() > lines[1]["reward"].as_f64().unwrap());
    assert!(is_fifo(&fifo), "score replaced the FIFO");

    let mut after = before;
    after.push("samples.jsonl".into());
    after.sort();
    assert_eq!(entries(dir.path()), after, "temporary files left behind");
}

/// A link to the runner's own stdout (a pipe here), as `/dev/stdout` is:
/// the samples come out on stdout.
#[test]
fn a_link_to_stdout_is_written_through() {
    if !Path::new("/proc/self/fd/1").exists() {
        eprintln!("no /proc/self/fd: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts(dir.path());
    let link = dir.path().join("stdout");
    std::os::unix::fs::symlink("/proc/self/fd/1", &link).unwrap();
    let o = sample(&fixture("tiny-llama"), &prompts, &link);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = jsonl(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prompt"], "Hello");
    let o = score("lexicon", &samples(dir.path()), &link);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(jsonl(&String::from_utf8(o.stdout).unwrap()).len(), 2);
    assert!(is_symlink(&link));
    assert_eq!(
        entries(dir.path()),
        ["prompts.jsonl", "samples.jsonl", "stdout"]
    );
}

#[test]
fn a_symlink_out_is_kept_and_its_target_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts(dir.path());
    let (links, files) = (dir.path().join("links"), dir.path().join("files"));
    std::fs::create_dir(&links).unwrap();
    std::fs::create_dir(&files).unwrap();
    let target = files.join("real.jsonl");
    std::fs::write(&target, "old\n").unwrap();
    let link = links.join("out.jsonl");
    std::os::unix::fs::symlink("../files/real.jsonl", &link).unwrap();

    let o = sample(&fixture("tiny-llama"), &prompts, &link);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(is_symlink(&link), "the link was replaced");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../files/real.jsonl")
    );
    let lines = jsonl(&std::fs::read_to_string(&target).unwrap());
    assert_eq!(lines.len(), 2);

    let o = score("lexicon", &samples(dir.path()), &link);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(is_symlink(&link));
    let lines = jsonl(&std::fs::read_to_string(&target).unwrap());
    assert!(lines[0]["log_goodness"].is_number());
    assert_eq!(entries(&links), ["out.jsonl"]);
    assert_eq!(entries(&files), ["real.jsonl"]);
}

#[test]
fn a_directory_out_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts(dir.path());
    let input = samples(dir.path());
    let out = dir.path().join("results");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let before = entries(dir.path());
    for o in [
        sample(&fixture("tiny-llama"), &prompts, &out),
        score("lexicon", &input, &out),
    ] {
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "{}: is a directory, not a file; refusing to write over it",
                out.display()
            )),
            "{err}"
        );
    }
    assert_eq!(entries(&out), ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(entries(dir.path()), before);
}

/// `--out` under a regular file cannot be written, even by root. The model
/// named does not exist: that the error is about `--out` shows the check
/// ran before any model was loaded; with a writable `--out`, the same
/// command fails on the model.
#[test]
fn an_unwritable_out_fails_before_any_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts(dir.path());
    let input = samples(dir.path());
    let blocker = dir.path().join("file.txt");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("out.jsonl");
    let missing = dir.path().join("no-such-model");
    let before = entries(dir.path());
    let want = format!(
        "--out: {}: cannot be written: {} is not a directory",
        out.display(),
        blocker.display()
    );
    for o in [
        sample(&missing, &prompts, &out),
        score(s(&missing), &input, &out),
    ] {
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains(&want), "{err}");
        assert!(!err.contains("no-such-model"), "the model was tried: {err}");
    }
    // The control: the model is what fails once --out can be written.
    let writable = dir.path().join("out.jsonl");
    for o in [
        sample(&missing, &prompts, &writable),
        score(s(&missing), &input, &writable),
    ] {
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("no-such-model"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "x");
    assert_eq!(entries(dir.path()), before);
}

// ---- Non-finite model outputs ----

#[test]
fn non_finite_logprobs_are_an_error_naming_the_model_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = overflowing_model(dir.path(), "tiny-llama");
    let input = dir.path().join("pairs.jsonl");
    std::fs::write(
        &input,
        "\n{\"prompt\": \"Hello\", \"completion\": \" world\"}\n",
    )
    .unwrap();
    let args = |m: &Path| {
        runner(&[
            "logprobs",
            "--model",
            s(m),
            "--input",
            s(&input),
            "--device",
            "cpu",
        ])
    };
    // The same input under the real weights gives a finite log-prob.
    let o = args(&fixture("tiny-llama"));
    assert!(o.status.success(), "{}", stderr(&o));
    let good = jsonl(&String::from_utf8(o.stdout).unwrap());
    assert!(good[0]["logprob"].as_f64().unwrap().is_finite());

    let o = args(&model);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}:2: the model {} gives the completion the log-probability NaN, which is not finite",
            input.display(),
            model.display()
        )),
        "{err}"
    );
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // NaN in the weights themselves is refused as the model loads, by name.
    let nan = nan_weights_model(dir.path(), "tiny-llama");
    let o = args(&nan);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&nan.join("model.safetensors").display().to_string()) && err.contains("NaN"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn non_finite_sample_densities_are_an_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = overflowing_model(dir.path(), "tiny-llama");
    let prompts = prompts(dir.path());
    let out = dir.path().join("samples.jsonl");
    let before = entries(dir.path());
    let o = sample(&model, &prompts, &out);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}:2: the model {} gives sample 0 the log-densities proposal_logp = NaN",
            prompts.display(),
            model.display()
        )) && err.contains("not finite"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(entries(dir.path()), before, "temporary files left behind");
}

#[test]
fn non_finite_rewards_are_an_error_naming_the_reward_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let rm = overflowing_model(dir.path(), "tiny-llama-rm");
    let input = samples(dir.path());
    let out = dir.path().join("scored.jsonl");
    // The real weights score these samples.
    let o = score(s(&fixture("tiny-llama-rm")), &input, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&out).unwrap();
    let before = entries(dir.path());

    let o = score(s(&rm), &input, &out);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}:1: the reward {} gives this sample a reward of NaN, which is not finite",
            input.display(),
            rm.display()
        )),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(entries(dir.path()), before, "temporary files left behind");
}

// ---- train-rm's `out` ----

/// A Bradley–Terry manifest on the tiny fixtures writing `out`.
fn rm_manifest(dir: &Path, out: &Path) -> PathBuf {
    let manifest = dir.join("rm.toml");
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
split = {{ validation = 0.0, test = 0.3 }}

[train]
epochs = 1
batch_size = 4
lr = 1e-3
"#,
            out = out.display(),
            backbone = fixture("tiny-llama").display(),
            data = fixture("data/hh-rlhf-clean.jsonl.gz").display(),
        ),
    )
    .unwrap();
    manifest
}

fn train_rm(manifest: &Path, results: &Path) -> Output {
    runner(&["train-rm", s(manifest), "--results", s(results), "--quiet"])
}

#[test]
fn train_rm_refuses_a_foreign_directory_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rm");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::create_dir(out.join("sub")).unwrap();
    std::fs::write(out.join("sub/data.bin"), "precious").unwrap();
    let manifest = rm_manifest(dir.path(), &out);
    let results = dir.path().join("results");
    let before = entries(dir.path());

    let o = train_rm(&manifest, &results);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}: `out` exists and was not written by this pipeline (no stage.json); refusing to replace it",
            out.display()
        )) && err.contains("Move it away"),
        "{err}"
    );
    // A stage.json someone else wrote does not make it ours either.
    std::fs::write(out.join("stage.json"), r#"{"written_by": "someone"}"#).unwrap();
    let o = train_rm(&manifest, &results);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("not written by `runner train-rm`"),
        "{err}"
    );
    assert_eq!(entries(&out), ["notes.txt", "stage.json", "sub"]);
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sub/data.bin")).unwrap(),
        "precious"
    );
    assert_eq!(entries(dir.path()), before, "train-rm created files");
}

#[test]
fn train_rm_refuses_a_regular_file_out_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rm");
    std::fs::write(&out, "a file").unwrap();
    let manifest = rm_manifest(dir.path(), &out);
    let results = dir.path().join("results");
    let before = entries(dir.path());

    let o = train_rm(&manifest, &results);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}: `out` is a file, not a reward-model directory; refusing to replace it",
            out.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a file");
    assert_eq!(entries(dir.path()), before, "stray files beside `out`");
}

#[test]
fn train_rm_refuses_an_unwritable_out_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file.txt");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("rm");
    let manifest = rm_manifest(dir.path(), &out);
    let results = dir.path().join("results");
    let before = entries(dir.path());

    let o = train_rm(&manifest, &results);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "`out`: {}: cannot be written: {} is not a directory",
            out.display(),
            blocker.display()
        )),
        "{err}"
    );
    assert!(!err.contains("training a"), "it trained first: {err}");
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "x");
    assert_eq!(entries(dir.path()), before);
}
