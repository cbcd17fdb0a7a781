//! HF model directories: read `config.json`, pick the architecture, load the
//! safetensors weights, and the `hf` model plugin (`[model.hf] path = "DIR"`,
//! or a `.gguf` file, which is imported on the fly).

use std::path::{Path, PathBuf};

use align_core::manifest::InputPath;
use align_core::registry::{build_resolving, Built, ConfigDeserializer, Constructor};
use align_core::{ModelContext, ModelSpec, Plugin, PluginError, Policy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::check::{self, Budget};
use crate::common::{Activation, CausalLm, CausalModel, RopeScaling};
use crate::error::{ModelError, Result};
use crate::export::{Companions, HfFiles};
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::gpt_neox::{GptNeoX, GptNeoXConfig};
use crate::llama::{Llama, LlamaConfig};
use crate::lora::LoraConfig;
use crate::tokenizer::TextTokenizer;
use crate::weights::{DType, Weights};

/// Largest JSON file [`read_json`] reads (configs are kilobytes; a
/// `tokenizer_config.json` with every added token a few megabytes).
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Reads and parses a JSON file of at most [`MAX_JSON_BYTES`]; errors name it.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    if !path.is_file() {
        return Err(ModelError::NotFound(path.to_path_buf()));
    }
    check::file_size(path, MAX_JSON_BYTES, "a JSON file")?;
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(path, format!("invalid: {e}")))
}

/// RoPE settings in their several HF spellings (transformers 5 nests them in
/// `rope_parameters`; older configs use `rope_theta`, GPT-NeoX `rotary_emb_base`
/// and `rotary_pct`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RopeParameters {
    pub rope_theta: Option<f64>,
    pub rotary_emb_base: Option<f64>,
    pub rotary_pct: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub rope_parameters: Option<NestedRope>,
    /// transformers 4's spelling of the scaling settings.
    pub rope_scaling: Option<NestedRope>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NestedRope {
    pub rope_theta: Option<f64>,
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub partial_rotary_factor: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
}

impl RopeParameters {
    pub fn theta(&self, default: f64) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .or(self.rotary_emb_base)
            .unwrap_or(default)
    }

    pub fn partial(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.partial_rotary_factor)
            .or(self.partial_rotary_factor)
            .or(self.rotary_pct)
            .unwrap_or(1.0)
    }

    /// The frequency scaling (`rope_type` `default`, `linear` or `llama3`,
    /// in `rope_parameters` or transformers 4's `rope_scaling`). Other types
    /// (dynamic, YaRN, LongRoPE…) are refused rather than computed wrong.
    pub fn scaling(&self, config_path: &Path) -> Result<RopeScaling> {
        let mut found = RopeScaling::None;
        for nested in [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .flatten()
        {
            let kind = nested.rope_type.as_deref().or(nested.kind.as_deref());
            let need = |key: &str, value: Option<f64>| {
                value.filter(|v| v.is_finite() && *v > 0.0).ok_or_else(|| {
                    ModelError::file(
                        config_path,
                        format!(
                            "RoPE type `{}` needs a positive number `{key}`",
                            kind.unwrap_or("?")
                        ),
                    )
                })
            };
            let scaling = match kind {
                None | Some("default") => continue,
                Some("linear") => RopeScaling::Linear {
                    factor: need("factor", nested.factor)?,
                },
                Some("llama3") => RopeScaling::Llama3 {
                    factor: need("factor", nested.factor)?,
                    low_freq_factor: need("low_freq_factor", nested.low_freq_factor)?,
                    high_freq_factor: need("high_freq_factor", nested.high_freq_factor)?,
                    original_max_position_embeddings: need(
                        "original_max_position_embeddings",
                        nested.original_max_position_embeddings,
                    )?,
                },
                Some(other) => {
                    return Err(ModelError::file(
                        config_path,
                        format!(
                        "RoPE type `{other}` is not supported (supported: default, linear, llama3)"
                    ),
                    ))
                }
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = scaling
            {
                if high_freq_factor <= low_freq_factor {
                    return Err(ModelError::file(
                        config_path,
                        format!(
                            "RoPE type `llama3`: `high_freq_factor` ({high_freq_factor}) must be \
                             above `low_freq_factor` ({low_freq_factor})"
                        ),
                    ));
                }
            }
            found = scaling;
        }
        Ok(found)
    }
}

/// The decoder-only architectures this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Gpt2,
    GptNeoX,
}

