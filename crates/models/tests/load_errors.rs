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

// ---------------------------------------------------------------------------
// Hostile files: every crafted size, count, dtype or value below must give an
// error naming the file and what is wrong, never a panic or an allocation
// sized by the file.

use align_core::{ModelContext, ModelSpec};
use align_models::gguf::{self, GgufFile};
use align_models::hf::{HfModelConfig, HfSpec};
use common::gguf::{tiny_llama, Gguf, Meta};
use common::{edit_json, edit_weights, fixture_copy};
use tch::{Kind, Tensor};

/// Writes `g` as `dir/x.gguf` and returns the load error.
fn gguf_err(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.gguf");
    std::fs::write(&p, bytes).unwrap();
    let msg = load_err(&p);
    assert!(msg.starts_with(&format!("{}: ", p.display())), "{msg}");
    (dir, p, msg)
}

/// `bytes` with the little-endian `value` written at `pos`.
fn patched(mut bytes: Vec<u8>, pos: usize, value: &[u8]) -> Vec<u8> {
    bytes[pos..pos + value.len()].copy_from_slice(value);
    bytes
}

#[test]
fn crafted_gguf_loads_when_intact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    std::fs::write(&p, tiny_llama().bytes()).unwrap();
    let lm = load(&p, DType::F32, Device::Cpu).unwrap();
    assert_eq!(lm.policy.vocab_size(), 16);
    assert_eq!(lm.max_positions, Some(32));
    let ids = Tensor::from_slice(&[0i64, 10, 12]).view([1, 3]);
    let logits = tch::no_grad(|| lm.policy.forward(&ids, &ids.ones_like()));
    assert_eq!(logits.size(), [1, 3, 16]);
    let tok = lm.tokenizer.unwrap();
    assert_eq!(tok.encode("abcd", false).unwrap(), vec![12]);
}

#[test]
fn gguf_huge_tensor_count() {
    let bytes = patched(tiny_llama().bytes(), 8, &u64::MAX.to_le_bytes());
    let (_d, _p, msg) = gguf_err(&bytes);
    assert!(
        msg.ends_with("tensor count at byte 8 is 18446744073709551615, over the limit of 1048576"),
        "{msg}"
    );
    // Under the limit, but more tensor infos than the file has bytes for.
    let bytes = patched(tiny_llama().bytes(), 8, &1_000_000u64.to_le_bytes());
    let (_d, _p, msg) = gguf_err(&bytes);
    assert!(
        msg.contains("tensor count at byte 8 is 1000000, which needs at least 24000000 bytes"),
        "{msg}"
    );
}

#[test]
fn gguf_huge_kv_count() {
    let bytes = patched(tiny_llama().bytes(), 16, &(1u64 << 40).to_le_bytes());
    let (_d, _p, msg) = gguf_err(&bytes);
    assert!(
        msg.contains("metadata key-value count at byte 16 is 1099511627776, over the limit"),
        "{msg}"
    );
}

#[test]
fn gguf_huge_string_length() {
    // The first key's length is at byte 24.
    let bytes = patched(tiny_llama().bytes(), 24, &(u64::MAX - 3).to_le_bytes());
    let (_d, _p, msg) = gguf_err(&bytes);
    assert!(
        msg.contains("string length at byte 24 is 18446744073709551612, more than the"),
        "{msg}"
    );
    assert!(msg.contains("bytes left in the file"), "{msg}");
}

#[test]
fn gguf_alignment_zero_or_not_a_power_of_two() {
    for bad in [0u32, 3, 1 << 30] {
        let mut g = tiny_llama();
        g.set("general.alignment", Meta::U32(bad));
        // The writer pads to 1 for 0; the reader must refuse either way.
        let (_d, _p, msg) = gguf_err(&g.bytes());
        assert!(
            msg.contains(&format!(
                "general.alignment is U32({bad}); it must be a power of two from 1 to 1048576"
            )),
            "{msg}"
        );
    }
}

