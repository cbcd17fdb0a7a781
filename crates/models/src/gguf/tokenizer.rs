//! `tokenizer.json` and `tokenizer_config.json` rebuilt from the
//! `tokenizer.ggml.*` metadata: GPT-2-style byte-level BPE, or SentencePiece
//! BPE with byte fallback and merges derived from the scores.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value as Json};

use super::reader::{GgufFile, Value};
use crate::error::{ModelError, Result};

/// Longest token of a SentencePiece vocabulary whose merges are derived
/// from scores (real ones are a few dozen bytes).
pub const MAX_SCORED_TOKEN_BYTES: usize = 1024;

/// The llama.cpp pre-tokenizer names → HF pre-tokenizer JSON.
fn pre_tokenizer(path: &Path, pre: &str) -> Result<Json> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        // GPT-2's regex on top of one-digit splits.
        "smollm" | "starcoder" | "refact" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]
        }),
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                 "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]
        }),
        other => {
            return Err(ModelError::file(
                path,
                format!(
                    "GGUF pre-tokenizer `{other}` is not supported (smollm, starcoder, refact, gpt2, llama-bpe)"
                ),
            ))
        }
    })
}

/// BPE merges implied by a SentencePiece vocabulary, as transformers'
/// `generate_merges` derives them: every split of a token into two tokens of
/// the vocabulary, ordered by the merged token's score (best first, then
/// longer left and right parts first), ties kept in vocabulary order.
fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    // Python's dict semantics for a repeated token: its first position, its
    // last id and score.
    let id: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let score: HashMap<&str, f64> = tokens
        .iter()
        .map(String::as_str)
        .zip(scores.iter().copied())
        .collect();
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for token in tokens.iter().take(scores.len()) {
        if !seen.insert(token.as_str()) {
            continue;
        }
        let score = score[token.as_str()];
        let mut local: Vec<(f64, usize, usize, &str, &str)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .map(|(l, r)| (score, l.chars().count(), r.chars().count(), l, r))
            .collect();
        local.sort_by_key(|&(_, _, _, l, r)| (id[l], id[r]));
        merges.extend(local);
    }
    // Stable and descending, like Python's `sorted(..., reverse=True)`.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

/// Builds an HF tokenizer (byte-level BPE, or SentencePiece BPE) and its
/// `tokenizer_config.json` from `tokenizer.ggml.*` metadata.
pub(super) fn gguf_tokenizer(f: &GgufFile) -> Result<(tokenizers::Tokenizer, Json)> {
    let path = &f.path;
    let model = f.need("tokenizer.ggml.model")?.as_str().unwrap_or("?");
    if model != "gpt2" && model != "llama" {
        return Err(ModelError::file(
            path,
            format!(
                "GGUF tokenizer model `{model}` is not supported (`gpt2` byte-level BPE, \
                 `llama` SentencePiece BPE)"
            ),
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        f.need(key)?
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .ok_or_else(|| ModelError::file(path, format!("metadata `{key}` is not an array")))
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let sentencepiece = model == "llama";
    let merges: Vec<(String, String)> = if f.get("tokenizer.ggml.merges").is_some() {
        strings("tokenizer.ggml.merges")?
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((l, r)) => Ok((l.to_string(), r.to_string())),
                None => Err(ModelError::file(
                    path,
                    format!("merge `{m}` in `tokenizer.ggml.merges` is not two tokens"),
                )),
            })
            .collect::<Result<_>>()?
    } else if sentencepiece {
        // SentencePiece files carry scores instead of merges.
        let scores: Vec<f64> = f
            .need("tokenizer.ggml.scores")?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| {
                ModelError::file(
                    path,
                    "metadata `tokenizer.ggml.scores` is not an array of numbers",
                )
            })?;
        // Deriving merges costs the square of a token's length.
        if let Some((i, t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() > MAX_SCORED_TOKEN_BYTES)
        {
            return Err(ModelError::file(
                path,
                format!(
                    "token {i} is {} bytes long, over the limit of {MAX_SCORED_TOKEN_BYTES} \
                     for deriving merges from `tokenizer.ggml.scores`",
                    t.len()
                ),
            ));
        }
        merges_from_scores(&tokens, &scores)
    } else {
        return Err(ModelError::file(
            path,
            "metadata `tokenizer.ggml.merges` is missing",
        ));
    };
    let types: Vec<u64> = f
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // llama.cpp token types: 2 = unknown, 3 = control (both special, as
    // transformers adds them), 4 = user-defined (added, not special).
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(i, &t)| *i < tokens.len() && (t == 3 || t == 4 || (sentencepiece && t == 2)))
        .map(|(i, &t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t != 4})
        })
        .collect();
    let token = |key: &str| {
        f.get(key)
            .and_then(Value::as_u64)
            .and_then(|i| tokens.get(i as usize).cloned())
    };
    let bos = token("tokenizer.ggml.bos_token_id");
    let eos = token("tokenizer.ggml.eos_token_id");
    let unk = token("tokenizer.ggml.unknown_token_id");
    let pad = token("tokenizer.ggml.padding_token_id");
    // Without the flag, llama.cpp (and transformers) add BOS for SentencePiece.
    let add_bos = f
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(sentencepiece);
    let post = match (&bos, add_bos) {
        (Some(b), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.as_str(): {"id": b, "ids": [vocab.get(b.as_str())], "tokens": [b]}}
        }),
        _ if sentencepiece => Json::Null,
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true})
        }
    };
    // SentencePiece as transformers' `LlamaTokenizer` builds it: `▁` for
    // spaces (one prepended), byte fallback, fused unknowns.
    let (pre_tokenizer, decoder) = if sentencepiece {
        (
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}),
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]}),
        )
    } else {
        (
            pre_tokenizer(path, pre)?,
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        )
    };
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": sentencepiece, "byte_fallback": sentencepiece,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        }
    });
    let tokenizer: tokenizers::Tokenizer = tj.to_string().parse().map_err(|e| {
        ModelError::file(
            path,
            format!("cannot build the tokenizer from metadata: {e}"),
        )
    })?;
    let mut config = json!({ "model_max_length": 1_000_000_000i64 });
    for (k, v) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(v) = v {
            config[k] = json!(v);
        }
    }
    if let Some(t) = f.get("tokenizer.chat_template").and_then(Value::as_str) {
        config["chat_template"] = json!(t);
    }
    Ok((tokenizer, config))
}