pub const SUPPORTED: &str =
    "LlamaForCausalLM (llama), GPT2LMHeadModel (gpt2), GPTNeoXForCausalLM (gpt_neox)";

#[derive(Deserialize)]
struct Sniff {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
}

/// Picks the architecture from `config.json`'s `architectures` or `model_type`.
pub fn architecture(config_path: &Path, config: &serde_json::Value) -> Result<Architecture> {
    let sniff: Sniff = serde_json::from_value(config.clone())
        .map_err(|e| ModelError::file(config_path, format!("invalid: {e}")))?;
    let arch = sniff
        .architectures
        .as_ref()
        .and_then(|a| a.first().cloned());
    let by_arch = match arch.as_deref() {
        Some("LlamaForCausalLM" | "LlamaForSequenceClassification") => Some(Architecture::Llama),
        Some("GPT2LMHeadModel" | "GPT2ForSequenceClassification") => Some(Architecture::Gpt2),
        Some("GPTNeoXForCausalLM" | "GPTNeoXForSequenceClassification") => {
            Some(Architecture::GptNeoX)
        }
        _ => None,
    };
    let by_type = match sniff.model_type.as_deref() {
        Some("llama") => Some(Architecture::Llama),
        Some("gpt2") => Some(Architecture::Gpt2),
        Some("gpt_neox") => Some(Architecture::GptNeoX),
        _ => None,
    };
    by_arch.or(by_type).ok_or_else(|| ModelError::Unsupported {
        path: config_path.to_path_buf(),
        arch: arch
            .or(sniff.model_type)
            .unwrap_or_else(|| "(no `architectures` or `model_type`)".into()),
        supported: SUPPORTED.into(),
    })
}

/// Whether `config.json` declares a `*ForSequenceClassification` model (a
/// scalar or class head instead of the LM head).
pub fn is_sequence_classifier(config: &serde_json::Value) -> bool {
    config["architectures"]
        .get(0)
        .and_then(|a| a.as_str())
        .is_some_and(|a| a.ends_with("ForSequenceClassification"))
}

fn parse<T: DeserializeOwned>(path: &Path, config: &serde_json::Value) -> Result<T> {
    serde_json::from_value(config.clone())
        .map_err(|e| ModelError::file(path, format!("invalid config: {e}")))
}

fn activation(path: &Path, name: &str) -> Result<Activation> {
    Activation::from_hf(name)
        .ok_or_else(|| ModelError::file(path, format!("unsupported activation `{name}`")))
}

/// A decoder-only transformer declared in a variable store (weights not yet
/// loaded).
pub struct DecoderBody {
    pub model: Box<dyn CausalLm>,
    pub architecture: Architecture,
    pub vocab_size: i64,
    pub hidden_size: i64,
    /// Checkpoint key prefixes [`Weights::load_into`] may strip or add.
    pub prefixes: &'static [&'static str],
}

/// Declares the decoder described by a parsed `config.json` under `root`.
/// Without `lm_head` no output projection is declared (a reward model's
/// checkpoint has a `score` head instead).
///
/// Every size is checked first ([`crate::check`]): in bounds, fitting
/// together, and, when `config_path` is a `config.json` beside safetensors
/// files, implying no more parameters than those files can hold (so a
/// corrupt config is refused before its parameters are allocated).
pub fn declare_decoder(
    config_path: &Path,
    config: &serde_json::Value,
    root: nn::Path,
    lm_head: bool,
) -> Result<DecoderBody> {
    let budget = config_path
        .file_name()
        .filter(|n| *n == "config.json")
        .and(config_path.parent())
        .and_then(Budget::from_disk);
    declare_decoder_within(config_path, config, root, lm_head, budget.as_ref())
}