#[test]
fn gguf_dimensions_whose_product_overflows() {
    let mut g = tiny_llama();
    g.tensor_mut("output_norm.weight").dims = vec![1 << 32, 1 << 32, 2];
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.contains(
            "tensor `output_norm.weight`: dimensions [4294967296, 4294967296, 2] multiply past"
        ),
        "{msg}"
    );
    // One dimension past i64, a zero beside it (no overflow, but no shape).
    let mut g = tiny_llama();
    g.tensor_mut("output_norm.weight").dims = vec![0, u64::MAX];
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.contains(
            "tensor `output_norm.weight` has a dimension of 18446744073709551615, over the limit"
        ),
        "{msg}"
    );
    // Zero elements, but the other dims still overflow shape arithmetic.
    let mut g = tiny_llama();
    g.tensor_mut("output_norm.weight").dims = vec![1 << 62, 0, 1 << 62];
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.contains("tensor `output_norm.weight`: dimensions [4611686018427387904, 0, 4611686018427387904] multiply past 9223372036854775807"),
        "{msg}"
    );
    // Too many dimensions.
    let mut g = tiny_llama();
    g.tensor_mut("output_norm.weight").dims = vec![1; 9];
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.contains("tensor `output_norm.weight` has 9 dimensions, over the limit of 4"),
        "{msg}"
    );
    // A product that fits but runs past the file.
    let mut g = tiny_llama();
    g.tensor_mut("output_norm.weight").dims = vec![1 << 40];
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.contains("tensor `output_norm.weight` (1099511627776 elements of F32 at offset"),
        "{msg}"
    );
    assert!(msg.contains("runs past the end of the file"), "{msg}");
}

#[test]
fn gguf_deeply_nested_arrays() {
    let mut v = Meta::Array(4, vec![Meta::U32(1)]);
    for _ in 0..10 {
        v = Meta::Array(9, vec![v]);
    }
    let mut g = tiny_llama();
    g.set("x.nested", v);
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.contains("metadata `x.nested`: arrays nested more than 4 deep"),
        "{msg}"
    );
    // 2^62 nested arrays claimed in a few bytes.
    let mut g = tiny_llama();
    g.set("x.nested", Meta::Array(9, vec![]));
    let (mut bytes, fields) = g.bytes_and_fields();
    let len = fields
        .iter()
        .rev()
        .find(|f| f.what == "array length")
        .unwrap();
    bytes[len.pos..len.pos + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let (_d, _p, msg) = gguf_err(&bytes);
    assert!(msg.contains("array length at byte"), "{msg}");
    assert!(msg.contains("over the limit of 16777216"), "{msg}");
}

#[test]
fn gguf_duplicate_key_and_tensor() {
    let mut g = tiny_llama();
    g.kv.push(("llama.block_count".into(), Meta::U32(1)));
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.ends_with("metadata key `llama.block_count` appears twice"),
        "{msg}"
    );
    let mut g = tiny_llama();
    let t = g.tensors[1].clone();
    g.tensors.push(t);
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.ends_with("tensor `output_norm.weight` appears twice"),
        "{msg}"
    );
}

#[test]
fn gguf_zero_heads_and_heads_not_dividing() {
    let mut g = tiny_llama();
    g.set("llama.attention.head_count", Meta::U32(0));
    let (_d, p, msg) = gguf_err(&g.bytes());
    assert_eq!(
        msg,
        format!(
            "{}: `llama.attention.head_count` is 0; it must be between 1 and 4096",
            p.display()
        )
    );
    let mut g = tiny_llama();
    g.set("llama.attention.head_count", Meta::U32(5));
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.ends_with(
            "`llama.embedding_length` (32) is not a multiple of `llama.attention.head_count` (5)"
        ),
        "{msg}"
    );
    // Q rows that do not split into the declared heads (key_length given).
    let mut g = tiny_llama();
    g.set("llama.attention.head_count", Meta::U32(3));
    g.set("llama.attention.key_length", Meta::U32(8));
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.contains("tensor `blk.0.attn_q.weight`: shape [32, 32] does not split into 3 heads"),
        "{msg}"
    );
}

#[test]
fn gguf_more_layers_than_block_count() {
    let mut g = tiny_llama();
    g.set("llama.block_count", Meta::U32(1));
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.contains(
            "tensor `model.layers.1.input_layernorm.weight` is in layer 1 of `model.layers`, \
             but the config declares 1 layer(s)"
        ),
        "{msg}"
    );
}

#[test]
fn gguf_nan_weight() {
    let mut g = tiny_llama();
    let t = g.tensor_mut("blk.1.ffn_up.weight");
    t.data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.ends_with("tensor `model.layers.1.mlp.up_proj.weight` has 1 NaN or infinite value(s)"),
        "{msg}"
    );
}

