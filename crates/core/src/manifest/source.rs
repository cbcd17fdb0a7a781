//! The one manifest loader, for every kind of manifest (experiments,
//! reward-model training, …): read the file, apply `--set` overrides, parse
//! keeping source spans, deserialize with errors located at file:line:column
//! with a fix, build plugins from their tables, and resolve paths against the
//! manifest's directory.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IntoDeserializer};

use super::error::{fix_for, line_col, snippet, ManifestError};
use super::overrides::apply_overrides;
use super::paths::{InputPath, OutputPath, PathBase};
use crate::build::PluginObject;
use crate::registry::{ConfigDeserializer, PluginError, Registry};

/// A plugin chosen in a manifest: its name, resolved config and the object.
pub struct Slot<T: ?Sized> {
    pub plugin: String,
    pub config: toml::Value,
    pub value: Box<T>,
}

impl<T: ?Sized> serde::Serialize for Slot<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(&self.plugin, &self.config)?;
        m.end()
    }
}

/// One step of a key path inside the document.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// `"runs.0.estimator"` → `[Key(runs), Index(0), Key(estimator)]`.
pub(crate) fn segs(dotted: &str) -> Vec<Seg> {
    dotted
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse() {
            Ok(i) => Seg::Index(i),
            Err(_) => Seg::Key(s.to_string()),
        })
        .collect()
}

