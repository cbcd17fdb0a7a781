//! Experiment manifests (TOML): the fixed shape (top-level keys, `train`,
//! `sampling`, `runs`) and one plugin per slot, built by the one loader in
//! [`source`], which every kind of manifest shares.
//!
//! - `source`: reading, overrides, spans, located errors, plugin slots;
//! - `error`: the error type and its rendering;
//! - `overrides`: `--set key.path=value`;
//! - `paths`: files named in a manifest, resolved against its directory.

mod error;
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
use crate::{Estimator, Evaluator, GoodnessModel, ModelSpec, RewardSpec, SamplingConfig, TaskSpec};

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
    pub seed: u64,
    pub device: DeviceChoice,
    /// LibTorch intra-op threads (default: LibTorch's choice).
    pub threads: Option<i32>,
    pub task: Slot<dyn TaskSpec>,
    pub model: Slot<dyn ModelSpec>,
    pub reward: Slot<dyn RewardSpec>,
    pub goodness: Slot<dyn GoodnessModel>,
    pub evaluators: Vec<Slot<dyn Evaluator>>,
    pub train: TrainConfig,
    pub sampling: SamplingConfig,
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
    device: DeviceChoice,
    #[serde(default)]
    threads: Option<i32>,
    task: PluginName,
    model: PluginName,
    reward: PluginName,
    goodness: PluginName,
    #[serde(default)]
    evaluators: Option<toml::Table>,
    train: TrainConfig,
    #[serde(default)]
    sampling: SamplingConfig,
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
        for (k, bad) in [
            ("steps", shape.train.steps == 0),
            ("lr", shape.train.lr.is_nan() || shape.train.lr <= 0.0),
        ] {
            if bad {
                return Err(src.invalid(
                    &format!("train.{k}"),
                    format!("`train.{k}` must be > 0"),
                    format!("set `train.{k}` to a positive value"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in shape.runs.iter().enumerate() {
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
            device: shape.device,
            threads: shape.threads,
            task,
            model,
            reward,
            goodness,
            evaluators,
            train: shape.train,
            sampling: shape.sampling,
            runs,
        })
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
            device: DeviceChoice,
            #[serde(skip_serializing_if = "Option::is_none")]
            threads: Option<i32>,
            task: &'a Slot<dyn TaskSpec>,
            model: &'a Slot<dyn ModelSpec>,
            reward: &'a Slot<dyn RewardSpec>,
            goodness: &'a Slot<dyn GoodnessModel>,
            evaluators: toml::Table,
            train: &'a TrainConfig,
            sampling: &'a SamplingConfig,
            runs: Vec<RunOut<'a>>,
        }
        let out = Out {
            name: &self.name,
            description: &self.description,
            seed: self.seed,
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
            train: &self.train,
            sampling: &self.sampling,
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
