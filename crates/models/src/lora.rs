//! LoRA adapters (Hu et al., 2021) on Llama's projections, in PEFT's layout.
//!
//! `[model.hf] lora = { rank, alpha, dropout, targets }` makes the model a
//! [`LoraModel`]. The prior the runner builds from it holds the base weights
//! and no adapters; every copy of it ([`Policy::frozen_clone`]: the policy of
//! each run, each proposal refresh) shares those base tensors (the same
//! storage, frozen) and owns only its adapters, which are all its variable
//! store holds. So the optimizer, the checkpoints and the non-finite update
//! check see the adapters only, a refresh copies only them, and the prior is
//! the same weights with the adapters off.
//!
//! Each targeted projection computes `W·x + b + (α/r)·B·A·dropout(x)` as
//! PEFT's `lora.Linear` does: `A` `[r, in]` drawn as PEFT draws it
//! (`kaiming_uniform_(a=√5)`, i.e. U(±1/√in)), seeded by the manifest's seed
//! and the module's name (never LibTorch's global generator), `B` `[out, r]`
//! zero, so a fresh adapter is the base model exactly. Dropout (off by
//! default) acts only in a training forward (autograd on, adapters
//! trainable); its masks are drawn from the seed, the module, the tokens and
//! the adapters' current weights, so they change with every optimizer step
//! and replay exactly when a run resumes from a checkpoint.
//!
//! A finished run writes its adapter as PEFT does (`adapter_config.json` and
//! `adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight`
//! `[r, in]` and `…lora_B.weight` `[out, r]`), and with `merge = true` an HF
//! directory with `W + (α/r)·B·A` folded in. `[model.hf] adapter = "DIR"`
//! loads such an adapter (ours or PEFT's) onto the base model.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use align_core::{Decoder, Policy};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::common::{linear, CausalModel, Linear};
use crate::error::{ModelError, Result};
use crate::export::HfFiles;
use crate::llama::Llama;
use crate::weights::DType;

/// The prefix PEFT puts before a module's path in adapter files.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// What [`Target`] accepts, for messages.
pub const TARGETS: &str = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj";

/// A projection an adapter may sit on (PEFT's `target_modules` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::QProj,
        Target::KProj,
        Target::VProj,
        Target::OProj,
        Target::GateProj,
        Target::UpProj,
        Target::DownProj,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::QProj => "q_proj",
            Target::KProj => "k_proj",
            Target::VProj => "v_proj",
            Target::OProj => "o_proj",
            Target::GateProj => "gate_proj",
            Target::UpProj => "up_proj",
            Target::DownProj => "down_proj",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The target of a module path such as `model.layers.3.self_attn.q_proj`.
    pub fn of_module(module: &str) -> Option<Target> {
        Target::from_name(module.rsplit('.').next()?)
    }
}

fn default_rank() -> i64 {
    8
}

fn default_alpha() -> f64 {
    8.0
}

fn default_targets() -> Vec<Target> {
    vec![Target::QProj, Target::VProj]
}

/// `[model.hf] lora = { … }`: train low-rank adapters instead of the weights.
/// Defaults are PEFT's `LoraConfig` ones for Llama.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// `r`, the adapters' rank.
    #[serde(default = "default_rank")]
    pub rank: i64,
    /// `lora_alpha`: the update is scaled by `alpha / rank`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// `lora_dropout` on the adapters' input, in training forwards only.
    #[serde(default)]
    pub dropout: f64,
    /// The projections that get adapters (PEFT's `target_modules`).
    #[serde(default = "default_targets")]
    pub targets: Vec<Target>,
    /// Also write the aligned model with the adapters merged into its
    /// weights, as an HF directory.
    #[serde(default)]
    pub merge: bool,
}

/// Largest rank accepted (far above any useful one; bounds the allocation).
pub const MAX_RANK: i64 = 1 << 14;