pub(crate) fn dotted(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A parsed manifest, with what its errors need: the file, the text (after
/// overrides) and its spans, and where its relative paths start.
pub struct ManifestSource {
    file: PathBuf,
    text: String,
    doc: toml_edit::Document<String>,
    base: PathBase,
}

impl ManifestSource {
    /// Reads `path` and applies `--set` overrides.
    pub fn read(path: &Path, overrides: &[String]) -> Result<ManifestSource, ManifestError> {
        let bare = |message: String, fix: &str| ManifestError {
            file: path.to_path_buf(),
            location: None,
            message,
            snippet: String::new(),
            fix: fix.into(),
        };
        // A manifest is a page of settings: a file far larger is a wrong path
        // (a data set, a model), not something to read into memory.
        const MAX_MANIFEST_BYTES: u64 = 16 << 20;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_file() && meta.len() > MAX_MANIFEST_BYTES {
                return Err(bare(
                    format!(
                        "cannot read the manifest: it is {} bytes, more than a manifest's limit of {MAX_MANIFEST_BYTES} (16 MiB)",
                        meta.len()
                    ),
                    "check the path: it should name a TOML manifest such as experiments/quickstart.toml",
                ));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            bare(
                format!("cannot read the manifest: {e}"),
                "check the path (it is relative to the current directory); experiments/ holds the shipped manifests",
            )
        })?;
        let text = apply_overrides(&text, overrides).map_err(|message| {
            bare(
                message,
                "give --set a dotted key path that exists (array entries by index) and a TOML value",
            )
        })?;
        ManifestSource::parse(path, text)
    }

    /// Parses manifest `text`; `path` names it in errors and is where its
    /// relative paths start.
    pub fn parse(path: &Path, text: String) -> Result<ManifestSource, ManifestError> {
        let base = PathBase::of_manifest(path);
        match toml_edit::Document::parse(text.clone()) {
            Ok(doc) => Ok(ManifestSource {
                file: path.to_path_buf(),
                text,
                doc,
                base,
            }),
            Err(e) => {
                let empty = ManifestSource {
                    file: path.to_path_buf(),
                    text,
                    doc: toml_edit::Document::parse(String::new()).expect("empty"),
                    base,
                };
                Err(empty.error(e.span(), e.message().trim(), "fix the TOML syntax here"))
            }
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn base(&self) -> &PathBase {
        &self.base
    }

    /// The whole document as `T`; errors are located and carry a fix.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ManifestError> {
        toml_edit::de::from_document(self.doc.clone()).map_err(|e| self.de_error(&e, &[]))
    }

    /// An error about the value at `key` (dotted, e.g. `"train.lr"`), located
    /// at that key or the nearest enclosing one.
    pub fn invalid(
        &self,
        key: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ManifestError {
        self.error(self.span_of(&segs(key)), message, fix)
    }

    /// Resolves the input path at `key` against the manifest's directory.
    pub fn resolve(&self, key: &str, path: &mut InputPath) -> Result<(), ManifestError> {
        let last = key.rsplit('.').next().unwrap_or(key);
        self.base
            .resolve(last, path)
            .map_err(|e| self.missing_file(&segs(key), e.to_string()))
    }

    /// Resolves an output path against the manifest's directory.
    pub fn resolve_output(&self, path: &mut OutputPath) {
        self.base.resolve_output(path);
    }

    pub(crate) fn error(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ManifestError {
        let (location, snippet) = match span {
            Some(span) => {
                let (line, col) = line_col(&self.text, span.start);
                (
                    Some((line, col)),
                    snippet(&self.text, line, col, span.len()),
                )
            }
            None => (None, String::new()),
        };
        ManifestError {
            file: self.file.clone(),
            location,
            message: message.into(),
            snippet,
            fix: fix.into(),
        }
    }

    /// The item at `path`, with the span of its key (or of the item itself).
    pub(crate) fn lookup(&self, path: &[Seg]) -> Option<(&toml_edit::Item, Option<Range<usize>>)> {
        let mut item = self.doc.as_item();
        let mut span = None;
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    let (key, next) = item.as_table_like()?.get_key_value(k)?;
                    span = key.span().or_else(|| next.span());
                    item = next;
                }
                Seg::Index(i) => {
                    item = item.get(*i)?;
                    span = item.span().or(span);
                }
            }
        }
        Some((item, span))
    }

    /// The span of the key at `path`, or of the nearest enclosing key that exists.
    pub(crate) fn span_of(&self, path: &[Seg]) -> Option<Range<usize>> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.lookup(&path[..n]).and_then(|(_, s)| s))
    }

    /// The span of the value at `path` (falling back to its key's).
    fn value_span_of(&self, path: &[Seg]) -> Option<Range<usize>> {
        self.lookup(path)
            .and_then(|(item, _)| item.span())
            .or_else(|| self.span_of(path))
    }

    pub(crate) fn de_error(&self, e: &toml_edit::de::Error, fallback: &[Seg]) -> ManifestError {
        let span = e.span().or_else(|| self.span_of(fallback));
        let message = e.message().trim().to_string();
        let fix = fix_for(&message);
        self.error(span, message, fix)
    }

    /// A file named at `path` that does not exist, located at its value.
    fn missing_file(&self, path: &[Seg], message: String) -> ManifestError {
        self.error(
            self.value_span_of(path),
            message,
            "check the path; relative paths are resolved against the manifest's directory",
        )
    }

    /// A plugin's error, located in the table at `body_path`.
    fn plugin_error(
        &self,
        e: PluginError,
        body_path: Vec<Seg>,
        kind: &str,
        name: &str,
    ) -> ManifestError {
        let at = |k: &str| {
            let mut p = body_path.clone();
            p.push(Seg::Key(k.to_string()));
            p
        };
        match e {
            PluginError::Config(e) => self.de_error(&e, &body_path),
            PluginError::Invalid { key: k, message } => {
                let p = at(&k);
                self.error(
                    self.span_of(&p),
                    format!("invalid `{k}` for {kind} `{name}`: {message}"),
                    format!("change `{}` to a valid value", dotted(&p)),
                )
            }
            PluginError::Path { key: k, message } => self.missing_file(&at(&k), message),
        }
    }

    /// Builds the plugin at `path` (`slot = "name"`, `[slot.name]` or
    /// `slot = { name = {…} }`), of kind `kind`.
    pub fn slot<T: PluginObject + ?Sized>(
        &self,
        registry: &Registry,
        path: &str,
    ) -> Result<Slot<T>, ManifestError> {
        let path = segs(path);
        let (item, span) = self
            .lookup(&path)
            .ok_or_else(|| self.error(None, format!("missing `{}`", dotted(&path)), "add it"))?;
        if let Some(name) = item.as_str() {
            let empty = toml_edit::Item::Value(toml_edit::Value::InlineTable(Default::default()));
            return self.plugin(registry, name, span, &empty, path);
        }
        let table = item.as_table_like().ok_or_else(|| {
            self.error(
                span.clone(),
                format!("`{}` must name a plugin", dotted(&path)),
                "write `[slot.NAME]` or `slot = \"NAME\"`",
            )
        })?;
        let (name, body) = table.iter().next().ok_or_else(|| {
            self.error(
                span.clone(),
                "this table names no plugin; give exactly one",
                "e.g. `[goodness.bt-exp]`",
            )
        })?;
        let name_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        let mut body_path = path;
        body_path.push(Seg::Key(name.to_string()));
        self.plugin(registry, name, name_span, body, body_path)
    }

    /// Every entry of the table at `path` is a plugin (`[evaluators.NAME]`).
    pub fn slots<T: PluginObject + ?Sized>(
        &self,
        registry: &Registry,
        path: &str,
    ) -> Result<Vec<Slot<T>>, ManifestError> {
        let path = segs(path);
        let Some((item, span)) = self.lookup(&path) else {
            return Ok(Vec::new());
        };
        let table = item.as_table_like().ok_or_else(|| {
            self.error(
                span,
                format!("`{}` must be a table of plugins", dotted(&path)),
                "write `[evaluators.NAME]` tables",
            )
        })?;
        table
            .iter()
            .map(|(name, body)| {
                let name_span = table.get_key_value(name).and_then(|(k, _)| k.span());
                let mut body_path = path.clone();
                body_path.push(Seg::Key(name.to_string()));
                self.plugin(registry, name, name_span, body, body_path)
            })
            .collect()
    }

    fn plugin<T: PluginObject + ?Sized>(
        &self,
        registry: &Registry,
        name: &str,
        name_span: Option<Range<usize>>,
        body: &toml_edit::Item,
        body_path: Vec<Seg>,
    ) -> Result<Slot<T>, ManifestError> {
        let kind = T::KIND;
        let plugin = registry.get(kind, name).map_err(|e| {
            self.error(
                name_span.clone(),
                e.to_string(),
                format!("use one of the known {kind} plugins (`runner list` shows them all)"),
            )
        })?;
        let body = body.clone().into_value().map_err(|_| {
            self.error(
                name_span.clone(),
                format!("`{name}` must be a table of settings"),
                "write `[…]` or `{ … }` after the plugin name",
            )
        })?;
        let ctor = T::pick(plugin.constructor).expect("registry lookups are by kind");
        let input = ConfigDeserializer::new(body.into_deserializer(), self.base.clone());
        match ctor(input) {
            Ok((value, config)) => Ok(Slot {
                plugin: name.to_string(),
                config,
                value,
            }),
            Err(e) => Err(self.plugin_error(e, body_path, kind.as_str(), name)),
        }
    }
}
