//! Writing a decoder as an HF directory that transformers
//! (`AutoModelForCausalLM.from_pretrained`) and inference servers (vLLM,
//! SGLang) load: `config.json`, `model.safetensors` under HF's keys, and the
//! tokenizer and generation files of the model it was loaded from (copied
//! from its directory, or rebuilt from a GGUF file's metadata).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Kind, Tensor};

/// A GGUF file's tokenizer and generation settings, rebuilt as HF files.
pub struct GgufFiles {
    /// `tokenizer.json` text (`None`: the file has no tokenizer).
    pub tokenizer_json: Option<String>,
    pub tokenizer_config: serde_json::Value,
    pub generation_config: serde_json::Value,
}

/// Where a model's non-weight HF files come from.
#[derive(Clone)]
pub enum Companions {
    /// An HF directory: its tokenizer and generation files are copied.
    Dir(PathBuf),
    /// A GGUF file: its metadata, rebuilt.
    Gguf(Arc<GgufFiles>),
}

/// The files an HF directory copies from the model's own directory, when
/// it has them.
const COPIED: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    // Slow tokenizers' files, for servers that read them.
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// What an HF directory of a model holds besides its weights.
#[derive(Clone)]
pub struct HfFiles {
    /// The `config.json` the model was declared from.
    pub config: serde_json::Value,
    /// `None`: a model built from tensors in memory, with no tokenizer.
    pub companions: Option<Companions>,
}

impl HfFiles {
    /// Writes `config.json` (its dtype set to `kind`, the weights' kind:
    /// transformers loads in it) and the tokenizer and generation files
    /// into `dir`; returns the names written.
    pub fn write(&self, dir: &Path, kind: Kind) -> anyhow::Result<Vec<String>> {
        let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).map(|t| t + "\n");
        let mut config = self.config.clone();
        if let (Some(obj), Some(name)) = (config.as_object_mut(), dtype_name(kind)) {
            // transformers 5 writes `dtype`, earlier versions `torch_dtype`;
            // the key the config has keeps its name.
            let key = if obj.contains_key("dtype") {
                "dtype"
            } else {
                "torch_dtype"
            };
            obj.insert(key.into(), name.into());
        }
        std::fs::write(dir.join("config.json"), json(&config)?)?;
        let mut wrote = vec!["config.json".to_string()];
        match &self.companions {
            None => {}
            Some(Companions::Dir(src)) => {
                for name in COPIED {
                    if src.join(name).is_file() {
                        std::fs::copy(src.join(name), dir.join(name))?;
                        wrote.push(name.into());
                    }
                }
            }
            Some(Companions::Gguf(g)) => {
                std::fs::write(
                    dir.join("generation_config.json"),
                    json(&g.generation_config)?,
                )?;
                wrote.push("generation_config.json".into());
                if let Some(tok) = &g.tokenizer_json {
                    std::fs::write(dir.join("tokenizer.json"), tok)?;
                    std::fs::write(
                        dir.join("tokenizer_config.json"),
                        json(&g.tokenizer_config)?,
                    )?;
                    wrote.extend(["tokenizer.json".into(), "tokenizer_config.json".into()]);
                }
            }
        }
        Ok(wrote)
    }

    /// Writes the HF directory `dir` (which exists) of a model with
    /// `weights` (HF's names): `model.safetensors` and [`HfFiles::write`]'s
    /// files.
    pub fn save(&self, dir: &Path, weights: &[(String, Tensor)]) -> anyhow::Result<()> {
        let kind = kind_of(weights.iter().map(|(_, t)| t))?;
        Tensor::write_safetensors(weights, dir.join("model.safetensors"))?;
        self.write(dir, kind)?;
        Ok(())
    }
}

/// The one kind of a model's weights (what `config.json` records).
pub fn kind_of<'a>(weights: impl IntoIterator<Item = &'a Tensor>) -> anyhow::Result<Kind> {
    let mut kinds = weights.into_iter().map(Tensor::kind);
    let first = kinds.next().unwrap_or(Kind::Float);
    match kinds.find(|k| *k != first) {
        None => Ok(first),
        Some(other) => anyhow::bail!(
            "the weights mix {first:?} and {other:?}; an HF directory records one dtype"
        ),
    }
}

/// The name `config.json` gives a parameter kind.
fn dtype_name(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Float => Some("float32"),
        Kind::BFloat16 => Some("bfloat16"),
        Kind::Half => Some("float16"),
        _ => None,
    }
}
