//! Experiment manifests (TOML): the fixed shape (top-level keys, `train`,
//! `sampling`, `runs`) and one plugin per slot, built by the one loader in
//! [`source`], which every kind of manifest shares.
//!
//! - `source`: reading, overrides, spans, located errors, plugin slots;
//! - `error`: the error type and its rendering;
//! - `overrides`: `--set key.path=value`;
//! - `paths`: files named in a manifest, resolved against its directory.

mod error;
pub mod limits;
mod overrides;
mod paths;
mod source;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

pub use self::error::ManifestError;
pub use self::overrides::apply_overrides;
pub use self::paths::{InputPath, OutputPath, PathBase};
pub use self::source::{ManifestSource, Slot};
pub use crate::device::DeviceChoice;
use crate::registry::Registry;
use crate::{
    Estimator, EvalConfig, Evaluator, GoodnessModel, ModelSpec, RewardSpec, SamplingConfig,
    TaskSpec,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    #[default]
    Adam,
    Sgd,
}

/// Training loop settings shared by every run (a run may override steps and lr).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub lr: f64,
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Prompts per step; default: all training prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts_per_step: Option<usize>,
    /// Run the evaluators every this many steps (0: only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Save a checkpoint (policy, optimizer, proposal, log so far) every this
    /// many steps, for `--resume` (0: only when a run finishes).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// What a step whose loss or gradient is not finite does.
    #[serde(default)]
    pub on_nonfinite: OnNonfinite,
    /// Where draws from the prior, shared by the manifest's runs, are kept.
    #[serde(default, skip_serializing_if = "SampleCacheMode::is_auto")]
    pub sample_cache: SampleCacheMode,
}

/// `train.sample_cache`: the prior's draws at a step are the same in every
/// run of a manifest (common random numbers), so they are drawn and scored
/// once and shared. `"disk"` also keeps them in files
/// (`$BRAIN_RS_CACHE/samples`, else `~/.cache/brain-rs/samples`), keyed by
/// everything that determines them, so a rerun with another estimator added,
/// or a resumed run, reads them back; `"memory"` shares them within one
/// process; `"off"` draws for every run. `"auto"` (the default) is `"disk"`
/// for text tasks, where a draw costs a model's decoding, and `"memory"` for
/// toy tasks, where a file would cost more than the draw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleCacheMode {
    #[default]
    Auto,
    Disk,
    Memory,
    Off,
}

impl SampleCacheMode {
    fn is_auto(&self) -> bool {
        *self == SampleCacheMode::Auto
    }
}

/// `train.on_nonfinite`: a non-finite loss or gradient either skips the
/// optimizer step (counted in the metrics as `skipped_steps`) or stops the
/// run with an error, keeping the last good checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonfinite {
    Skip,
    #[default]
    Stop,
}

/// Supervised fine-tuning of the base model on the task's gold outputs
/// before alignment (`[sft]`): the paper aligns an SFT model. The result is
/// cached by a hash of the model, the task and these settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    #[serde(default = "one_epoch")]
    pub epochs: usize,
    pub lr: f64,
    /// Prompt + gold pairs per step.
    #[serde(default = "eight")]
    pub batch_size: usize,
    /// Cut gold outputs to this many tokens (default: the task's completion cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
}

fn one_epoch() -> usize {
    1
}
fn eight() -> usize {
    8
}

/// Stages that run before the manifest's plugins are built (`[stages]`),
/// because those plugins read what the stages write.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stages {
    /// Reward-model manifests (`runner train-rm`), relative to this manifest:
    /// each is trained unless its output is cached.
    #[serde(default)]
    pub reward_models: Vec<PathBuf>,
}

/// One trained policy: an estimator and optional overrides of `train`.
pub struct Run {
    pub name: String,
    pub estimator: Slot<dyn Estimator>,
    pub steps: usize,
    pub lr: f64,
    /// The manifest's `sampling`, or the run's own.
    pub sampling: SamplingConfig,
}

