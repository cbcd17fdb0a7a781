//! The plugin registry. Each plugin crate submits a [`Plugin`] with
//! `inventory::submit!`; the registry is built lazily on first use, sorted by
//! kind and name, and refuses duplicate names within a kind.
//!
//! A plugin's constructor receives its own TOML table (as a deserializer that
//! keeps source spans) and returns the built object together with its resolved
//! configuration (defaults filled in), which the runner writes next to results.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::manifest::PathBase;
use crate::{Estimator, Evaluator, GoodnessModel, ModelSpec, RewardSpec, TaskSpec};

/// What a constructor reads: its table (a deserializer whose errors carry
/// source spans) and where the manifest's relative paths start.
pub struct ConfigDeserializer {
    table: toml_edit::de::ValueDeserializer,
    base: PathBase,
}

impl ConfigDeserializer {
    pub fn new(table: toml_edit::de::ValueDeserializer, base: PathBase) -> ConfigDeserializer {
        ConfigDeserializer { table, base }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginKind {
    Task,
    Model,
    Reward,
    Goodness,
    Estimator,
    Evaluator,
    Sampler,
}

impl PluginKind {
    pub const ALL: [PluginKind; 7] = [
        PluginKind::Task,
        PluginKind::Model,
        PluginKind::Reward,
        PluginKind::Goodness,
        PluginKind::Estimator,
        PluginKind::Evaluator,
        PluginKind::Sampler,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Task => "task",
            PluginKind::Model => "model",
            PluginKind::Reward => "reward",
            PluginKind::Goodness => "goodness",
            PluginKind::Estimator => "estimator",
            PluginKind::Evaluator => "evaluator",
            PluginKind::Sampler => "sampler",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin's table was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The table does not deserialize into the plugin's config (unknown key,
    /// wrong type, missing key); the error carries the source span.
    #[error("{}", .0.message())]
    Config(#[from] toml_edit::de::Error),
    /// The config deserialized but a value is out of range; `key` names it.
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A file named at `key` does not exist.
    #[error("{message}")]
    Path { key: String, message: String },
}

impl PluginError {
    pub fn invalid(key: &str, message: impl Into<String>) -> Self {
        PluginError::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

pub type Built<T> = (Box<T>, toml::Value);
pub type Ctor<T> = fn(ConfigDeserializer) -> Result<Built<T>, PluginError>;

/// One constructor signature per kind.
#[derive(Clone, Copy)]
pub enum Constructor {
    Task(Ctor<dyn TaskSpec>),
    Model(Ctor<dyn ModelSpec>),
    Reward(Ctor<dyn RewardSpec>),
    Goodness(Ctor<dyn GoodnessModel>),
    Estimator(Ctor<dyn Estimator>),
    Evaluator(Ctor<dyn Evaluator>),
    Sampler(Ctor<dyn crate::SamplerBackend>),
}

impl Constructor {
    pub fn kind(&self) -> PluginKind {
        match self {
            Constructor::Task(_) => PluginKind::Task,
            Constructor::Model(_) => PluginKind::Model,
            Constructor::Reward(_) => PluginKind::Reward,
            Constructor::Goodness(_) => PluginKind::Goodness,
            Constructor::Estimator(_) => PluginKind::Estimator,
            Constructor::Evaluator(_) => PluginKind::Evaluator,
            Constructor::Sampler(_) => PluginKind::Sampler,
        }
    }
}

/// A registration: submit one per plugin with `align_core::inventory::submit!`.
pub struct Plugin {
    pub name: &'static str,
    pub description: &'static str,
    pub constructor: Constructor,
}

inventory::collect!(Plugin);

/// Deserializes the plugin's typed config `C`, validates and builds it with
/// `make`, and returns the object with its resolved config.
pub fn build_from_config<C, T: ?Sized>(
    de: ConfigDeserializer,
    make: impl FnOnce(&C) -> Result<Box<T>, PluginError>,
) -> Result<Built<T>, PluginError>
where
    C: DeserializeOwned + Serialize,
{
    build_resolving(de, |c: &mut C, _| make(c))
}

/// [`build_from_config`] for configs that name files: `make` resolves each
/// [`InputPath`](crate::manifest::InputPath) with [`PathBase::resolve`]
/// (relative paths start at the manifest's directory) before using it.
pub fn build_resolving<C, T: ?Sized>(
    de: ConfigDeserializer,
    make: impl FnOnce(&mut C, &PathBase) -> Result<Box<T>, PluginError>,
) -> Result<Built<T>, PluginError>
where
    C: DeserializeOwned + Serialize,
{
    let mut config: C = serde::Deserialize::deserialize(de.table)?;
    let object = make(&mut config, &de.base)?;
    let resolved = toml::Value::try_from(&config).map_err(|e| {
        PluginError::invalid(
            "(config)",
            format!("could not serialize the resolved config: {e}"),
        )
    })?;
    Ok((object, resolved))
}

/// Every registered plugin, by kind then name.
pub struct Registry {
    plugins: BTreeMap<(PluginKind, &'static str), &'static Plugin>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("two {kind} plugins are registered under the name `{name}`; rename one of them")]
    Duplicate { kind: PluginKind, name: String },
    #[error("unknown {kind} `{name}`; known {kind} plugins: {known}")]
    Unknown {
        kind: PluginKind,
        name: String,
        known: String,
    },
}

impl Registry {
    /// Builds a registry from explicit registrations (the global one uses inventory).
    pub fn from_plugins(
        plugins: impl IntoIterator<Item = &'static Plugin>,
    ) -> Result<Registry, RegistryError> {
        let mut map = BTreeMap::new();
        for p in plugins {
            let key = (p.constructor.kind(), p.name);
            if map.insert(key, p).is_some() {
                return Err(RegistryError::Duplicate {
                    kind: key.0,
                    name: p.name.to_string(),
                });
            }
        }
        Ok(Registry { plugins: map })
    }

    /// The registry of every plugin linked into this binary.
    pub fn global() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| match Registry::from_plugins(inventory::iter::<Plugin>) {
            Ok(r) => r,
            // A duplicate is a build mistake, not a user error: stop loudly.
            Err(e) => panic!("plugin registry: {e}"),
        })
    }

    pub fn of_kind(&self, kind: PluginKind) -> impl Iterator<Item = &'static Plugin> + '_ {
        self.plugins
            .iter()
            .filter(move |((k, _), _)| *k == kind)
            .map(|(_, p)| *p)
    }

    pub fn get(&self, kind: PluginKind, name: &str) -> Result<&'static Plugin, RegistryError> {
        self.plugins
            .iter()
            .find(|((k, n), _)| *k == kind && *n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| RegistryError::Unknown {
                kind,
                name: name.to_string(),
                known: self
                    .of_kind(kind)
                    .map(|p| format!("`{}`", p.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// `runner list`: every plugin, grouped by kind.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for kind in PluginKind::ALL {
            out.push_str(&format!("{kind}:\n"));
            let width = self.of_kind(kind).map(|p| p.name.len()).max().unwrap_or(0);
            for p in self.of_kind(kind) {
                out.push_str(&format!("  {:width$}  {}\n", p.name, p.description));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GoodnessModel;

    fn never(_: ConfigDeserializer) -> Result<Built<dyn GoodnessModel>, PluginError> {
        Err(PluginError::invalid("x", "unused"))
    }

    static A: Plugin = Plugin {
        name: "same",
        description: "first",
        constructor: Constructor::Goodness(never),
    };
    static B: Plugin = Plugin {
        name: "same",
        description: "second",
        constructor: Constructor::Goodness(never),
    };

    #[test]
    fn duplicate_names_are_an_error() {
        let err = Registry::from_plugins([&A, &B])
            .err()
            .expect("duplicate accepted");
        assert_eq!(
            err.to_string(),
            "two goodness plugins are registered under the name `same`; rename one of them"
        );
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let reg = Registry::from_plugins([&A]).unwrap();
        let err = reg.get(PluginKind::Goodness, "nope").err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown goodness `nope`; known goodness plugins: `same`"
        );
    }
}
