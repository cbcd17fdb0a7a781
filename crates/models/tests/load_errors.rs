//! Loading failures are clear errors that name the offending file.

mod common;

use std::path::Path;

use align_models::{load, DType};
use common::{copy_dir, fixture};
use tch::Device;

fn load_err(path: &Path) -> String {
    match load(path, DType::F32, Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_path() {
    let msg = load_err(Path::new("/no/such/model-dir"));
    assert_eq!(msg, "/no/such/model-dir: not found");
}

#[test]
fn directory_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json: not found"), "{msg}");
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["FalconForCausalLM"], "model_type": "falcon"}"#,
    )
    .unwrap();
    let msg = load_err(dir.path());
    let config = dir.path().join("config.json");
    assert!(
        msg.starts_with(&format!(
            "{}: unsupported architecture `FalconForCausalLM`",
            config.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("LlamaForCausalLM"), "{msg}");
}

#[test]
fn unsupported_rope_scaling() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), dir.path());
    let p = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["rope_parameters"]["rope_type"] = "yarn".into();
    std::fs::write(&p, cfg.to_string()).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.starts_with(&format!("{}: RoPE type `yarn`", p.display())),
        "{msg}"
    );
}

#[test]
fn tokenizer_larger_than_model_vocab() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), dir.path());
    let p = dir.path().join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let added = tok["added_tokens"].as_array_mut().unwrap();
    for i in 0..20 {
        added.push(serde_json::json!({"id": 300 + i, "content": format!("<extra_{i}>"),
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    }
    std::fs::write(&p, tok.to_string()).unwrap();
    let msg = load_err(dir.path());
    assert_eq!(
        msg,
        format!(
            "{}: the tokenizer has 320 tokens but the model's vocab_size is 300: they do not belong to the same model",
            p.display()
        )
    );
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), dir.path());
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.starts_with(&format!(
            "{}: not a valid safetensors file (truncated or corrupt?)",
            p.display()
        )),
        "{msg}"
    );
}

#[test]
fn pickle_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("tiny-llama").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not really a pickle").unwrap();
    let msg = load_err(dir.path());
    let bin = dir.path().join("pytorch_model.bin");
    assert!(
        msg.starts_with(&format!(
            "{}: refusing to load a pickle checkpoint",
            bin.display()
        )),
        "{msg}"
    );
}

#[test]
fn missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama-sharded"), dir.path());
    let shard = dir.path().join("model-00002-of-00004.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.starts_with(&format!("{}: shard listed in", shard.display())),
        "{msg}"
    );
}

#[test]
fn config_that_does_not_fit_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), dir.path());
    let p = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["intermediate_size"] = 48.into();
    std::fs::write(&p, cfg.to_string()).unwrap();
    let msg = load_err(dir.path());
    let st = dir.path().join("model.safetensors");
    assert!(
        msg.starts_with(&format!(
            "{}: tensor `model.layers.0.mlp.down_proj.weight` has shape [32, 64]",
            st.display()
        )),
        "{msg}"
    );
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama-gguf").join("tiny-llama.gguf");
    let p = dir.path().join("cut.gguf");
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load_err(&p);
    assert!(
        msg.starts_with(&format!("{}: tensor `", p.display())),
        "{msg}"
    );
    assert!(msg.contains("truncated"), "{msg}");
}