pub struct Manifest {
    pub path: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// Builds the task and the prior (and seeds a toy model's init).
    pub seed: u64,
    /// Every run is repeated at each of these training seeds (`seeds = [..]`;
    /// default: `[seed]`); the tables report the mean and interval across them.
    pub seeds: Vec<u64>,
    pub device: DeviceChoice,
    /// LibTorch intra-op threads (default: LibTorch's choice).
    pub threads: Option<i32>,
    pub task: Slot<dyn TaskSpec>,
    pub model: Slot<dyn ModelSpec>,
    pub reward: Slot<dyn RewardSpec>,
    pub goodness: Slot<dyn GoodnessModel>,
    pub evaluators: Vec<Slot<dyn Evaluator>>,
    /// How the held-out completions the evaluators judge are drawn.
    pub eval: EvalConfig,
    /// Fine-tune the base model on gold outputs first (the prior is the result).
    pub sft: Option<SftConfig>,
    pub stages: Stages,
    pub train: TrainConfig,
    pub sampling: SamplingConfig,
    /// Where samples are drawn when not in this process (`[sampler.NAME]`:
    /// inference servers); `None`: in process.
    pub sampler: Option<Slot<dyn crate::SamplerBackend>>,
    pub runs: Vec<Run>,
}

/// A plugin slot seen in the first pass: `[slot.NAME]` / `slot = { NAME = {…} }`
/// / `slot = "NAME"`. Only the name is read here.
struct PluginName;

