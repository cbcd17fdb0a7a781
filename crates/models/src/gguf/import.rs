//! A GGUF's tensors renamed to HF's keys (Q/K rows un-permuted) and its
//! metadata turned into HF's `config.json`; written out as an HF directory.

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};
use tch::Tensor;

use super::reader::{GgufFile, Value};
use super::tokenizer::gguf_tokenizer;
use crate::check;
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// Undoes llama.cpp's `permute` of Q/K projection rows (its RoPE pairs
/// adjacent features; HF's rotate-half pairs feature i with i + D/2).
///
/// # Panics
///
/// Unless `w` is 1-D or 2-D with rows a multiple of `2 × heads`
/// ([`try_unpermute_qk`] returns an error instead).
pub fn unpermute_qk(w: &Tensor, heads: i64) -> Tensor {
    try_unpermute_qk(w, heads).unwrap_or_else(|e| panic!("unpermute_qk: {e}"))
}

/// [`unpermute_qk`], or an error when the rows do not split into `heads`
/// heads of an even size.
pub fn try_unpermute_qk(w: &Tensor, heads: i64) -> std::result::Result<Tensor, String> {
    let size = w.size();
    let rows = size.first().copied().unwrap_or(0);
    if !(1..=2).contains(&size.len()) || heads < 1 || rows % (2 * heads) != 0 {
        return Err(format!(
            "shape {size:?} does not split into {heads} heads of an even size"
        ));
    }
    // llama.cpp: reshape(h, 2, D/2, in).swapaxes(1, 2); inverse: reshape(h, D/2, 2, in).swapaxes(1, 2).
    w.f_reshape([heads, rows / heads / 2, 2, -1])
        .and_then(|t| t.f_transpose(1, 2))
        .and_then(|t| t.f_reshape(size.as_slice()))
        .and_then(|t| t.f_contiguous())
        .map_err(|e| e.to_string())
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
    import_file(&GgufFile::read(path)?)
}

/// A size from the metadata: in `1..=max` (see [`crate::check`]).
fn size(f: &GgufFile, key: &str, value: u64, max: i64) -> Result<i64> {
    let v = i64::try_from(value).unwrap_or(i64::MAX);
    check::dim(&f.path, key, v, max)
}

/// [`import`] of a file already read.
pub fn import_file(f: &GgufFile) -> Result<Imported> {
    let path = f.path.as_path();
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
    // Sizes are checked here (the divisions below, the un-permutation);
    // the config they make is checked in full where it is declared.
    let need = |k: &str, max: i64| {
        let k = key(k);
        size(f, &k, f.need_u64(&k)?, max)
    };
    let optional = |k: &str, max: i64| {
        let k = key(k);
        f.get(&k)
            .and_then(Value::as_u64)
            .map(|v| size(f, &k, v, max))
            .transpose()
    };
    let hidden = need("embedding_length", check::MAX_HIDDEN)?;
    let heads = need("attention.head_count", check::MAX_HEADS)?;
    let kv_heads = optional("attention.head_count_kv", check::MAX_HEADS)?.unwrap_or(heads);
    let layers = need("block_count", check::MAX_LAYERS)?;
    let ffn = need("feed_forward_length", check::MAX_INTERMEDIATE)?;
    let head_dim = match optional("attention.key_length", check::MAX_HIDDEN)? {
        Some(d) => d,
        None => {
            check::divides(
                path,
                &key("embedding_length"),
                hidden,
                &key("attention.head_count"),
                heads,
            )?;
            hidden / heads
        }
    };
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
    let context = optional("context_length", check::MAX_POSITIONS)?.unwrap_or(2048);

    let mut tensors = Vec::with_capacity(f.tensors.len());
    let mut seen = std::collections::HashMap::new();
    let mut vocab = None;
    for t in &f.tensors {
        let name = hf_name(&t.name).ok_or_else(|| {
            ModelError::file(
                path,
                format!("unexpected tensor `{}` for a llama GGUF", t.name),
            )
        })?;
        if let Some(other) = seen.insert(name.clone(), &t.name) {
            return Err(ModelError::file(
                path,
                format!("tensors `{other}` and `{}` are both `{name}`", t.name),
            ));
        }
        let mut w = f.tensor_f32(t)?;
        let unpermute = |w: &Tensor, heads: i64| {
            try_unpermute_qk(w, heads)
                .map_err(|e| ModelError::file(path, format!("tensor `{}`: {e}", t.name)))
        };
        if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
            w = unpermute(&w, heads)?;
        } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
            w = unpermute(&w, kv_heads)?;
        }
        if name == "model.embed_tokens.weight" {
            vocab = w.size().first().copied();
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
            let (t, c) = gguf_tokenizer(f)?;
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
    /// The HF files an export of this model carries: its tokenizer and
    /// generation settings, rebuilt.
    pub fn companions(&self) -> crate::export::Companions {
        crate::export::Companions::Gguf(std::sync::Arc::new(crate::export::GgufFiles {
            tokenizer_json: self.tokenizer.as_ref().and_then(|t| t.to_string(true).ok()),
            tokenizer_config: self.tokenizer_config.clone(),
            generation_config: self.generation_config.clone(),
        }))
    }

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