fn theta(path: &Path, rope: &RopeParameters) -> Result<f64> {
    check::finite(path, "rope_theta", rope.theta(10_000.0), 0.0, true)
}

/// [`declare_decoder`] with the weights' own [`Budget`].
fn declare_decoder_within(
    config_path: &Path,
    config: &serde_json::Value,
    root: nn::Path,
    lm_head: bool,
    budget: Option<&Budget>,
) -> Result<DecoderBody> {
    let architecture = architecture(config_path, config)?;
    let mut config = config.clone();
    if !lm_head {
        // A tied head declares no parameter of its own.
        config["tie_word_embeddings"] = serde_json::Value::Bool(true);
    }
    let body = |model: Box<dyn CausalLm>, vocab_size, hidden_size, prefixes| DecoderBody {
        model,
        architecture,
        vocab_size,
        hidden_size,
        prefixes,
    };
    let admit = |params: u64| match budget {
        Some(b) => b.admit(config_path, params),
        None => Ok(()),
    };
    Ok(match architecture {
        Architecture::Llama => {
            let (model, cfg) = declare_llama(config_path, &config, root, budget)?;
            body(Box::new(model), cfg.vocab_size, cfg.hidden_size, &[])
        }
        Architecture::Gpt2 => {
            let cfg: Gpt2Config = parse(config_path, &config)?;
            admit(cfg.validate(config_path)?)?;
            let act = activation(config_path, &cfg.activation_function)?;
            let model = Gpt2::new(root, &cfg, act);
            body(
                Box::new(model),
                cfg.vocab_size,
                cfg.n_embd,
                &["transformer."],
            )
        }
        Architecture::GptNeoX => {
            let cfg: GptNeoXConfig = parse(config_path, &config)?;
            admit(cfg.validate(config_path, cfg.rope.partial())?)?;
            let scaling = cfg.rope.scaling(config_path)?;
            let act = activation(config_path, &cfg.hidden_act)?;
            let (theta, partial) = (theta(config_path, &cfg.rope)?, cfg.rope.partial());
            let model = GptNeoX::new(root, &cfg, act, theta, partial, scaling);
            body(Box::new(model), cfg.vocab_size, cfg.hidden_size, &[])
        }
    })
}

/// Declares the Llama a parsed `config.json` describes under `root`, its
/// sizes checked (against `budget` too, when given).
fn declare_llama(
    config_path: &Path,
    config: &serde_json::Value,
    root: nn::Path,
    budget: Option<&Budget>,
) -> Result<(Llama, LlamaConfig)> {
    let cfg: LlamaConfig = parse(config_path, config)?;
    let params = cfg.validate(config_path)?;
    if let Some(b) = budget {
        b.admit(config_path, params)?;
    }
    let scaling = cfg.rope.scaling(config_path)?;
    let act = activation(config_path, &cfg.hidden_act)?;
    let model = Llama::new(root, &cfg, act, theta(config_path, &cfg.rope)?, scaling);
    Ok((model, cfg))
}

/// A Llama loaded with its weights, typed (for LoRA): its variable store,
/// the model, its vocabulary, `config.json` and tokenizer files.
pub struct LlamaParts {
    pub vs: nn::VarStore,
    pub model: Llama,
    pub vocab: i64,
    pub files: HfFiles,
}