#[test]
fn gguf_absurd_sizes_are_refused_before_allocation() {
    // 2^16 hidden × 2^16 MLP × 2 layers: far more than the file holds.
    let mut g = tiny_llama();
    g.set("llama.embedding_length", Meta::U32(1 << 16));
    g.set("llama.attention.key_length", Meta::U32(8));
    g.set("llama.feed_forward_length", Meta::U32(1 << 16));
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(msg.contains("the config declares a model of"), "{msg}");
    assert!(
        msg.contains("the config does not describe these weights"),
        "{msg}"
    );
    // Past any checkpoint: 2^17 hidden × 2^20 MLP.
    g.set("llama.embedding_length", Meta::U32(1 << 17));
    g.set("llama.feed_forward_length", Meta::U32(1 << 20));
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.ends_with(
            "the sizes in this config imply more than 274877906944 parameters; is it corrupt?"
        ),
        "{msg}"
    );
    let mut g = tiny_llama();
    g.set("llama.block_count", Meta::U64(u64::MAX));
    let (_d, _p, msg) = gguf_err(&g.bytes());
    assert!(
        msg.ends_with("`llama.block_count` is 9223372036854775807; it must be between 1 and 4096"),
        "{msg}"
    );
}

/// `tiny-llama` with `edit` applied to its config.json: the load error.
fn llama_config_err(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = fixture_copy("tiny-llama");
    let p = dir.path().join("config.json");
    edit_json(&p, edit);
    let msg = load_err(dir.path());
    assert!(msg.starts_with(&format!("{}: ", p.display())), "{msg}");
    msg
}

#[test]
fn config_zero_or_inconsistent_sizes() {
    let msg = llama_config_err(|c| c["num_attention_heads"] = 0.into());
    assert!(
        msg.ends_with("`num_attention_heads` is 0; it must be between 1 and 4096"),
        "{msg}"
    );
    let msg = llama_config_err(|c| {
        c["num_attention_heads"] = 5.into();
        c["head_dim"] = serde_json::Value::Null;
    });
    assert!(
        msg.ends_with("`num_attention_heads` (5) is not a multiple of `num_key_value_heads` (2)"),
        "{msg}"
    );
    let msg = llama_config_err(|c| {
        c["num_attention_heads"] = 6.into();
        c["head_dim"] = serde_json::Value::Null;
    });
    assert!(
        msg.ends_with("`hidden_size` (32) is not a multiple of `num_attention_heads` (6)"),
        "{msg}"
    );
    let msg = llama_config_err(|c| c["num_hidden_layers"] = 0.into());
    assert!(
        msg.ends_with("`num_hidden_layers` is 0; it must be between 1 and 4096"),
        "{msg}"
    );
    let msg = llama_config_err(|c| c["vocab_size"] = 0.into());
    assert!(
        msg.ends_with("`vocab_size` is 0; it must be between 1 and 8388608"),
        "{msg}"
    );
    let msg = llama_config_err(|c| c["vocab_size"] = (-300).into());
    assert!(msg.contains("`vocab_size` is -300"), "{msg}");
    let msg = llama_config_err(|c| c["head_dim"] = 7.into());
    assert!(msg.contains("head dimension 7 is odd"), "{msg}");
    let msg = llama_config_err(|c| c["rope_parameters"]["rope_theta"] = (-1.0).into());
    assert!(msg.contains("`rope_theta` is -1"), "{msg}");
}

#[test]
fn config_absurd_sizes_are_refused_before_allocation() {
    // In bounds one by one, but 2 embeddings of 2^20 × 2^16 (+ 2 layers): ~1.4·10^11
    // values, refused against the checkpoint's size (nothing allocated).
    let msg = llama_config_err(|c| {
        c["vocab_size"] = (1i64 << 20).into();
        c["hidden_size"] = (1i64 << 16).into();
    });
    assert!(
        msg.contains("the config declares a model of 137477029888 parameters but the checkpoint"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "{msg}");
    // Past any checkpoint: 8M × 2^17 × 2.
    let msg = llama_config_err(|c| {
        c["vocab_size"] = (1i64 << 23).into();
        c["hidden_size"] = (1i64 << 17).into();
    });
    assert!(
        msg.ends_with("imply more than 274877906944 parameters; is it corrupt?"),
        "{msg}"
    );
    let msg = llama_config_err(|c| c["hidden_size"] = (1i64 << 40).into());
    assert!(
        msg.ends_with("`hidden_size` is 1099511627776; it must be between 1 and 131072"),
        "{msg}"
    );
}

#[test]
fn gpt2_and_bert_configs_are_checked_too() {
    let dir = fixture_copy("tiny-gpt2");
    let p = dir.path().join("config.json");
    edit_json(&p, |c| c["n_head"] = 5.into());
    let msg = load_err(dir.path());
    assert_eq!(
        msg,
        format!(
            "{}: `n_embd` (32) is not a multiple of `n_head` (5)",
            p.display()
        )
    );
    let dir = fixture_copy("tiny-bert");
    let p = dir.path().join("config.json");
    edit_json(&p, |c| c["num_attention_heads"] = 0.into());
    let err = align_models::bert::Bert::from_dir(dir.path(), DType::F32, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: `num_attention_heads` is 0; it must be between 1 and 4096",
            p.display()
        )
    );
    edit_json(&p, |c| {
        c["num_attention_heads"] = 4.into();
        c["max_position_embeddings"] = (1i64 << 24).into();
    });
    let err = align_models::bert::Bert::from_dir(dir.path(), DType::F32, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("the config declares a model of"), "{err}");
}