impl LoraConfig {
    /// Checks the settings; the error names the key (inside `lora`) at fault.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        let bad = |key: &str, m: String| Err((key.to_string(), m));
        if !(1..=MAX_RANK).contains(&self.rank) {
            return bad("rank", format!("{} is not in 1..={MAX_RANK}", self.rank));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(
                "alpha",
                format!("{} is not a finite number > 0", self.alpha),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is not in [0, 1)", self.dropout));
        }
        if self.targets.is_empty() {
            return bad(
                "targets",
                format!("name at least one projection (of {TARGETS})"),
            );
        }
        let unique: BTreeSet<_> = self.targets.iter().collect();
        if unique.len() != self.targets.len() {
            return bad("targets", "lists a projection twice".into());
        }
        Ok(())
    }

    /// `alpha / rank`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One projection's adapter: `Δy = scaling · B · A · dropout(x)`.
pub struct Adapter {
    /// `lora_A` `[r, in]`.
    pub a: Tensor,
    /// `lora_B` `[out, r]`.
    pub b: Tensor,
    pub alpha: f64,
    /// PEFT's `use_rslora`: scaling `alpha / √r` instead of `alpha / r`.
    pub rslora: bool,
    pub dropout: f64,
    /// Where this adapter's dropout masks start (the manifest's seed).
    pub seed: u64,
}

impl Adapter {
    pub fn rank(&self) -> i64 {
        self.a.size()[0]
    }

    /// PEFT's `scaling`.
    pub fn scaling(&self) -> f64 {
        let r = self.rank() as f64;
        if self.rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }
}

/// A linear map with HF's parameter names and an optional adapter.
pub struct LoraLinear {
    pub base: Linear,
    pub adapter: Option<Adapter>,
}

impl LoraLinear {
    /// Declares the base weight (and bias) under `p`, no adapter.
    pub fn new(p: nn::Path, input: i64, output: i64, bias: bool) -> LoraLinear {
        LoraLinear::plain(Linear::new(p, input, output, bias))
    }

    pub fn plain(base: Linear) -> LoraLinear {
        LoraLinear {
            base,
            adapter: None,
        }
    }

    /// `[in, out]` of the base weight.
    pub fn dims(&self) -> (i64, i64) {
        let s = self.base.weight.size();
        (s[1], s[0])
    }

    /// `x · Wᵀ + b`, plus the adapter's update when there is one, in PEFT's
    /// order (`result + lora_B(lora_A(dropout(x))) · scaling`). `dropout`
    /// is this projection's mask key in a training forward (see
    /// [`dropout_key`]); `None` means no dropout.
    pub fn forward(&self, x: &Tensor, dropout: Option<u64>) -> Tensor {
        let y = self.base.forward(x);
        let Some(ad) = &self.adapter else {
            return y;
        };
        let input = match dropout {
            Some(key) if ad.dropout > 0.0 => dropout_mask(x, ad.dropout, key),
            _ => x.shallow_clone(),
        };
        let update = linear(&linear(&input, &ad.a, None), &ad.b, None);
        y + update * ad.scaling()
    }
}

/// SplitMix64's finaliser over `a` and `b`: a well-mixed key from two.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash_str(seed: u64, s: &str) -> u64 {
    s.bytes()
        .fold(mix(seed, s.len() as u64), |h, b| mix(h, b as u64))
}

/// The dropout key of one forward over `input_ids`, or `None` when no
/// adapter drops anything here: no adapter with dropout, or not a training
/// forward (autograd off, or the adapters frozen: the prior, a proposal,
/// sampling, evaluation). The key hashes the seed, the tokens and the
/// first such adapter's current weights (so each optimizer step draws new
/// masks, and a resumed run the same ones).
pub fn dropout_key<'a>(
    projections: impl IntoIterator<Item = &'a LoraLinear>,
    input_ids: &Tensor,
) -> Option<u64> {
    let ad = projections
        .into_iter()
        .filter_map(|p| p.adapter.as_ref())
        .find(|a| a.dropout > 0.0)?;
    if !(ad.a.requires_grad() && crate::common::grad_enabled()) {
        return None;
    }
    let _guard = tch::no_grad_guard();
    let ids = input_ids.to_device(Device::Cpu).to_kind(Kind::Int64);
    let ids = Vec::<i64>::try_from(ids.contiguous().view([-1])).ok()?;
    let mut h = mix(ad.seed, 0x6c6f_7261); // "lora"
    for d in input_ids.size() {
        h = mix(h, d as u64);
    }
    for id in ids {
        h = mix(h, id as u64);
    }
    let state = ad.a.sum(Kind::Double).double_value(&[]) + ad.b.sum(Kind::Double).double_value(&[]);
    Some(mix(h, state.to_bits()))
}

