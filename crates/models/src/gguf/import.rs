//! A GGUF's tensors renamed to HF's keys (Q/K rows un-permuted) and its
//! metadata turned into HF's `config.json`; written out as an HF directory.

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};
use tch::Tensor;

use super::reader::{GgufFile, Value};
use super::tokenizer::gguf_tokenizer;
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// Undoes llama.cpp's `permute` of Q/K projection rows (its RoPE pairs
/// adjacent features; HF's rotate-half pairs feature i with i + D/2).
pub fn unpermute_qk(w: &Tensor, heads: i64) -> Tensor {
    let size = w.size();
    let rows = size[0];
    // llama.cpp: reshape(h, 2, D/2, in).swapaxes(1, 2); inverse: reshape(h, D/2, 2, in).swapaxes(1, 2).
    w.reshape([heads, rows / heads / 2, 2, -1])
        .transpose(1, 2)
        .reshape(size.as_slice())
        .contiguous()
}

/// A GGUF model converted to HF form, in memory.
pub struct Imported {
    pub source: PathBuf,
    pub config: Json,
    pub generation_config: Json,
    pub tensors: Vec<(String, Tensor)>,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    pub tokenizer_config: Json,
}

fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = name.rsplit_once('.')?;
    let hf = match base {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Reads a Llama-architecture GGUF file into HF form.
pub fn import(path: &Path) -> Result<Imported> {
    let f = GgufFile::read(path)?;
    let arch = f
        .need("general.architecture")?
        .as_str()
        .unwrap_or("?")
        .to_string();
    if arch != "llama" {
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            arch: format!("{arch} (GGUF)"),
            supported: "llama (GGUF)".into(),
        });
    }
    if let Some(kind) = f.get("llama.rope.scaling.type").and_then(Value::as_str) {
        if kind != "none" {
            return Err(ModelError::file(
                path,
                format!("RoPE scaling `{kind}` is not supported"),
            ));
        }
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = f.need_u64(&key("embedding_length"))? as i64;
    let heads = f.need_u64(&key("attention.head_count"))? as i64;
    let kv_heads = f
        .get(&key("attention.head_count_kv"))
        .and_then(Value::as_u64)
        .map_or(heads, |v| v as i64);
    let layers = f.need_u64(&key("block_count"))? as i64;
    let ffn = f.need_u64(&key("feed_forward_length"))? as i64;
    let head_dim = f
        .get(&key("attention.key_length"))
        .and_then(Value::as_u64)
        .map_or(hidden / heads, |v| v as i64);
    let eps = f
        .get(&key("attention.layer_norm_rms_epsilon"))
        .and_then(Value::as_f64)
        .unwrap_or(1e-5);
    // Stored as f32 in GGUF: print it the way HF configs write it (1e-05, not 9.99e-06).
    let eps: f64 = format!("{:e}", eps as f32).parse().unwrap_or(eps);
    let theta = f
        .get(&key("rope.freq_base"))
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0);
    let context = f
        .get(&key("context_length"))
        .and_then(Value::as_u64)
        .unwrap_or(2048);

    let mut tensors = Vec::with_capacity(f.tensors.len());
    let mut vocab = None;
    for t in &f.tensors {
        let name = hf_name(&t.name).ok_or_else(|| {
            ModelError::file(
                path,
                format!("unexpected tensor `{}` for a llama GGUF", t.name),
            )
        })?;
        let mut w = f.tensor_f32(t)?;
        if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
            w = unpermute_qk(&w, heads);
        } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
            w = unpermute_qk(&w, kv_heads);
        }
        if name == "model.embed_tokens.weight" {
            vocab = Some(w.size()[0]);
        }
        tensors.push((name, w));
    }
    let vocab = vocab.ok_or_else(|| ModelError::file(path, "no token_embd.weight tensor"))?;
    let tied = !tensors.iter().any(|(n, _)| n == "lm_head.weight");
    let bias = tensors.iter().any(|(n, _)| n.ends_with("q_proj.bias"));
    let bos = f.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64);
    let eos = f.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64);
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "max_position_embeddings": context,
        "tie_word_embeddings": tied,
        "attention_bias": bias,
        "hidden_act": "silu",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    });
    let generation_config = json!({ "bos_token_id": bos, "eos_token_id": eos });
    let (tokenizer, tokenizer_config) = match f.get("tokenizer.ggml.model") {
        Some(_) => {
            let (t, c) = gguf_tokenizer(&f)?;
            (Some(t), c)
        }
        None => (None, json!({})),
    };
    Ok(Imported {
        source: path.to_path_buf(),
        config,
        generation_config,
        tensors,
        tokenizer,
        tokenizer_config,
    })
}

impl Imported {
    pub(super) fn text_tokenizer(&self, model_vocab: i64) -> Result<Option<TextTokenizer>> {
        let Some(tok) = &self.tokenizer else {
            return Ok(None);
        };
        let s = |k: &str| self.tokenizer_config[k].as_str().map(str::to_string);
        TextTokenizer::from_parts(
            tok.clone(),
            &self.source,
            s("chat_template"),
            s("bos_token"),
            s("eos_token"),
            model_vocab,
        )
        .map(Some)
    }

    /// Writes an HF directory: `config.json`, `generation_config.json`,
    /// `model.safetensors` (f32), `tokenizer.json`, `tokenizer_config.json`.
    pub fn write_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e.to_string()))?;
        let write_json = |name: &str, v: &Json| {
            let p = dir.join(name);
            let text = serde_json::to_string_pretty(v).expect("JSON values serialize");
            std::fs::write(&p, text + "\n").map_err(|e| ModelError::file(&p, e.to_string()))
        };
        write_json("config.json", &self.config)?;
        write_json("generation_config.json", &self.generation_config)?;
        let st = dir.join("model.safetensors");
        Tensor::write_safetensors(&self.tensors, &st)
            .map_err(|e| ModelError::file(&st, e.to_string()))?;
        if let Some(tok) = &self.tokenizer {
            let p = dir.join("tokenizer.json");
            tok.save(&p, false)
                .map_err(|e| ModelError::file(&p, e.to_string()))?;
            write_json("tokenizer_config.json", &self.tokenizer_config)?;
        }
        Ok(())
    }
}
