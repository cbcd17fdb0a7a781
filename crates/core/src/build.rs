//! Building a registered plugin from a settings table made in code (a
//! command line's flags, say), rather than read from a manifest.

use serde::de::IntoDeserializer;
use serde::Serialize;

use crate::manifest::PathBase;
use crate::registry::{ConfigDeserializer, Constructor, Ctor, PluginKind, Registry, RegistryError};
use crate::{Estimator, Evaluator, GoodnessModel, ModelSpec, PluginError, RewardSpec, TaskSpec};

/// A trait object a plugin kind builds: ties the object type to its kind and
/// its constructor variant.
pub trait PluginObject {
    const KIND: PluginKind;
    /// The constructor, if `c` is of this kind.
    fn pick(c: Constructor) -> Option<Ctor<Self>>;
}

macro_rules! plugin_object {
    ($t:ty, $kind:ident) => {
        impl PluginObject for $t {
            const KIND: PluginKind = PluginKind::$kind;
            fn pick(c: Constructor) -> Option<Ctor<Self>> {
                match c {
                    Constructor::$kind(f) => Some(f),
                    _ => None,
                }
            }
        }
    };
}

plugin_object!(dyn TaskSpec, Task);
plugin_object!(dyn ModelSpec, Model);
plugin_object!(dyn RewardSpec, Reward);
plugin_object!(dyn GoodnessModel, Goodness);
plugin_object!(dyn Estimator, Estimator);
plugin_object!(dyn Evaluator, Evaluator);
plugin_object!(dyn crate::SamplerBackend, Sampler);

/// Why [`build_plugin`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No plugin of that kind has that name (the error lists the known ones).
    #[error(transparent)]
    Unknown(#[from] RegistryError),
    /// The plugin refused its settings.
    #[error("{kind} `{name}`: {error}")]
    Config {
        kind: PluginKind,
        name: String,
        error: PluginError,
    },
}

/// Builds the registered plugin `name` of `T`'s kind from `settings` (a
/// table), exactly as a manifest's `[kind.name]` table would build it, e.g.
/// `build_plugin::<dyn GoodnessModel>("bt-exp", table)`.
pub fn build_plugin<T: PluginObject + ?Sized>(
    name: &str,
    settings: toml::Value,
) -> Result<Box<T>, BuildError> {
    build_plugin_in(Registry::global(), name, settings)
}

/// [`build_plugin`] from the plugins of `registry`.
pub fn build_plugin_in<T: PluginObject + ?Sized>(
    registry: &Registry,
    name: &str,
    settings: toml::Value,
) -> Result<Box<T>, BuildError> {
    // Paths given in code are relative to the working directory.
    build_plugin_at(registry, name, settings, &PathBase::default()).map(|(object, _)| object)
}

/// Builds a plugin named inside another plugin's settings (a judge's reward
/// model, say): its paths are relative to `base`, the manifest's directory.
/// Returns the object and its resolved settings.
pub fn build_plugin_at<T: PluginObject + ?Sized>(
    registry: &Registry,
    name: &str,
    settings: toml::Value,
    base: &PathBase,
) -> Result<(Box<T>, toml::Value), BuildError> {
    let plugin = registry.get(T::KIND, name)?;
    let ctor = T::pick(plugin.constructor).expect("registry lookups are by kind");
    let config_error = |error| BuildError::Config {
        kind: T::KIND,
        name: name.to_string(),
        error,
    };
    let value = settings
        .serialize(toml_edit::ser::ValueSerializer::new())
        .map_err(|e| {
            config_error(PluginError::invalid(
                "(settings)",
                format!("not representable as TOML: {e}"),
            ))
        })?;
    let input = ConfigDeserializer::new(value.into_deserializer(), base.clone());
    ctor(input).map_err(config_error)
}

/// A plugin slot's value, `"NAME"` or `{ NAME = { … } }`, as (name, settings).
pub fn slot_parts(value: &toml::Value) -> Option<(String, toml::Value)> {
    match value {
        toml::Value::String(name) => Some((name.clone(), toml::Value::Table(toml::Table::new()))),
        toml::Value::Table(t) if t.len() == 1 => {
            let (name, settings) = t.iter().next().expect("one entry");
            Some((name.clone(), settings.clone()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{build_from_config, Built, Plugin};
    use tch::Tensor;

    #[derive(serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Scale {
        by: f64,
    }

    struct Scaled(f64);

    impl GoodnessModel for Scaled {
        fn log_goodness(&self, reward: &Tensor, _: Option<&Tensor>) -> anyhow::Result<Tensor> {
            Ok(reward * self.0)
        }
    }

    fn scaled(de: ConfigDeserializer) -> Result<Built<dyn GoodnessModel>, PluginError> {
        build_from_config(de, |c: &Scale| {
            if c.by <= 0.0 {
                return Err(PluginError::invalid("by", "must be > 0"));
            }
            Ok(Box::new(Scaled(c.by)) as Box<dyn GoodnessModel>)
        })
    }

    static SCALED: Plugin = Plugin {
        name: "scaled",
        description: "test only",
        constructor: Constructor::Goodness(scaled),
    };

    fn table(by: toml::Value) -> toml::Value {
        toml::Value::Table(toml::Table::from_iter([("by".to_string(), by)]))
    }

    #[test]
    fn builds_from_a_table_and_reports_refusals() {
        let reg = Registry::from_plugins([&SCALED]).unwrap();
        let build = |name: &str, by: toml::Value| {
            build_plugin_in::<dyn GoodnessModel>(&reg, name, table(by))
        };
        let g = build("scaled", 2.0.into()).unwrap();
        let r = g
            .log_goodness(&Tensor::from_slice(&[1.5f64]), None)
            .unwrap();
        assert_eq!(r.double_value(&[0]), 3.0);
        assert!(!g.needs_reference());

        let err = build("scaled", (-1.0).into()).err().unwrap();
        assert_eq!(err.to_string(), "goodness `scaled`: `by`: must be > 0");
        let err = build("scaled", "x".into()).err().unwrap();
        assert!(matches!(err, BuildError::Config { .. }), "{err}");
        let err = build("no-such-plugin", 1.0.into()).err().unwrap();
        assert!(
            err.to_string()
                == "unknown goodness `no-such-plugin`; known goodness plugins: `scaled`",
            "{err}"
        );
    }
}