/// Loads the Llama at `path` (an HF directory or a `.gguf` file) as
/// [`load`] does, but typed; any other architecture is refused, naming it.
pub fn load_llama(path: &Path, dtype: DType, device: Device) -> Result<LlamaParts> {
    let llama_only = |config_path: &Path, config: &serde_json::Value| -> Result<()> {
        match architecture(config_path, config)? {
            Architecture::Llama => Ok(()),
            other => Err(ModelError::file(
                config_path,
                format!(
                    "LoRA adapters (`lora`, `adapter`) are implemented for Llama models; this \
                     is {other:?}: drop them to fine-tune every weight"
                ),
            )),
        }
    };
    let is_gguf = path.is_file() && path.extension().is_some_and(|e| e == "gguf");
    let (config_path, config, weights, companions) = if is_gguf {
        let imported = crate::gguf::import(path)?;
        let companions = imported.companions();
        let weights = Weights::from_tensors(path, imported.tensors);
        (path.to_path_buf(), imported.config, weights, companions)
    } else {
        let (config_path, config) = dir_config(path)?;
        llama_only(&config_path, &config)?; // before reading the weights
        let weights = Weights::from_dir(path)?;
        (
            config_path,
            config,
            weights,
            Companions::Dir(path.to_path_buf()),
        )
    };
    llama_only(&config_path, &config)?;
    let mut vs = nn::VarStore::new(device);
    let (model, cfg) = declare_llama(&config_path, &config, vs.root(), Some(&weights.budget()))?;
    weights.load_into(&vs, &[])?;
    drop(weights);
    vs.set_kind(dtype.kind());
    Ok(LlamaParts {
        vs,
        model,
        vocab: cfg.vocab_size,
        files: HfFiles {
            config,
            companions: Some(companions),
        },
    })
}

/// Builds a decoder-only model from a parsed `config.json` and loads `weights`
/// into it; the parameters end up in `dtype` on `device`. `companions`: the
/// tokenizer files an HF export of it carries.
pub fn build_causal(
    config_path: &Path,
    config: &serde_json::Value,
    weights: &Weights,
    dtype: DType,
    device: Device,
    companions: Option<Companions>,
) -> Result<(Box<dyn Policy>, Architecture)> {
    let mut vs = nn::VarStore::new(device);
    let budget = weights.budget();
    let body = declare_decoder_within(config_path, config, vs.root(), true, Some(&budget))?;
    weights.load_into(&vs, body.prefixes)?;
    vs.set_kind(dtype.kind());
    let policy = Box::new(CausalModel {
        vs,
        model: body.model,
        vocab: body.vocab_size,
        recipe: Some(std::sync::Arc::new(DecoderRecipe {
            config_path: config_path.to_path_buf(),
            files: HfFiles {
                config: config.clone(),
                companions,
            },
        })),
    });
    Ok((policy, body.architecture))
}

/// The parsed `config.json` a decoder was declared from: declares the same
/// architecture again without reading any weights, and writes its HF files.
pub struct DecoderRecipe {
    config_path: PathBuf,
    pub files: HfFiles,
}

impl DecoderRecipe {
    /// A model with `like`'s device and parameter kinds, its weights zero.
    pub fn declare(self: &std::sync::Arc<Self>, like: &nn::VarStore) -> Result<Box<dyn Policy>> {
        let mut vs = nn::VarStore::new(like.device());
        let body = declare_decoder(&self.config_path, &self.files.config, vs.root(), true)?;
        if let Some(kind) = like.variables().values().next().map(|t| t.kind()) {
            vs.set_kind(kind);
        }
        Ok(Box::new(CausalModel {
            vs,
            model: body.model,
            vocab: body.vocab_size,
            recipe: Some(self.clone()),
        }))
    }
}

/// A loaded language model and its tokenizer.
pub struct LanguageModel {
    pub policy: Box<dyn Policy>,
    /// `None` when the directory has no `tokenizer.json`.
    pub tokenizer: Option<TextTokenizer>,
    pub architecture: Architecture,
    pub source: PathBuf,
    /// The longest sequence the model takes, from its config (see
    /// [`max_positions`]).
    pub max_positions: Option<i64>,
}

/// The positional capacity a decoder's config declares, and the key it is
/// under: GPT-2's learned table (`n_positions`, a hard limit), or a RoPE
/// model's trained context (`max_position_embeddings`, when present).
pub fn max_positions(config: &serde_json::Value) -> Option<(i64, &'static str)> {
    ["n_positions", "max_position_embeddings"]
        .into_iter()
        .find_map(|key| config[key].as_i64().map(|n| (n, key)))
}