/// Inverted dropout with a mask drawn from `key` (ChaCha8, on the CPU).
fn dropout_mask(x: &Tensor, p: f64, key: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key);
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..x.numel())
        .map(|_| {
            if rng.random::<f64>() < keep {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_slice(&mask)
        .view(x.size().as_slice())
        .to_device(x.device())
        .to_kind(x.kind());
    x * mask
}

/// A fresh adapter for `module` (`in → out`): `A` ~ U(±1/√in) as PEFT's
/// `kaiming_uniform_(a=√5)`, drawn from `seed` and the module's name; `B` zero.
pub fn fresh_adapter(
    cfg: &LoraConfig,
    seed: u64,
    module: &str,
    (input, output): (i64, i64),
    kind: Kind,
    device: Device,
) -> Adapter {
    let bound = 1.0 / (input as f64).sqrt();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(hash_str(seed, module));
    let values: Vec<f32> = (0..cfg.rank * input)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
        .collect();
    let a = Tensor::from_slice(&values)
        .view([cfg.rank, input])
        .to_kind(kind)
        .to_device(device);
    Adapter {
        a,
        b: Tensor::zeros([output, cfg.rank], (kind, device)),
        alpha: cfg.alpha,
        rslora: false,
        dropout: cfg.dropout,
        seed,
    }
}

/// Adds `t` to `vs` as a trainable variable named `name` (dotted, as HF's
/// and PEFT's keys are); returns the stored tensor.
fn register(vs: &nn::VarStore, name: &str, t: Tensor) -> Tensor {
    let parts: Vec<&str> = name.split('.').collect();
    let (last, dirs) = parts.split_last().expect("non-empty name");
    let mut p = vs.root();
    for d in dirs {
        p = p.sub(*d);
    }
    p.add(last, t, true)
}

fn peft_key(module: &str, which: &str) -> String {
    format!("{PEFT_PREFIX}{module}.{which}.weight")
}

/// What a merged export needs of the base model besides its weights.
pub struct BaseModel {
    /// The base model's path, for `base_model_name_or_path`.
    pub name_or_path: String,
    /// Its `config.json` (rebuilt from the metadata for a GGUF file) and
    /// tokenizer files.
    pub files: HfFiles,
}

struct Shared {
    /// `Some`: copies train these adapters on the shared base weights.
    lora: Option<LoraConfig>,
    seed: u64,
    base: BaseModel,
}

/// A Llama with LoRA adapters (see the module docs): implements [`Policy`].
pub struct LoraModel {
    inner: CausalModel<Llama>,
    shared: Arc<Shared>,
}

impl LoraModel {
    /// `vs` holds `model`'s parameters: the base weights (and a loaded
    /// adapter) for a model built from its files. With `lora`, the base is
    /// frozen here: nothing trains it but an explicit `unfreeze` (the
    /// `[sft]` stage fine-tunes the prior before any copy exists).
    pub fn new(
        mut vs: nn::VarStore,
        model: Llama,
        vocab: i64,
        lora: Option<LoraConfig>,
        seed: u64,
        base: BaseModel,
    ) -> LoraModel {
        if lora.is_some() {
            vs.freeze();
        }
        LoraModel {
            inner: CausalModel {
                vs,
                model,
                vocab,
                recipe: None,
            },
            shared: Arc::new(Shared { lora, seed, base }),
        }
    }

    pub fn model(&self) -> &Llama {
        &self.inner.model
    }

    pub fn lora(&self) -> Option<&LoraConfig> {
        self.shared.lora.as_ref()
    }

    /// The base model's `config.json`.
    pub fn base_config(&self) -> &serde_json::Value {
        &self.shared.base.files.config
    }

    /// Every adapter by its module path, in layer order.
    pub fn adapters(&self) -> Vec<(String, &Adapter)> {
        self.inner
            .model
            .projections()
            .into_iter()
            .filter_map(|(m, p)| p.adapter.as_ref().map(|a| (m, a)))
            .collect()
    }

    /// A frozen copy. With `lora`: the same base tensors (shared, not
    /// copied) and a copy of each adapter, or a fresh one (at zero) for a
    /// target that has none yet, in a variable store of adapters only.
    /// Without: a deep copy of everything (a loaded adapter trains with the
    /// weights).
    pub fn copy(&self) -> anyhow::Result<LoraModel> {
        let _guard = tch::no_grad_guard();
        let device = self.inner.vs.device();
        let vs = nn::VarStore::new(device);
        let lora = self.shared.lora.as_ref();
        let mut model = match lora {
            Some(_) => self.inner.model.map_weights(&mut |_, t| t.shallow_clone()),
            None => self
                .inner
                .model
                .map_weights(&mut |name, t| register(&vs, name, t.copy())),
        };
        let old: HashMap<String, &Adapter> = self.adapters().into_iter().collect();
        let seed = self.shared.seed;
        for (module, p) in model.projections_mut() {
            let adapter = match (old.get(&module), lora) {
                (Some(a), _) => Some(Adapter {
                    a: a.a.copy(),
                    b: a.b.copy(),
                    alpha: a.alpha,
                    rslora: a.rslora,
                    dropout: lora.map_or(a.dropout, |l| l.dropout),
                    seed,
                }),
                (None, Some(l))
                    if Target::of_module(&module).is_some_and(|t| l.targets.contains(&t)) =>
                {
                    let kind = p.base.weight.kind();
                    Some(fresh_adapter(l, seed, &module, p.dims(), kind, device))
                }
                _ => None,
            };
            if let Some(mut ad) = adapter {
                ad.a = register(&vs, &peft_key(&module, "lora_A"), ad.a);
                ad.b = register(&vs, &peft_key(&module, "lora_B"), ad.b);
                p.adapter = Some(ad);
            }
        }
        let mut vs = vs;
        vs.freeze();
        Ok(LoraModel {
            inner: CausalModel {
                vs,
                model,
                vocab: self.inner.vocab,
                recipe: None,
            },
            shared: self.shared.clone(),
        })
    }

    /// The adapter tensors under PEFT's keys (sharing storage).
    pub fn adapter_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (module, ad) in self.adapters() {
            out.push((peft_key(&module, "lora_A"), ad.a.shallow_clone()));
            out.push((peft_key(&module, "lora_B"), ad.b.shallow_clone()));
        }
        out
    }

    /// PEFT's `adapter_config.json` for these adapters.
    pub fn adapter_config(&self) -> anyhow::Result<serde_json::Value> {
        let adapters = self.adapters();
        let (_, first) = adapters
            .first()
            .ok_or_else(|| anyhow::anyhow!("this model has no adapters to save"))?;
        let targets: BTreeSet<&str> = adapters
            .iter()
            .filter_map(|(m, _)| m.rsplit('.').next())
            .collect();
        for (m, a) in &adapters {
            anyhow::ensure!(
                a.rank() == first.rank() && a.alpha == first.alpha && a.rslora == first.rslora,
                "adapter {m} has another rank or alpha than the others; PEFT's config holds one"
            );
        }
        let dropout = self.lora().map_or(first.dropout, |l| l.dropout);
        Ok(serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.shared.base.name_or_path,
            "r": first.rank(),
            "lora_alpha": first.alpha,
            "lora_dropout": dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_rslora": first.rslora,
            "use_dora": false,
            "revision": null,
        }))
    }

    /// Writes the adapters as PEFT does: `dir/adapter_config.json` and
    /// `dir/adapter_model.safetensors`.
    pub fn save_adapter(&self, dir: &Path) -> anyhow::Result<()> {
        let config = self.adapter_config()?;
        std::fs::create_dir_all(dir)?;
        let file = dir.join("adapter_model.safetensors");
        Tensor::write_safetensors(&self.adapter_tensors(), &file)?;
        let text = serde_json::to_string_pretty(&config)? + "\n";
        std::fs::write(dir.join("adapter_config.json"), text)?;
        Ok(())
    }

    /// The base weights with every adapter merged in (`W + scaling · B·A`,
    /// computed in f32, stored in the weight's kind), by HF name; the
    /// weights without an adapter share storage.
    pub fn merged_weights(&self) -> Vec<(String, Tensor)> {
        let _guard = tch::no_grad_guard();
        let adapters: HashMap<String, &Adapter> = self.adapters().into_iter().collect();
        self.inner
            .model
            .base_weights()
            .into_iter()
            .map(|(name, w)| {
                let merged = name
                    .strip_suffix(".weight")
                    .and_then(|m| adapters.get(m))
                    .map(|ad| {
                        let delta = ad.b.to_kind(Kind::Float).matmul(&ad.a.to_kind(Kind::Float))
                            * ad.scaling();
                        (w.to_kind(Kind::Float) + delta).to_kind(w.kind())
                    });
                (name, merged.unwrap_or(w))
            })
            .collect()
    }

    /// Writes an HF directory of the merged model into `dir`: `config.json`
    /// (the base's), `model.safetensors` and the base's tokenizer files.
    pub fn save_merged(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        self.shared.base.files.save(dir, &self.merged_weights())
    }
}