#[test]
fn integer_tensor_as_a_weight() {
    let dir = fixture_copy("tiny-llama");
    edit_weights(dir.path(), |ts| {
        let t = ts
            .iter_mut()
            .find(|(n, _)| n == "model.norm.weight")
            .unwrap();
        t.1 = t.1.to_kind(Kind::Int64);
    });
    let msg = load_err(dir.path());
    let st = dir.path().join("model.safetensors");
    assert_eq!(
        msg,
        format!(
            "{}: tensor `model.norm.weight` has dtype Int64; a weight must be a float tensor \
             (F16, BF16, F32 or F64)",
            st.display()
        )
    );
}

#[test]
fn fewer_layers_in_config_than_in_weights() {
    let dir = fixture_copy("tiny-llama");
    edit_json(&dir.path().join("config.json"), |c| {
        c["num_hidden_layers"] = 1.into()
    });
    let msg = load_err(dir.path());
    assert_eq!(
        msg,
        format!(
            "{}: tensor `model.layers.1.input_layernorm.weight` is in layer 1 of `model.layers`, \
             but the config declares 1 layer(s): it would be left unused (is the config's layer \
             count right for this checkpoint?)",
            dir.path().join("model.safetensors").display()
        )
    );
}

#[test]
fn fewer_layers_gpt2_with_prefix_variant() {
    // GPT-2 checkpoints may lack the `transformer.` prefix; the extra layer
    // is found under either spelling.
    let dir = fixture_copy("tiny-gpt2");
    edit_json(&dir.path().join("config.json"), |c| c["n_layer"] = 1.into());
    let msg = load_err(dir.path());
    assert!(msg.contains("h.1."), "{msg}");
    assert!(msg.contains("the config declares 1 layer(s)"), "{msg}");
}

#[test]
fn nan_and_inf_weights() {
    for bad in [f64::NAN, f64::INFINITY] {
        let dir = fixture_copy("tiny-llama");
        edit_weights(dir.path(), |ts| {
            let t = ts
                .iter_mut()
                .find(|(n, _)| n == "model.layers.0.mlp.up_proj.weight")
                .unwrap();
            let _ = t.1.get(3).get(5).fill_(bad);
        });
        let msg = load_err(dir.path());
        assert_eq!(
            msg,
            format!(
                "{}: tensor `model.layers.0.mlp.up_proj.weight` has 1 NaN or infinite value(s)",
                dir.path().join("model.safetensors").display()
            )
        );
    }
}

fn hf_spec(path: &Path) -> HfSpec {
    HfSpec::new(HfModelConfig {
        path: align_core::manifest::InputPath::new(path),
        dtype: DType::F32,
        lora: None,
        adapter: None,
        gradient_checkpointing: false,
    })
}

fn ctx(max_len: Option<i64>) -> ModelContext {
    ModelContext {
        device: Device::Cpu,
        vocab_size: None,
        max_len,
        seed: 0,
    }
}

#[test]
fn task_longer_than_the_model_context_is_refused_at_build() {
    for (name, cap, key) in [
        ("tiny-gpt2", 64, "n_positions"),
        ("tiny-llama", 64, "max_position_embeddings"),
    ] {
        let dir = fixture(name);
        let spec = hf_spec(&dir);
        assert!(spec.build(&ctx(Some(cap))).is_ok());
        let err = spec.build(&ctx(Some(cap + 36))).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "{}: the task's longest sequence (prompt + completion) is {} tokens but this \
                 model takes at most {cap} (`{key}`); lower the task's maximum prompt and \
                 completion tokens to fit {cap}",
                dir.display(),
                cap + 36
            )
        );
    }
    // A GGUF: its context_length.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    std::fs::write(&p, tiny_llama().bytes()).unwrap();
    let err = hf_spec(&p).build(&ctx(Some(33))).err().unwrap().to_string();
    assert!(
        err.contains("is 33 tokens but this model takes at most 32 (`llama.context_length`)"),
        "{err}"
    );
}