/// Refuses a task whose longest sequence (`max_len`, prompt + completion)
/// exceeds the model's positional capacity, naming the model, both numbers
/// and the fix.
pub fn check_context(
    source: &Path,
    capacity: Option<(i64, &str)>,
    max_len: Option<i64>,
) -> Result<()> {
    match (capacity, max_len) {
        (Some((cap, key)), Some(len)) if len > cap => Err(ModelError::file(
            source,
            format!(
                "the task's longest sequence (prompt + completion) is {len} tokens but this \
                 model takes at most {cap} (`{key}`); lower the task's maximum prompt and \
                 completion tokens to fit {cap}"
            ),
        )),
        _ => Ok(()),
    }
}

/// An HF model directory's `config.json`, checked before any weight is
/// read: a known architecture, and a language model (not a reward model).
fn dir_config(path: &Path) -> Result<(PathBuf, serde_json::Value)> {
    if !path.exists() {
        return Err(ModelError::NotFound(path.to_path_buf()));
    }
    if !path.is_dir() {
        return Err(ModelError::file(
            path,
            "expected an HF model directory or a .gguf file",
        ));
    }
    let config_path = path.join("config.json");
    let config: serde_json::Value = read_json(&config_path)?;
    // Check the architecture before reading (possibly large) weights.
    architecture(&config_path, &config)?;
    if is_sequence_classifier(&config) {
        return Err(ModelError::file(
            &config_path,
            "this is a reward model (`…ForSequenceClassification`), not a language model; \
             use it as a reward: `[reward.hf-rm] path = \"…\"`",
        ));
    }
    Ok((config_path, config))
}

/// Loads an HF directory (`config.json`, safetensors, `tokenizer.json`) or a
/// `.gguf` file.
pub fn load(path: &Path, dtype: DType, device: Device) -> Result<LanguageModel> {
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return crate::gguf::load(path, dtype, device);
    }
    let (config_path, config) = dir_config(path)?;
    let weights = Weights::from_dir(path)?;
    let companions = Some(Companions::Dir(path.to_path_buf()));
    let (policy, architecture) =
        build_causal(&config_path, &config, &weights, dtype, device, companions)?;
    let tokenizer = if path.join("tokenizer.json").is_file() {
        Some(TextTokenizer::from_dir(path, policy.vocab_size())?)
    } else {
        None
    };
    Ok(LanguageModel {
        policy,
        tokenizer,
        architecture,
        source: path.to_path_buf(),
        max_positions: max_positions(&config).map(|(n, _)| n),
    })
}

/// `[model.hf]`: a pretrained transformer LM.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfModelConfig {
    /// An HF model directory, or a `.gguf` file (Llama).
    pub path: InputPath,
    /// Parameter dtype: "f32" (default), "bf16" or "f16".
    #[serde(default)]
    pub dtype: DType,
    /// Train LoRA adapters instead of the weights (Llama): see [`crate::lora`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// A saved adapter (a PEFT directory: `adapter_config.json` and
    /// `adapter_model.safetensors`) to attach to the model on load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<InputPath>,
    /// Keep only each layer's input in a training forward and recompute the
    /// layers in the backward pass (Llama): less memory for one more forward.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
}

pub struct HfSpec(HfModelConfig);

impl HfSpec {
    pub fn new(config: HfModelConfig) -> HfSpec {
        HfSpec(config)
    }

    pub fn config(&self) -> &HfModelConfig {
        &self.0
    }
}