impl Policy for LoraModel {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.inner.forward(input_ids, attention_mask)
    }

    fn sequence_logprobs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        completion_mask: &Tensor,
    ) -> Tensor {
        self.inner
            .sequence_logprobs(input_ids, attention_mask, completion_mask)
    }

    fn vocab_size(&self) -> i64 {
        self.inner.vocab
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.inner.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.inner.vs
    }

    fn decoder(&self) -> Option<Box<dyn Decoder + '_>> {
        self.inner.decoder()
    }

    fn frozen_clone(&self) -> Option<anyhow::Result<Box<dyn Policy>>> {
        Some(self.copy().map(|m| Box::new(m) as Box<dyn Policy>))
    }

    fn set_gradient_checkpointing(&mut self, on: bool) -> bool {
        self.inner.set_gradient_checkpointing(on)
    }

    fn finish_backward(&self) {
        self.inner.finish_backward()
    }

    /// With `lora`: `adapter/` (PEFT's two files), and `merged/` (an HF
    /// directory) when `merge = true`. Without: the HF files beside the
    /// variable store's `model.safetensors`, whose names are HF's, so that
    /// `dir` is an HF directory; or, when a loaded adapter trained with the
    /// weights (its tensors are under PEFT's names there), `merged/`.
    fn export(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        let Some(lora) = self.lora() else {
            if self.adapters().is_empty() {
                let weights = self.inner.model.base_weights();
                let kind = crate::export::kind_of(weights.iter().map(|(_, t)| t))?;
                return self.shared.base.files.write(dir, kind);
            }
            self.save_merged(&dir.join("merged"))?;
            return Ok(vec!["merged".into()]);
        };
        if self.adapters().is_empty() {
            return Ok(Vec::new()); // the prior: no adapters
        }
        self.save_adapter(&dir.join("adapter"))?;
        let mut wrote = vec!["adapter".to_string()];
        if lora.merge {
            self.save_merged(&dir.join("merged"))?;
            wrote.push("merged".into());
        }
        Ok(wrote)
    }

    fn save_hf(&self, dir: &Path) -> anyhow::Result<bool> {
        self.save_merged(dir)?;
        Ok(true)
    }
}