/// A learned-position model given a longer sequence than its table (past
/// the build-time check) stops at the entry with a message naming both
/// numbers, not an index error inside LibTorch (a device-side assert on
/// CUDA). `Policy::forward` has no error path.
#[test]
#[should_panic(
    expected = "GPT-2 forward: a sequence of 65 tokens but the model has 64 positions (n_positions)"
)]
fn gpt2_forward_past_its_positions_names_both_numbers() {
    let lm = load(&fixture("tiny-gpt2"), DType::F32, Device::Cpu).unwrap();
    let ids = Tensor::zeros([1, 65], (Kind::Int64, Device::Cpu));
    let _ = lm.policy.forward(&ids, &ids.ones_like());
}

#[test]
#[should_panic(
    expected = "BERT forward: 33 tokens but the model has 32 positions (max_position_embeddings)"
)]
fn bert_forward_past_its_positions_names_both_numbers() {
    let (_vs, bert) =
        align_models::bert::Bert::from_dir(&fixture("tiny-bert"), DType::F32, Device::Cpu).unwrap();
    assert_eq!(bert.max_positions(), 32);
    let ids = Tensor::zeros([1, 33], (Kind::Int64, Device::Cpu));
    let _ = bert.forward(&ids, &ids.ones_like(), None);
}

#[test]
fn garbage_and_huge_tokenizer_json() {
    let dir = fixture_copy("tiny-llama");
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, b"\x00\xffnot json{{{{").unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.starts_with(&format!("{}: cannot read tokenizer", p.display())),
        "{msg}"
    );
    // Deep nesting is a parse error, not a stack overflow.
    std::fs::write(&p, "[".repeat(100_000)).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.starts_with(&format!("{}: cannot read tokenizer", p.display())),
        "{msg}"
    );
    // A (sparse) file over the limit is refused before it is read.
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(align_models::tokenizer::MAX_TOKENIZER_BYTES + 1)
        .unwrap();
    let msg = load_err(dir.path());
    assert_eq!(
        msg,
        format!(
            "{}: 1073741825 bytes is over the limit of 1073741824 for a tokenizer.json",
            p.display()
        )
    );
}

#[test]
fn huge_config_json() {
    let dir = fixture_copy("tiny-llama");
    let p = dir.path().join("config.json");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(align_models::hf::MAX_JSON_BYTES + 1).unwrap();
    let msg = load_err(dir.path());
    assert_eq!(
        msg,
        format!(
            "{}: 268435457 bytes is over the limit of 268435456 for a JSON file",
            p.display()
        )
    );
}

/// A safetensors file: header JSON then `data`.
fn safetensors_bytes(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

#[test]
fn crafted_safetensors_headers() {
    use align_models::weights::check_safetensors_header;
    let good = serde_json::json!({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}});
    assert!(check_safetensors_header(&safetensors_bytes(&good, &[0; 16])).is_ok());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![1, 2, 3], "3 bytes: too short"),
        (
            u64::MAX.to_le_bytes().to_vec(),
            "header length 18446744073709551615 is over the 0 bytes after it",
        ),
        (
            safetensors_bytes(
                &serde_json::json!({"w": {"dtype": "F32", "shape": [1u64 << 62, 1u64 << 62], "data_offsets": [0, 16]}}),
                &[0; 16],
            ),
            "tensor `w`: shape [4611686018427387904, 4611686018427387904] multiplies past",
        ),
        (
            safetensors_bytes(
                &serde_json::json!({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, u64::MAX]}}),
                &[0; 16],
            ),
            "tensor `w`: data_offsets [0, 18446744073709551615] are not inside the 16-byte data section",
        ),
        (
            safetensors_bytes(
                &serde_json::json!({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}),
                &[0; 16],
            ),
            "tensor `w`: shape [4] of F32 needs 16 bytes but data_offsets [0, 8] hold 8",
        ),
        (
            safetensors_bytes(
                &serde_json::json!({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 8]}}),
                &[0; 16],
            ),
            "tensor `w`: unknown dtype `Q4`",
        ),
    ];
    for (bytes, want) in cases {
        let err = check_safetensors_header(&bytes).unwrap_err();
        assert!(err.starts_with(want), "{err} (want {want})");
    }
    // Through the loader: the file is named.
    let dir = fixture_copy("tiny-llama");
    let st = dir.path().join("model.safetensors");
    std::fs::write(
        &st,
        safetensors_bytes(
            &serde_json::json!({"w": {"dtype": "F32", "shape": [1u64 << 40], "data_offsets": [0, 16]}}),
            &[0; 16],
        ),
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.starts_with(&format!(
            "{}: not a valid safetensors file (truncated or corrupt?): tensor `w`: shape [1099511627776] of F32 needs 4398046511104 bytes",
            st.display()
        )),
        "{msg}"
    );
}

