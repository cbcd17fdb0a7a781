//! GGUF import (llama.cpp's format): read the file, dequantize its tensors
//! (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K–Q6_K)
//! to f32, undo llama.cpp's Q/K row permutation, rename tensors to HF's keys,
//! and rebuild `config.json` and a `tokenizer.json` from the metadata
//! (GPT-2-style byte-level BPE, or SentencePiece BPE with byte fallback and
//! merges derived from the scores). The result loads as a Llama policy
//! directly, or is written out as an HF directory.
//!
//! No maintained standalone GGUF crate fitted (candle's reader lives inside
//! candle-core), so this is a small reader of the documented format:
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//!
//! Files: `reader.rs`, the container (header, metadata, tensor infos);
//! `quant.rs`, dequantizing each [`GgmlType`]; `import.rs`, the HF weights
//! and `config.json`; `tokenizer.rs`, the rebuilt tokenizer.

mod import;
mod quant;
mod reader;
mod tokenizer;

use std::path::Path;

use tch::Device;

use crate::error::Result;
use crate::hf::{build_causal, LanguageModel};
use crate::tokenizer::TextTokenizer;
use crate::weights::{DType, Weights};

pub use import::{import, import_file, try_unpermute_qk, unpermute_qk, Imported};
pub use quant::{dequantize, GgmlType};
pub use reader::{limits, GgufFile, TensorInfo, Value};

use tokenizer::gguf_tokenizer;

/// Loads a Llama GGUF file as a policy with its tokenizer.
pub fn load(path: &Path, dtype: DType, device: Device) -> Result<LanguageModel> {
    let imported = import(path)?;
    let weights = Weights::from_tensors(
        path,
        imported
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
    );
    let companions = Some(imported.companions());
    let (policy, architecture) =
        build_causal(path, &imported.config, &weights, dtype, device, companions)?;
    let tokenizer = imported.text_tokenizer(policy.vocab_size())?;
    Ok(LanguageModel {
        policy,
        tokenizer,
        architecture,
        source: path.to_path_buf(),
        max_positions: crate::hf::max_positions(&imported.config).map(|(n, _)| n),
    })
}

/// Only the tokenizer of a GGUF file (no tensors dequantized).
pub fn load_tokenizer(path: &Path) -> Result<Option<TextTokenizer>> {
    load_tokenizer_from(&GgufFile::read(path)?)
}

/// [`load_tokenizer`] of a file already read.
pub fn load_tokenizer_from(f: &GgufFile) -> Result<Option<TextTokenizer>> {
    let path = f.path.as_path();
    if f.get("tokenizer.ggml.model").is_none() {
        return Ok(None);
    }
    let (tok, config) = gguf_tokenizer(f)?;
    let vocab = f
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(tok.get_vocab_size(true) as i64);
    let s = |k: &str| config[k].as_str().map(str::to_string);
    TextTokenizer::from_parts(
        tok,
        path,
        s("chat_template"),
        s("bos_token"),
        s("eos_token"),
        vocab,
    )
    .map(Some)
}