/// PEFT's `adapter_config.json`, the keys this loader reads (the others
/// are ignored).
#[derive(Deserialize)]
struct PeftConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: i64,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: Option<serde_json::Value>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Value>,
}

/// A saved adapter's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSettings {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    pub rslora: bool,
    pub targets: BTreeSet<Target>,
}

fn empty(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        Some(serde_json::Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

/// Reads and checks `dir/adapter_config.json`: a plain LoRA (no DoRA,
/// biases, extra trained modules, per-layer patterns or `fan_in_fan_out`)
/// on projections this crate has.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterSettings> {
    let path = dir.join("adapter_config.json");
    let c: PeftConfig = crate::hf::read_json(&path)?;
    let bad = |m: String| Err(ModelError::file(&path, m));
    if c.peft_type.as_deref().is_some_and(|t| t != "LORA") {
        return bad(format!(
            "peft_type is `{}`; only LoRA adapters load",
            c.peft_type.unwrap_or_default()
        ));
    }
    if !(1..=MAX_RANK).contains(&c.r) {
        return bad(format!("r = {} is not in 1..={MAX_RANK}", c.r));
    }
    if !(c.lora_alpha.is_finite() && c.lora_alpha > 0.0) {
        return bad(format!(
            "lora_alpha = {} is not a finite number > 0",
            c.lora_alpha
        ));
    }
    if !(0.0..1.0).contains(&c.lora_dropout) {
        return bad(format!(
            "lora_dropout = {} is not in [0, 1)",
            c.lora_dropout
        ));
    }
    let unsupported = [
        (c.use_dora, "use_dora = true (DoRA)"),
        (c.fan_in_fan_out, "fan_in_fan_out = true"),
        (!empty(&c.modules_to_save), "modules_to_save"),
        (!empty(&c.layers_to_transform), "layers_to_transform"),
        (!empty(&c.rank_pattern), "rank_pattern"),
        (!empty(&c.alpha_pattern), "alpha_pattern"),
        (
            c.bias.as_deref().is_some_and(|b| b != "none"),
            "bias other than \"none\"",
        ),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(on, _)| *on) {
        return bad(format!("{what} is not supported; plain LoRA adapters only"));
    }
    let names: Vec<String> = match &c.target_modules {
        Some(serde_json::Value::String(s)) if s == "all-linear" => {
            Target::ALL.iter().map(|t| t.name().to_string()).collect()
        }
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        return bad("target_modules names no module".into());
    }
    let mut targets = BTreeSet::new();
    for n in names {
        match Target::from_name(&n) {
            Some(t) => targets.insert(t),
            None => return bad(format!("target module `{n}` is not one of {TARGETS}")),
        };
    }
    Ok(AdapterSettings {
        rank: c.r,
        alpha: c.lora_alpha,
        dropout: c.lora_dropout,
        rslora: c.use_rslora,
        targets,
    })
}

/// Reads the adapter in `dir` for `model`: every targeted projection's
/// `lora_A` `[r, in]` and `lora_B` `[out, r]`, checked (present, shaped,
/// finite, and nothing else in the file), in `kind` on `device`.
pub fn read_adapter(
    dir: &Path,
    model: &Llama,
    kind: Kind,
    device: Device,
    seed: u64,
) -> Result<(AdapterSettings, Vec<(String, Adapter)>)> {
    let settings = read_adapter_config(dir)?;
    let path = dir.join("adapter_model.safetensors");
    if !path.is_file() {
        return Err(ModelError::NotFound(path));
    }
    let bytes = std::fs::read(&path).map_err(|e| ModelError::file(&path, e.to_string()))?;
    let mut tensors: HashMap<String, Tensor> = crate::weights::read_safetensors(&path, &bytes)?
        .into_iter()
        .collect();
    let bad = |m: String| ModelError::file(&path, m);
    let mut out = Vec::new();
    for (module, p) in model.projections() {
        let Some(target) = Target::of_module(&module) else {
            continue;
        };
        if !settings.targets.contains(&target) {
            continue;
        }
        let (input, output) = p.dims();
        let mut take = |which: &str, shape: [i64; 2]| -> Result<Tensor> {
            let key = peft_key(&module, which);
            let t = tensors.remove(&key).ok_or_else(|| {
                bad(format!(
                    "no tensor `{key}` (target_modules names {})",
                    target.name()
                ))
            })?;
            if t.size() != shape {
                return Err(bad(format!(
                    "`{key}` has shape {:?}; this model needs {shape:?}",
                    t.size()
                )));
            }
            if !t.is_floating_point() {
                return Err(bad(format!(
                    "`{key}` is not a float tensor ({:?})",
                    t.kind()
                )));
            }
            let finite = t.isfinite().all().int64_value(&[]) != 0;
            if !finite {
                return Err(bad(format!("`{key}` holds a NaN or infinite value")));
            }
            Ok(t.to_kind(kind).to_device(device))
        };
        let a = take("lora_A", [settings.rank, input])?;
        let b = take("lora_B", [output, settings.rank])?;
        out.push((
            module,
            Adapter {
                a,
                b,
                alpha: settings.alpha,
                rslora: settings.rslora,
                dropout: settings.dropout,
                seed,
            },
        ));
    }
    let mut left: Vec<_> = tensors.into_keys().collect();
    left.sort();
    if let Some(name) = left.first() {
        return Err(bad(format!(
            "tensor `{name}` is not the LoRA weight of a targeted projection of this model \
             ({} such tensors)",
            left.len()
        )));
    }
    Ok((settings, out))
}

/// Builds the `hf` plugin's model with `lora` and/or `adapter`: the Llama at
/// `path` (an HF directory or a GGUF file) in `dtype` on `device`, with the
/// adapter in `adapter` (a PEFT directory) attached and on. With `lora` the
/// result is a prior whose copies train adapters; an adapter loaded beside
/// `lora` is their starting point, and must have its rank, alpha and targets.
pub fn build(
    path: &Path,
    dtype: DType,
    device: Device,
    lora: Option<&LoraConfig>,
    adapter: Option<&Path>,
    seed: u64,
) -> Result<LoraModel> {
    let parts = crate::hf::load_llama(path, dtype, device)?;
    let (vs, mut model) = (parts.vs, parts.model);
    if let Some(dir) = adapter {
        let kind = dtype.kind();
        let (settings, loaded) = read_adapter(dir, &model, kind, device, seed)?;
        if let Some(l) = lora {
            let wanted: BTreeSet<Target> = l.targets.iter().copied().collect();
            if (settings.rank, settings.alpha, &settings.targets) != (l.rank, l.alpha, &wanted) {
                let names = |t: &BTreeSet<Target>| {
                    t.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                };
                return Err(ModelError::file(
                    dir.join("adapter_config.json"),
                    format!(
                        "this adapter (r = {}, lora_alpha = {}, target_modules = [{}]) does not \
                         match `lora` (rank = {}, alpha = {}, targets = [{}]); give `lora` the \
                         adapter's settings to train it further",
                        settings.rank,
                        settings.alpha,
                        names(&settings.targets),
                        l.rank,
                        l.alpha,
                        names(&wanted)
                    ),
                ));
            }
        }
        let mut loaded: HashMap<String, Adapter> = loaded.into_iter().collect();
        let _guard = tch::no_grad_guard();
        for (module, p) in model.projections_mut() {
            if let Some(mut ad) = loaded.remove(&module) {
                ad.a = register(&vs, &peft_key(&module, "lora_A"), ad.a);
                ad.b = register(&vs, &peft_key(&module, "lora_B"), ad.b);
                p.adapter = Some(ad);
            }
        }
    }
    let base = BaseModel {
        name_or_path: path.display().to_string(),
        files: parts.files,
    };
    Ok(LoraModel::new(
        vs,
        model,
        parts.vocab,
        lora.cloned(),
        seed,
        base,
    ))
}
