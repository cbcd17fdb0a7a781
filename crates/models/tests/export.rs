//! Fully fine-tuned models written as HF directories (what a finished run
//! leaves, and what an inference server loads at a proposal refresh):
//! `save_hf`, and `export` beside the variable store's `model.safetensors`,
//! reload, with our loader and with transformers, to the trained model's
//! logits, with its tokenizer and its weights' dtype in `config.json`.

mod common;

use std::path::Path;

use align_core::manifest::Optimizer as OptimizerKind;
use align_core::optim::Optimizer;
use align_core::Policy;
use align_models::{load, DType};
use common::{device, expected, fixture};
use tch::{Kind, Tensor};

/// The fixture's batch: input ids and attention mask.
fn batch(name: &str) -> (Tensor, Tensor) {
    let e = expected(name);
    (
        e["input_ids"].shallow_clone(),
        e["attention_mask"].shallow_clone(),
    )
}

fn logits(p: &dyn Policy, name: &str) -> Tensor {
    let (ids, mask) = batch(name);
    tch::no_grad(|| p.forward(&ids, &mask))
}

/// A copy of the model at `path` after `steps` Adam steps on the batch's
/// log-likelihood: weights no file holds yet.
fn trained(path: &Path, name: &str, dtype: DType) -> Box<dyn Policy> {
    let base = load(path, dtype, device()).unwrap();
    let mut policy = base.policy.frozen_clone().expect("in-memory copy").unwrap();
    policy.var_store_mut().unfreeze();
    let mut opt = Optimizer::new(OptimizerKind::Adam, policy.var_store(), 0.05).unwrap();
    let (ids, mask) = batch(name);
    let comp = mask.shallow_clone();
    for _ in 0..2 {
        let loss = -policy
            .sequence_logprobs(&ids, &mask, &comp)
            .sum(Kind::Float);
        opt.zero_grad();
        loss.backward();
        opt.step();
    }
    let moved = (logits(policy.as_ref(), name) - logits(base.policy.as_ref(), name))
        .abs()
        .max()
        .double_value(&[]);
    assert!(moved > 1e-3, "{name}: training moved the logits ({moved})");
    policy
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// The dtype `config.json` records, under either of transformers' keys.
fn dtype_in(dir: &Path) -> String {
    let c = config(dir);
    c.get("dtype")
        .or_else(|| c.get("torch_dtype"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.eq_tensor(b).all().int64_value(&[]) == 1
}

const DECODERS: [&str; 4] = [
    "tiny-llama",
    "tiny-llama-tied",
    "tiny-gpt2",
    "tiny-gpt-neox",
];

/// `save_hf` writes a directory our loader reads back to the same model,
/// bit for bit, with the tokenizer and generation files of the original.
#[test]
fn save_hf_reloads_to_the_trained_model() {
    for name in DECODERS {
        let policy = trained(&fixture(name), name, DType::F32);
        let dir = tempfile::tempdir().unwrap();
        assert!(policy.save_hf(dir.path()).unwrap(), "{name} has an HF form");
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "generation_config.json",
        ] {
            assert!(dir.path().join(file).is_file(), "{name}: {file}");
        }
        let back = load(dir.path(), DType::F32, device()).unwrap();
        assert!(back.tokenizer.is_some(), "{name}: tokenizer copied");
        assert!(
            bit_equal(
                &logits(back.policy.as_ref(), name),
                &logits(policy.as_ref(), name)
            ),
            "{name}: reloaded logits differ"
        );
        assert_eq!(dtype_in(dir.path()), "float32", "{name}");
    }
}

/// What a finished run writes, the variable store as `model.safetensors`
/// and `export`'s files beside it, is itself an HF directory.
#[test]
fn a_finished_runs_directory_is_an_hf_directory() {
    for name in ["tiny-llama", "tiny-gpt2"] {
        let policy = trained(&fixture(name), name, DType::F32);
        let dir = tempfile::tempdir().unwrap();
        policy
            .var_store()
            .save(dir.path().join("model.safetensors"))
            .unwrap();
        let wrote = policy.export(dir.path()).unwrap();
        assert!(
            wrote.contains(&"config.json".to_string())
                && wrote.contains(&"tokenizer.json".to_string()),
            "{name}: {wrote:?}"
        );
        let back = load(dir.path(), DType::F32, device()).unwrap();
        assert!(bit_equal(
            &logits(back.policy.as_ref(), name),
            &logits(policy.as_ref(), name)
        ));
    }
}

/// bf16 weights are written as bf16 and `config.json` says so.
#[test]
fn bf16_models_save_in_bf16() {
    let name = "tiny-llama";
    let policy = trained(&fixture(name), name, DType::Bf16);
    let dir = tempfile::tempdir().unwrap();
    assert!(policy.save_hf(dir.path()).unwrap());
    assert_eq!(dtype_in(dir.path()), "bfloat16");
    let stored = Tensor::read_safetensors(dir.path().join("model.safetensors")).unwrap();
    assert!(stored.iter().all(|(_, t)| t.kind() == Kind::BFloat16));
    let back = load(dir.path(), DType::Bf16, device()).unwrap();
    assert!(bit_equal(
        &logits(back.policy.as_ref(), name),
        &logits(policy.as_ref(), name)
    ));
}

/// A model loaded from a GGUF file carries the tokenizer rebuilt from its
/// metadata into its HF directory.
#[test]
fn gguf_models_save_with_their_rebuilt_tokenizer() {
    let name = "tiny-llama-gguf";
    let gguf = fixture(name).join("tiny-llama.gguf");
    let policy = trained(&gguf, name, DType::F32);
    let dir = tempfile::tempdir().unwrap();
    assert!(policy.save_hf(dir.path()).unwrap());
    let back = load(dir.path(), DType::F32, device()).unwrap();
    let ours = load(&gguf, DType::F32, device())
        .unwrap()
        .tokenizer
        .unwrap();
    let tok = back
        .tokenizer
        .expect("tokenizer.json from the GGUF metadata");
    assert_eq!(
        tok.encode("hello world", false).unwrap(),
        ours.encode("hello world", false).unwrap()
    );
    assert!(bit_equal(
        &logits(back.policy.as_ref(), name),
        &logits(policy.as_ref(), name)
    ));
}

/// transformers' `AutoModelForCausalLM.from_pretrained` loads the saved
/// directories and computes the logits we compute for the trained model.
#[test]
fn transformers_loads_the_saved_directories() {
    let Some(python) = common::torch_python("transformers") else {
        eprintln!(
            "SKIPPED transformers_loads_the_saved_directories: no transformers in the PyTorch \
             environment (`cargo xtask setup` installs it)"
        );
        return;
    };
    let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu);
    for name in DECODERS {
        let policy = trained(&fixture(name), name, DType::F32);
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        assert!(policy.save_hf(&model).unwrap());
        let (ids, mask) = batch(name);
        let ours = dir.path().join("ours.safetensors");
        Tensor::write_safetensors(
            &[
                ("input_ids", cpu(&ids)),
                ("attention_mask", cpu(&mask)),
                ("logits", cpu(&logits(policy.as_ref(), name))),
            ],
            &ours,
        )
        .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf/check_hf_dir.py");
        let out = std::process::Command::new(&python)
            .arg(script)
            .arg(&model)
            .arg(&ours)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{name}: transformers check: {stdout}");
        assert!(
            out.status.success(),
            "{name}: transformers disagrees: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