impl ModelSpec for HfSpec {
    /// Refuses, before reading any weights where it can, a task whose
    /// longest sequence (`ctx.max_len`) exceeds the model's positions.
    fn build(&self, ctx: &ModelContext) -> anyhow::Result<Box<dyn Policy>> {
        let path = self.0.path.path();
        if path.is_dir() {
            let config: serde_json::Value = read_json(&path.join("config.json"))?;
            check_context(path, max_positions(&config), ctx.max_len)?;
        }
        let (policy, max_positions): (Box<dyn Policy>, _) =
            if self.0.lora.is_some() || self.0.adapter.is_some() {
                let model = crate::lora::build(
                    path,
                    self.0.dtype,
                    ctx.device,
                    self.0.lora.as_ref(),
                    self.0.adapter.as_ref().map(|a| a.path()),
                    ctx.seed,
                )?;
                let positions = max_positions(model.base_config()).map(|(n, _)| n);
                (Box::new(model), positions)
            } else {
                let lm = load(path, self.0.dtype, ctx.device)?;
                (lm.policy, lm.max_positions)
            };
        let mut policy = policy;
        if self.0.gradient_checkpointing && !policy.set_gradient_checkpointing(true) {
            anyhow::bail!(
                "{}: `gradient_checkpointing` is implemented for Llama-family models; drop it for this one",
                path.display()
            );
        }
        if !path.is_dir() {
            // A GGUF file: its `llama.context_length`.
            let capacity = max_positions.map(|n| (n, "llama.context_length"));
            check_context(path, capacity, ctx.max_len)?;
        }
        if let Some(task_vocab) = ctx.vocab_size {
            anyhow::ensure!(
                task_vocab <= policy.vocab_size(),
                "{}: the task's vocabulary ({task_vocab}) is larger than the model's ({})",
                self.0.path.path().display(),
                policy.vocab_size()
            );
        }
        Ok(policy)
    }

    fn codec(&self) -> anyhow::Result<Option<std::sync::Arc<dyn align_core::TextCodec>>> {
        let tok = load_tokenizer(self.0.path.path())?;
        Ok(tok.map(|t| std::sync::Arc::new(t) as std::sync::Arc<dyn align_core::TextCodec>))
    }
}

/// The tokenizer of an HF directory or GGUF file, without loading weights.
pub fn load_tokenizer(path: &Path) -> Result<Option<TextTokenizer>> {
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return crate::gguf::load_tokenizer(path);
    }
    if !path.join("tokenizer.json").is_file() {
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct Vocab {
        vocab_size: i64,
    }
    let v: Vocab = read_json(&path.join("config.json"))?;
    TextTokenizer::from_dir(path, v.vocab_size).map(Some)
}

fn construct(de: ConfigDeserializer) -> std::result::Result<Built<dyn ModelSpec>, PluginError> {
    build_resolving(de, |c: &mut HfModelConfig, base| {
        base.resolve("path", &mut c.path)?;
        let p = c.path.path();
        if p.is_file() && p.extension().is_none_or(|e| e != "gguf") {
            return Err(PluginError::invalid(
                "path",
                format!(
                    "{} is a file; give an HF model directory or a .gguf file",
                    p.display()
                ),
            ));
        }
        if let Some(lora) = &c.lora {
            lora.check()
                .map_err(|(key, m)| PluginError::invalid("lora", format!("`{key}` {m}")))?;
        }
        if let Some(adapter) = &mut c.adapter {
            base.resolve("adapter", adapter)?;
            let dir = adapter.path();
            if !dir.join("adapter_config.json").is_file() {
                return Err(PluginError::invalid(
                    "adapter",
                    format!(
                        "{} has no adapter_config.json; give a PEFT adapter directory",
                        dir.display()
                    ),
                ));
            }
        }
        if c.lora.is_some() || c.adapter.is_some() {
            // LoRA is Llama's: say so before any weight is read.
            let key = if c.lora.is_some() { "lora" } else { "adapter" };
            let config_path = p.join("config.json");
            if let Ok(config) = read_json::<serde_json::Value>(&config_path) {
                if let Ok(other @ (Architecture::Gpt2 | Architecture::GptNeoX)) =
                    architecture(&config_path, &config)
                {
                    return Err(PluginError::invalid(
                        key,
                        format!(
                            "LoRA adapters are implemented for Llama models; {} is {other:?}",
                            p.display()
                        ),
                    ));
                }
            }
        }
        Ok(Box::new(HfSpec(c.clone())) as Box<dyn ModelSpec>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "hf",
        description: "pretrained transformer LM: HF directory (Llama, GPT-2, GPT-NeoX; safetensors) or Llama GGUF",
        constructor: Constructor::Model(construct),
    }
}