impl<'de> Deserialize<'de> for PluginName {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PluginName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a plugin name, or a table with exactly one key naming the plugin (e.g. `[goodness.bt-exp]`)")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<PluginName, E> {
                Ok(PluginName)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PluginName, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    names.push(name);
                }
                match names.len() {
                    1 => Ok(PluginName),
                    0 => Err(de::Error::custom(
                        "this table names no plugin; give exactly one, e.g. `[goodness.bt-exp]`",
                    )),
                    _ => Err(de::Error::custom(format!(
                        "this table names {} plugins (`{}`); give exactly one",
                        names.len(),
                        names.join("`, `")
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // plugin slots are read again in the second pass
struct Shape {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    seeds: Option<Vec<u64>>,
    #[serde(default)]
    device: DeviceChoice,
    #[serde(default)]
    threads: Option<i32>,
    task: PluginName,
    model: PluginName,
    reward: PluginName,
    goodness: PluginName,
    #[serde(default)]
    evaluators: Option<toml::Table>,
    #[serde(default)]
    eval: EvalConfig,
    #[serde(default)]
    sft: Option<SftConfig>,
    #[serde(default)]
    stages: Stages,
    train: TrainConfig,
    #[serde(default)]
    sampling: SamplingConfig,
    #[serde(default)]
    sampler: Option<PluginName>,
    runs: Vec<RunShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RunShape {
    name: String,
    estimator: PluginName,
    #[serde(default)]
    steps: Option<usize>,
    #[serde(default)]
    lr: Option<f64>,
    #[serde(default)]
    sampling: Option<SamplingConfig>,
}

/// A refused setting: its dotted key, why, and the fix.
type Refusal = (String, String, String);

/// The bounds of [`limits`] on the fixed shape: `(key, why, fix)` of the
/// first setting outside them. Plugins check their own tables.
fn shape_limits(shape: &Shape) -> Result<(), Refusal> {
    use limits::*;
    let at = |key: &str, fix: &str| {
        // `{key}` in a fix names the key.
        let (key, fix) = (key.to_string(), fix.replace("{key}", key));
        move |why: String| (key, why, fix)
    };
    plain_name(&shape.name).map_err(at(
        "name",
        "give a plain name such as `my-experiment` (it names the directory results/<name>)",
    ))?;
    if let Some(t) = shape.threads {
        count_in(t, 1, MAX_THREADS, "LibTorch intra-op threads").map_err(at(
            "threads",
            "set `threads` to the number of cores to use, or leave it out for LibTorch's choice",
        ))?;
    }
    let steps_fix = "set `{key}` to a whole number of optimizer steps between 1 and 1000000000";
    let lr_fix = "set `{key}` to a finite learning rate > 0, e.g. `1e-4`";
    let t = &shape.train;
    count_in(t.steps, 1, MAX_STEPS, "optimizer steps").map_err(at("train.steps", steps_fix))?;
    finite_positive(t.lr).map_err(at("train.lr", lr_fix))?;
    if let Some(p) = t.prompts_per_step {
        count_in(p, 1, MAX_PROMPTS, "prompts per step").map_err(at(
            "train.prompts_per_step",
            "set `{key}` to at least 1, or leave it out to use every training prompt",
        ))?;
    }
    for (i, r) in shape.runs.iter().enumerate() {
        if let Some(s) = r.steps {
            count_in(s, 1, MAX_STEPS, "optimizer steps")
                .map_err(at(&format!("runs.{i}.steps"), steps_fix))?;
        }
        if let Some(lr) = r.lr {
            finite_positive(lr).map_err(at(&format!("runs.{i}.lr"), lr_fix))?;
        }
    }
    if let Some(sft) = &shape.sft {
        finite_positive(sft.lr).map_err(at("sft.lr", lr_fix))?;
        count_in(sft.epochs, 1, MAX_EPOCHS, "passes over the gold outputs")
            .map_err(at("sft.epochs", "set `sft.epochs` to at least 1"))?;
        count_in(sft.batch_size, 1, MAX_BATCH, "pairs per step")
            .map_err(at("sft.batch_size", "set `sft.batch_size` to at least 1"))?;
        if let Some(l) = sft.max_len {
            count_in(l, 1, MAX_NEW_TOKENS as usize, "tokens per gold output").map_err(at(
                "sft.max_len",
                "set `{key}` to at least 1, or leave it out for the task's completion cap",
            ))?;
        }
    }
    Ok(())
}

impl Manifest {
    /// Reads, overrides and validates a manifest; every plugin is constructed.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Manifest, ManifestError> {
        Self::build(&ManifestSource::read(path, overrides)?)
    }

    /// Parses manifest `text`; `path` is used for messages and relative paths.
    pub fn from_str(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        Self::build(&ManifestSource::parse(path, text.to_string())?)
    }

    fn build(src: &ManifestSource) -> Result<Manifest, ManifestError> {
        let registry = Registry::global();
        let shape: Shape = src.deserialize()?;
        let run_sampling = shape.runs.iter().enumerate().filter_map(|(i, r)| {
            r.sampling
                .as_ref()
                .map(|c| (format!("runs.{i}.sampling"), c))
        });
        for (path, config) in
            std::iter::once(("sampling".to_string(), &shape.sampling)).chain(run_sampling)
        {
            if let Err((k, message)) = config.validate() {
                let p = format!("{path}.{k}");
                return Err(src.invalid(
                    &p,
                    format!("invalid `{p}`: {message}"),
                    format!("change `{p}`"),
                ));
            }
        }
        shape_limits(&shape)
            .map_err(|(key, why, fix)| src.invalid(&key, format!("invalid `{key}`: {why}"), fix))?;
        if let Err((k, message)) = shape.eval.validate() {
            let p = format!("eval.{k}");
            return Err(src.invalid(
                &p,
                format!("invalid `{p}`: {message}"),
                format!("change `{p}`"),
            ));
        }
        let seeds = shape.seeds.clone().unwrap_or_else(|| vec![shape.seed]);
        let mut distinct = seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if seeds.is_empty() || distinct.len() != seeds.len() {
            return Err(src.invalid(
                "seeds",
                "`seeds` must list at least one seed, each once",
                "write e.g. `seeds = [1, 2, 3]`, or leave it out to use `seed`",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in shape.runs.iter().enumerate() {
            if let Err(why) = limits::run_name(&r.name) {
                return Err(src.invalid(
                    &format!("runs.{i}.name"),
                    format!("invalid `runs.{i}.name`: {why}"),
                    "name the run in words without `/` or `\\`, e.g. `BRAIn (n = 4)`",
                ));
            }
            if !seen.insert(r.name.as_str()) {
                return Err(src.invalid(
                    &format!("runs.{i}.name"),
                    format!("two runs are named `{}`", r.name),
                    "give each run a unique name",
                ));
            }
        }
        if shape.runs.is_empty() {
            return Err(src.invalid(
                "runs",
                "`runs` is empty",
                "add at least one `[[runs]]` with an estimator",
            ));
        }

        let task = src.slot(registry, "task")?;
        let model = src.slot(registry, "model")?;
        let reward = src.slot(registry, "reward")?;
        let goodness = src.slot(registry, "goodness")?;
        let evaluators = src.slots(registry, "evaluators")?;
        let sampler = match shape.sampler {
            Some(_) => Some(src.slot(registry, "sampler")?),
            None => None,
        };
        let mut runs = Vec::new();
        for (i, r) in shape.runs.iter().enumerate() {
            let estimator = src.slot(registry, &format!("runs.{i}.estimator"))?;
            runs.push(Run {
                name: r.name.clone(),
                estimator,
                steps: r.steps.unwrap_or(shape.train.steps),
                lr: r.lr.unwrap_or(shape.train.lr),
                sampling: r.sampling.clone().unwrap_or_else(|| shape.sampling.clone()),
            });
        }
        Ok(Manifest {
            path: src.file().to_path_buf(),
            name: shape.name,
            description: shape.description,
            seed: shape.seed,
            seeds,
            device: shape.device,
            threads: shape.threads,
            task,
            model,
            reward,
            goodness,
            evaluators,
            eval: shape.eval,
            sft: shape.sft,
            stages: shape.stages,
            train: shape.train,
            sampling: shape.sampling,
            sampler,
            runs,
        })
    }

    /// The `[stages]` of the manifest at `path`, read before anything else is
    /// built (the plugins may read what they write); paths resolved against
    /// the manifest's directory.
    pub fn stages(path: &Path, overrides: &[String]) -> Result<Stages, ManifestError> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            stages: Stages,
        }
        let src = ManifestSource::read(path, overrides)?;
        let mut only: Only = src.deserialize()?;
        for (i, m) in only.stages.reward_models.iter_mut().enumerate() {
            let resolved = src.base().join(m);
            if !resolved.is_file() {
                return Err(src.invalid(
                    &format!("stages.reward_models.{i}"),
                    format!("reward-model manifest not found: {}", resolved.display()),
                    "give the path of a `runner train-rm` manifest, relative to this manifest",
                ));
            }
            *m = resolved;
        }
        Ok(only.stages)
    }

    /// The manifest with every default filled in, as TOML.
    pub fn resolved_toml(&self) -> String {
        #[derive(Serialize)]
        struct RunOut<'a> {
            name: &'a str,
            steps: usize,
            lr: f64,
            sampling: &'a SamplingConfig,
            estimator: &'a Slot<dyn Estimator>,
        }
        #[derive(Serialize)]
        struct Out<'a> {
            name: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            description: &'a Option<String>,
            seed: u64,
            seeds: &'a [u64],
            device: DeviceChoice,
            #[serde(skip_serializing_if = "Option::is_none")]
            threads: Option<i32>,
            task: &'a Slot<dyn TaskSpec>,
            model: &'a Slot<dyn ModelSpec>,
            reward: &'a Slot<dyn RewardSpec>,
            goodness: &'a Slot<dyn GoodnessModel>,
            evaluators: toml::Table,
            eval: &'a EvalConfig,
            #[serde(skip_serializing_if = "Option::is_none")]
            sft: &'a Option<SftConfig>,
            stages: &'a Stages,
            train: &'a TrainConfig,
            sampling: &'a SamplingConfig,
            #[serde(skip_serializing_if = "Option::is_none")]
            sampler: Option<&'a Slot<dyn crate::SamplerBackend>>,
            runs: Vec<RunOut<'a>>,
        }
        let out = Out {
            name: &self.name,
            description: &self.description,
            seed: self.seed,
            seeds: &self.seeds,
            device: self.device,
            threads: self.threads,
            task: &self.task,
            model: &self.model,
            reward: &self.reward,
            goodness: &self.goodness,
            evaluators: self
                .evaluators
                .iter()
                .map(|e| (e.plugin.clone(), e.config.clone()))
                .collect(),
            eval: &self.eval,
            sft: &self.sft,
            stages: &self.stages,
            train: &self.train,
            sampling: &self.sampling,
            sampler: self.sampler.as_ref(),
            runs: self
                .runs
                .iter()
                .map(|r| RunOut {
                    name: &r.name,
                    steps: r.steps,
                    lr: r.lr,
                    sampling: &r.sampling,
                    estimator: &r.estimator,
                })
                .collect(),
        };
        toml::to_string_pretty(&out).expect("manifest values are plain TOML")
    }
}
