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

use crate::{Estimator, Evaluator, GoodnessModel, ModelSpec, RewardSpec, TaskSpec};

/// The deserializer a constructor reads its table from; errors carry spans.
pub type ConfigDeserializer = toml_edit::de::ValueDeserializer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Task,
    Model,
    Reward,
    Goodness,
    Estimator,
    Evaluator,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Task,
        Kind::Model,
        Kind::Reward,
        Kind::Goodness,
        Kind::Estimator,
        Kind::Evaluator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Model => "model",
            Kind::Reward => "reward",
            Kind::Goodness => "goodness",
            Kind::Estimator => "estimator",
            Kind::Evaluator => "evaluator",
        }
    }
}

impl fmt::Display for Kind {
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
}

impl Constructor {
    pub fn kind(&self) -> Kind {
        match self {
            Constructor::Task(_) => Kind::Task,
            Constructor::Model(_) => Kind::Model,
            Constructor::Reward(_) => Kind::Reward,
            Constructor::Goodness(_) => Kind::Goodness,
            Constructor::Estimator(_) => Kind::Estimator,
            Constructor::Evaluator(_) => Kind::Evaluator,
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
    let config: C = serde::Deserialize::deserialize(de)?;
    let object = make(&config)?;
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
    plugins: BTreeMap<(Kind, &'static str), &'static Plugin>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("two {kind} plugins are registered under the name `{name}`; rename one of them")]
    Duplicate { kind: Kind, name: String },
    #[error("unknown {kind} `{name}`; known {kind} plugins: {known}")]
    Unknown {
        kind: Kind,
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

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &'static Plugin> + '_ {
        self.plugins
            .iter()
            .filter(move |((k, _), _)| *k == kind)
            .map(|(_, p)| *p)
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<&'static Plugin, RegistryError> {
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
        for kind in Kind::ALL {
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
        let err = reg.get(Kind::Goodness, "nope").err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown goodness `nope`; known goodness plugins: `same`"
        );
    }
}