#[test]
fn shard_index_pointing_outside_the_directory() {
    let dir = fixture_copy("tiny-llama-sharded");
    let index = dir.path().join("model.safetensors.index.json");
    edit_json(&index, |v| {
        v["weight_map"]["model.norm.weight"] = "../../etc/passwd".into();
    });
    let msg = load_err(dir.path());
    assert_eq!(
        msg,
        format!(
            "{}: shard `../../etc/passwd` is not a file name in this directory",
            index.display()
        )
    );
}

/// The parameter counts `validate` computes (and checks against the
/// checkpoint before declaring) equal what the models declare.
#[test]
fn validated_parameter_counts_match_the_declared_models() {
    let count =
        |vs: &tch::nn::VarStore| -> u64 { vs.variables().values().map(|t| t.numel() as u64).sum() };
    for name in [
        "tiny-llama",
        "tiny-llama-tied",
        "tiny-llama3-rope",
        "tiny-gpt2",
        "tiny-gpt-neox",
    ] {
        let p = fixture(name).join("config.json");
        let cfg: serde_json::Value = align_models::hf::read_json(&p).unwrap();
        let lm = load(&fixture(name), DType::F32, Device::Cpu).unwrap();
        let declared = count(lm.policy.var_store());
        let validated = match lm.architecture {
            align_models::Architecture::Llama => {
                serde_json::from_value::<align_models::llama::LlamaConfig>(cfg)
                    .unwrap()
                    .validate(&p)
                    .unwrap()
            }
            align_models::Architecture::Gpt2 => {
                serde_json::from_value::<align_models::gpt2::Gpt2Config>(cfg)
                    .unwrap()
                    .validate(&p)
                    .unwrap()
            }
            align_models::Architecture::GptNeoX => {
                let c: align_models::gpt_neox::GptNeoXConfig = serde_json::from_value(cfg).unwrap();
                c.validate(&p, c.rope.partial()).unwrap()
            }
        };
        assert_eq!(validated, declared, "{name}");
    }
    let (cfg, _) = align_models::bert::BertConfig::load(&fixture("tiny-bert")).unwrap();
    let (vs, _) =
        align_models::bert::Bert::from_dir(&fixture("tiny-bert"), DType::F32, Device::Cpu).unwrap();
    assert_eq!(
        cfg.validate(&fixture("tiny-bert").join("config.json"))
            .unwrap(),
        count(&vs)
    );
}

#[test]
fn gguf_reader_accepts_the_crafted_file_from_bytes() {
    let g: Gguf = tiny_llama();
    let f = GgufFile::from_bytes(Path::new("mem.gguf"), g.bytes()).unwrap();
    assert_eq!(f.tensors.len(), 2 + 9 * 2);
    let imported = gguf::import_file(&f).unwrap();
    assert_eq!(imported.config["num_hidden_layers"], 2);
}

#[test]
fn gradient_checkpointing_is_refused_for_models_without_it() {
    for name in ["tiny-gpt2", "tiny-gpt-neox"] {
        let dir = fixture(name);
        let spec = HfSpec::new(HfModelConfig {
            gradient_checkpointing: true,
            ..hf_spec(&dir).config().clone()
        });
        let err = spec.build(&ctx(None)).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "{}: `gradient_checkpointing` is implemented for Llama-family models; drop it for this one",
                dir.display()
            )
        );
    }
    let spec = HfSpec::new(HfModelConfig {
        gradient_checkpointing: true,
        ..hf_spec(&fixture("tiny-llama")).config().clone()
    });
    assert!(spec.build(&ctx(None)).is_ok());
}
