//! LoRA through the runner: `experiments/tiny-sentiment.toml` on the tiny
//! Llama with `[model.hf] lora = { … }` trains adapters only, checkpoints
//! and saves them in PEFT's layout (and merged); a manifest with
//! `adapter = "…"` reloads the aligned model to the same function (it draws
//! the same held-out completions); a run with adapter dropout, killed inside
//! a step and resumed, ends with the same adapter bytes and results; an
//! unknown target is a located manifest error naming the allowed ones.

#[path = "common/data.rs"]
mod data;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use align_core::manifest::Manifest;
use data::{data_present, root};

/// The shared prior samples and SFT stages go to a scratch cache, not ~/.cache.
fn scratch_cache() {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("lora-cache-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        std::env::set_var("BRAIN_RS_CACHE", &dir);
        dir
    });
}

/// tiny-sentiment.toml with its `[model.hf]` table replaced by `model`,
/// written into `dir`; returns the manifest's path.
fn manifest(dir: &Path, model: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("experiments/tiny-sentiment.toml")).unwrap();
    let tiny = root()
        .join("tests/fixtures/tiny-llama")
        .canonicalize()
        .unwrap();
    let table = format!(
        "[model.hf]\npath = {:?}\n{model}\n",
        tiny.display().to_string()
    );
    let text = text.replace(
        "[model.hf]\npath = \"../tests/fixtures/tiny-llama\"\n",
        &table,
    );
    assert!(
        text.contains(&table),
        "tiny-sentiment.toml's model table moved"
    );
    let path = dir.join("lora.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const LORA: &str =
    r#"lora = { rank = 4, alpha = 8.0, targets = ["q_proj", "v_proj", "o_proj"], merge = true }"#;

fn tensors(path: &Path) -> BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// `(prompt, sample) → response` of the records at `step` in a samples file.
fn responses(path: &Path, step: u64) -> BTreeMap<(u64, u64), String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["step"] == step)
        .map(|r| {
            let key = (
                r["prompt_index"].as_u64().unwrap(),
                r["sample"].as_u64().unwrap(),
            );
            (key, r["response"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn a_lora_manifest_trains_saves_and_reloads_its_adapters() {
    if !data_present() {
        eprintln!("SKIPPED: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    scratch_cache();
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), LORA);
    let m = Manifest::load(&path, &["device=cpu".into()]).unwrap();
    let out = dir.path().join("out");
    let outcome = runner::run(&m, &out, false).unwrap();
    let names: Vec<&str> = outcome.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["prior", "brain", "dpo"]);
    let resolved = std::fs::read_to_string(out.join("manifest.resolved.toml")).unwrap();
    assert!(resolved.contains("[model.hf.lora]"), "{resolved}");

    for run in ["brain", "dpo"] {
        let ckpt = out.join("checkpoints").join(run).join("seed-3");
        // The policy's variables, saved as its weights: the adapters only.
        let model = tensors(&ckpt.join("model.safetensors"));
        assert_eq!(model.len(), 2 * 3 * 2, "{run}: {:?}", model.keys());
        assert!(model
            .keys()
            .all(|k| k.starts_with("base_model.model.model.layers.")
                && (k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight"))));
        let adapter = tensors(&ckpt.join("adapter/adapter_model.safetensors"));
        assert_eq!(
            adapter.keys().collect::<Vec<_>>(),
            model.keys().collect::<Vec<_>>()
        );
        for (k, t) in &adapter {
            assert!(t.equal(&model[k]), "{run}: {k}");
        }
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(ckpt.join("adapter/adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!(config["r"], 4);
        assert_eq!(
            config["target_modules"],
            serde_json::json!(["o_proj", "q_proj", "v_proj"])
        );
        // merge = true: an HF directory that loads as a plain model.
        let merged = align_models::load(
            &ckpt.join("merged"),
            align_models::DType::F32,
            tch::Device::Cpu,
        )
        .unwrap();
        assert!(merged.tokenizer.is_some());
    }
    let b = tensors(&out.join("checkpoints/brain/seed-3/adapter/adapter_model.safetensors"));
    let moved = b
        .iter()
        .filter(|(k, _)| k.ends_with("lora_B.weight"))
        .map(|(_, t)| t.abs().sum(tch::Kind::Float).double_value(&[]))
        .sum::<f64>();
    assert!(moved > 0.0, "BRAIn's steps moved lora_B");

    // The aligned adapter reloaded onto the base model: as the prior of a
    // second manifest, it draws brain's final held-out completions (the same
    // seeds and bit-identical logits give the same tokens).
    let adapter_dir = out.join("checkpoints/brain/seed-3/adapter");
    let again = tempfile::tempdir().unwrap();
    let path2 = manifest(
        again.path(),
        &format!("adapter = {:?}", adapter_dir.display().to_string()),
    );
    let m2 = Manifest::load(&path2, &["device=cpu".into()]).unwrap();
    let out2 = again.path().join("out");
    runner::run(&m2, &out2, false).unwrap();
    let brain = responses(&out.join("samples/brain.jsonl"), 2);
    let reloaded = responses(&out2.join("samples/prior.jsonl"), 0);
    let base_prior = responses(&out.join("samples/prior.jsonl"), 0);
    assert_eq!(brain.len(), 8);
    assert_eq!(
        reloaded, brain,
        "the reloaded adapter samples what the trained policy did"
    );
    assert_ne!(
        base_prior, brain,
        "the adapter changed the samples (else the check is empty)"
    );
}

#[test]
fn an_unknown_lora_target_is_a_located_error_naming_the_allowed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(
        dir.path(),
        r#"lora = { rank = 4, targets = ["q_proj", "qkv_proj"] }"#,
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let line = 1 + text.lines().position(|l| l.starts_with("lora = ")).unwrap();
    let err = Manifest::load(&path, &[])
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&format!("lora.toml:{line}:")),
        "located at line {line}: {err}"
    );
    for want in [
        "qkv_proj",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
    let path = manifest(dir.path(), "lora = { rank = 0 }");
    let err = Manifest::load(&path, &[])
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("lora") && err.contains("rank"), "{err}");
    let gpt2 = root()
        .join("tests/fixtures/tiny-gpt2")
        .canonicalize()
        .unwrap();
    let text = std::fs::read_to_string(manifest(dir.path(), "lora = {}"))
        .unwrap()
        .replace("tiny-llama", gpt2.file_name().unwrap().to_str().unwrap());
    std::fs::write(&path, text).unwrap();
    let err = Manifest::load(&path, &[])
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("implemented for Llama"), "{err}");
}

fn runner(
    args: &[&str],
    out: &Path,
    failpoint: Option<&str>,
    cache: &Path,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(args).arg("--quiet").arg("--out").arg(out);
    cmd.env("BRAIN_RS_CACHE", cache);
    match failpoint {
        Some(f) => cmd.env("BRAIN_RS_FAILPOINT", f),
        None => cmd.env_remove("BRAIN_RS_FAILPOINT"),
    };
    cmd.output().expect("runner starts")
}

/// Adapter dropout draws its masks from the seed, the tokens and the
/// adapters' weights, so a run killed inside a step and resumed from its
/// checkpoint (adapters, Adam's moments, the refreshed proposal's adapters)
/// ends with the same adapter bytes and the same samples and step logs.
#[test]
fn a_lora_run_with_dropout_resumes_bit_for_bit() {
    use std::os::unix::process::ExitStatusExt;
    if !data_present() {
        eprintln!("SKIPPED: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(
        dir.path(),
        r#"lora = { rank = 4, alpha = 16.0, dropout = 0.2, targets = ["q_proj", "v_proj", "up_proj"] }"#,
    );
    let path = path.display().to_string();
    let cache = dir.path().join("cache");
    let args = [
        path.as_str(),
        "--set",
        "device=\"cpu\"",
        "--set",
        "train.steps=4",
        "--set",
        "train.eval_every=2",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.lr=0.05",
    ];
    let straight = dir.path().join("straight");
    let o = runner(&args, &straight, None, &cache);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let killed = dir.path().join("killed");
    let o = runner(&args, &killed, Some("train-step:3"), &cache);
    assert_eq!(
        o.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut resume = args.to_vec();
    resume.push("--resume");
    let o = runner(&resume, &killed, None, &cache);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("brain (seed 3): resuming at step 2 of 4"),
        "{stderr}"
    );
    for file in [
        "checkpoints/brain/seed-3/adapter/adapter_model.safetensors",
        "checkpoints/dpo/seed-3/adapter/adapter_model.safetensors",
        "samples/brain.jsonl",
        "samples/dpo.jsonl",
        "steps/brain.csv",
        "steps/dpo.csv",
    ] {
        let (a, b) = (
            std::fs::read(straight.join(file)).unwrap(),
            std::fs::read(killed.join(file)).unwrap(),
        );
        assert!(a == b, "{file} differs after the resume");
    }
}

/// `gradient_checkpointing = true` through the runner, with full
/// fine-tuning and with LoRA adapters that drop out: the trained weights
/// of every run are those of the same manifest without it (the layers are
/// recomputed after `loss.backward()`, the gradients are the same).
#[test]
fn gradient_checkpointing_trains_as_without_it() {
    if !data_present() {
        eprintln!("SKIPPED: sentiment data not found; run `cargo xtask setup`");
        return;
    }
    scratch_cache();
    let dropout_lora = r#"lora = { rank = 4, alpha = 16.0, dropout = 0.2, targets = ["q_proj", "v_proj", "up_proj"] }"#;
    for model in ["", dropout_lora] {
        let dir = tempfile::tempdir().unwrap();
        let mut trained = Vec::new();
        for on in [false, true] {
            let sub = dir.path().join(format!("checkpointing-{on}"));
            std::fs::create_dir_all(&sub).unwrap();
            let path = manifest(&sub, &format!("{model}\ngradient_checkpointing = {on}"));
            let m = Manifest::load(
                &path,
                &[
                    "device=cpu".into(),
                    "train.steps=3".into(),
                    "train.lr=0.05".into(),
                ],
            )
            .unwrap();
            let out = sub.join("out");
            runner::run(&m, &out, false).unwrap();
            trained.push(out);
        }
        let weights = |out: &Path, run: &str| {
            tensors(
                &out.join("checkpoints")
                    .join(run)
                    .join("seed-3/model.safetensors"),
            )
        };
        // Training moved the weights: two estimators from one prior end apart.
        let (brain, dpo) = (weights(&trained[0], "brain"), weights(&trained[0], "dpo"));
        let apart = brain
            .iter()
            .map(|(k, t)| (t - &dpo[k]).abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        assert!(apart > 1e-4, "BRAIn and DPO {apart:e} apart ({model:?})");
        for run in ["brain", "dpo"] {
            let (a, b) = (weights(&trained[0], run), weights(&trained[1], run));
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
            let gap = a
                .iter()
                .map(|(k, t)| (t - &b[k]).abs().max().double_value(&[]))
                .fold(0.0, f64::max);
            assert!(gap <= 1e-5, "{run} ({model:?}): weights {gap:e} apart");
        }
    }
}
