//! Experiment manifests (TOML): parsing, `--set` overrides, plugin construction
//! and errors that point at the file, line and column with a fix.
//!
//! Loading runs in two passes over one span-preserving parse of the file:
//! first the fixed shape (top-level keys, `train`, `sampling`, `runs`), then each
//! plugin slot is handed, as its own table, to the constructor its name selects.

use std::cell::RefCell;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tch::Device;

use crate::registry::{Constructor, Ctor, PluginError, Registry};
use crate::{
    Estimator, Evaluator, GoodnessModel, Kind, ModelSpec, RewardSpec, SamplingConfig, TaskSpec,
};

/// A plugin chosen in the manifest: its name, resolved config and the object.
pub struct Slot<T: ?Sized> {
    pub plugin: String,
    pub config: toml::Value,
    pub value: Box<T>,
}

impl<T: ?Sized> Serialize for Slot<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(&self.plugin, &self.config)?;
        m.end()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn resolve(self) -> anyhow::Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => anyhow::bail!(
                "the manifest asks for device = \"cuda\" but LibTorch sees no CUDA device; \
                 use device = \"auto\" or \"cpu\""
            ),
        }
    }
}

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

/// A manifest error with its location and a suggested fix.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based line and column; `None` when the error is about the file itself.
    pub location: Option<(usize, usize)>,
    pub message: String,
    pub snippet: String,
    pub fix: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)?
            }
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        if !self.snippet.is_empty() {
            write!(f, "\n{}", self.snippet)?;
        }
        write!(f, "\nfix: {}", self.fix)
    }
}

impl std::error::Error for ManifestError {}

// ---------------------------------------------------------------------------
// Files named in a manifest
// ---------------------------------------------------------------------------

thread_local! {
    static BASE_DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// A path to an existing file or directory, resolved against the manifest's
/// directory (`~/` is the home directory). Use it in plugin configs so a
/// missing file is reported at its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPath(pub PathBuf);

impl<'de> Deserialize<'de> for InputPath {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        // `~/` is the user's home, as in a shell.
        let raw = match (text.strip_prefix("~/"), std::env::var_os("HOME")) {
            (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => PathBuf::from(&text),
        };
        let resolved = match BASE_DIR.with(|b| b.borrow().clone()) {
            Some(base) if raw.is_relative() => base.join(&raw),
            _ => raw.clone(),
        };
        if !resolved.exists() {
            return Err(de::Error::custom(format!(
                "file not found: `{}` (looked at {})",
                raw.display(),
                resolved.display()
            )));
        }
        Ok(InputPath(resolved))
    }
}

/// A path a run writes (`~/` is the home directory); need not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPath(pub PathBuf);

impl<'de> Deserialize<'de> for OutputPath {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(OutputPath(
            match (text.strip_prefix("~/"), std::env::var_os("HOME")) {
                (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
                _ => PathBuf::from(&text),
            },
        ))
    }
}

impl Serialize for OutputPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string_lossy())
    }
}

impl Serialize for InputPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string_lossy())
    }
}

// ---------------------------------------------------------------------------
// First pass: the fixed shape
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// One step of a key path inside the document.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn key(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    doc: &'a toml_edit::Document<String>,
}

impl Source<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ManifestError {
        let (location, snippet) = match span {
            Some(span) => {
                let (line, col) = line_col(self.text, span.start);
                (Some((line, col)), snippet(self.text, line, col, span.len()))
            }
            None => (None, String::new()),
        };
        ManifestError {
            file: self.file.to_path_buf(),
            location,
            message: message.into(),
            snippet,
            fix: fix.into(),
        }
    }

    /// The item at `path`, with the span of its key (or of the item itself).
    fn lookup(&self, path: &[Seg]) -> Option<(&toml_edit::Item, Option<Range<usize>>)> {
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

    fn span_of(&self, path: &[Seg]) -> Option<Range<usize>> {
        // Fall back to the nearest enclosing key that exists.
        (0..=path.len())
            .rev()
            .find_map(|n| self.lookup(&path[..n]).and_then(|(_, s)| s))
    }

    fn de_error(&self, e: &toml_edit::de::Error, fallback: &[Seg]) -> ManifestError {
        let span = e.span().or_else(|| self.span_of(fallback));
        let message = e.message().trim().to_string();
        let fix = fix_for(&message);
        self.error(span, message, fix)
    }

    /// Second pass: build the plugin at `path`, of kind `kind`.
    fn slot<T: ?Sized>(
        &self,
        registry: &Registry,
        path: &[Seg],
        kind: Kind,
        pick: fn(Constructor) -> Option<Ctor<T>>,
    ) -> Result<Slot<T>, ManifestError> {
        let (item, span) = self
            .lookup(path)
            .ok_or_else(|| self.error(None, format!("missing `{}`", dotted(path)), "add it"))?;
        // `slot = "name"` or `[slot.name]` / `slot = { name = {…} }`.
        if let Some(name) = item.as_str() {
            let empty = toml_edit::Item::Value(toml_edit::Value::InlineTable(Default::default()));
            return self.plugin(registry, kind, name, span, &empty, path.to_vec(), pick);
        }
        let table = item.as_table_like().expect("checked by the first pass");
        let (name, body) = table.iter().next().expect("checked by the first pass");
        let name_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        let mut body_path = path.to_vec();
        body_path.push(key(name));
        self.plugin(registry, kind, name, name_span, body, body_path, pick)
    }

    /// Every entry of the table at `path` is a plugin (`[evaluators.NAME]`).
    fn slots<T: ?Sized>(
        &self,
        registry: &Registry,
        path: &[Seg],
        kind: Kind,
        pick: fn(Constructor) -> Option<Ctor<T>>,
    ) -> Result<Vec<Slot<T>>, ManifestError> {
        let Some((item, _)) = self.lookup(path) else {
            return Ok(Vec::new());
        };
        let table = item.as_table_like().expect("checked by the first pass");
        table
            .iter()
            .map(|(name, body)| {
                let name_span = table.get_key_value(name).and_then(|(k, _)| k.span());
                let mut body_path = path.to_vec();
                body_path.push(key(name));
                self.plugin(registry, kind, name, name_span, body, body_path, pick)
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn plugin<T: ?Sized>(
        &self,
        registry: &Registry,
        kind: Kind,
        name: &str,
        name_span: Option<Range<usize>>,
        body: &toml_edit::Item,
        body_path: Vec<Seg>,
        pick: fn(Constructor) -> Option<Ctor<T>>,
    ) -> Result<Slot<T>, ManifestError> {
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
        let ctor = pick(plugin.constructor).expect("registry lookups are by kind");
        match ctor(body.into_deserializer()) {
            Ok((value, config)) => Ok(Slot {
                plugin: name.to_string(),
                config,
                value,
            }),
            Err(PluginError::Config(e)) => Err(self.de_error(&e, &body_path)),
            Err(PluginError::Invalid { key: k, message }) => {
                let mut p = body_path;
                p.push(key(&k));
                Err(self.error(
                    self.span_of(&p),
                    format!("invalid `{k}` for {kind} `{name}`: {message}"),
                    format!("change `{}` to a valid value", dotted(&p)),
                ))
            }
        }
    }
}

fn dotted(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

fn snippet(text: &str, line: usize, col: usize, len: usize) -> String {
    let src = text.lines().nth(line - 1).unwrap_or("");
    let width = line.to_string().len();
    let marks = "^".repeat(len.clamp(1, src.chars().count().saturating_sub(col - 1).max(1)));
    format!(
        "{:width$} |\n{line} | {src}\n{:width$} | {}{marks}",
        "",
        "",
        " ".repeat(col - 1)
    )
}

/// A suggested fix from the wording of a serde / toml error.
fn fix_for(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "no other keys"));
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        return format!("remove {field} or use one of the expected keys: {expected}");
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("add {rest} to this table");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e)
            .unwrap_or("a listed value");
        return format!("use {expected}");
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| e)
            .unwrap_or("the documented type");
        let expected = match expected {
            "i64" | "i32" | "u64" | "u32" | "usize" => "an integer",
            "f64" | "f32" => "a number",
            "bool" => "true or false",
            other => other,
        };
        return format!("write {expected} here");
    }
    if message.starts_with("file not found") {
        return "check the path; relative paths are resolved against the manifest's directory"
            .into();
    }
    "see the message above; `runner list` shows the plugins and README.md the manifest keys".into()
}

/// Applies `--set a.b.0.c=value` overrides to a manifest's text. Values parse
/// as TOML (`3`, `true`, `"x"`, `[1, 2]`); anything else is taken as a string.
pub fn apply_overrides(text: &str, overrides: &[String]) -> Result<String, String> {
    if overrides.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    for o in overrides {
        let (path, raw) = o
            .split_once('=')
            .ok_or_else(|| format!("--set {o}: expected KEY.PATH=VALUE"))?;
        let value = raw
            .trim()
            .parse::<toml_edit::Value>()
            .unwrap_or_else(|_| toml_edit::Value::from(raw.trim()));
        let segs: Vec<&str> = path.trim().split('.').collect();
        let mut item = doc.as_item_mut();
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            item = if let Ok(idx) = seg.parse::<usize>() {
                let len = match &*item {
                    toml_edit::Item::ArrayOfTables(a) => a.len(),
                    toml_edit::Item::Value(toml_edit::Value::Array(a)) => a.len(),
                    _ => 0,
                };
                item.get_mut(idx).ok_or_else(|| {
                    format!(
                        "--set {o}: `{}` has {len} entries, so there is no entry {idx}",
                        segs[..i].join(".")
                    )
                })?
            } else {
                let table = item.as_table_like_mut().ok_or_else(|| {
                    format!("--set {o}: `{}` is not a table", segs[..i].join("."))
                })?;
                if table.get(seg).is_none() {
                    // A placeholder the value below replaces (Item::None would
                    // read as absent).
                    let fresh = if last {
                        toml_edit::value(false)
                    } else {
                        toml_edit::table()
                    };
                    table.insert(seg, fresh);
                }
                table.get_mut(seg).expect("just inserted")
            };
        }
        *item = toml_edit::Item::Value(value);
    }
    Ok(doc.to_string())
}

impl Manifest {
    /// Reads, overrides and validates a manifest; every plugin is constructed.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_path_buf(),
            location: None,
            message: format!("cannot read the manifest: {e}"),
            snippet: String::new(),
            fix: "check the path (it is relative to the current directory); experiments/ holds the shipped manifests".into(),
        })?;
        let text = apply_overrides(&text, overrides).map_err(|message| ManifestError {
            file: path.to_path_buf(),
            location: None,
            message,
            snippet: String::new(),
            fix:
                "give --set a dotted key path that exists (array entries by index) and a TOML value"
                    .into(),
        })?;
        Self::from_str(path, &text)
    }

    /// Parses manifest `text`; `path` is used for messages and relative paths.
    pub fn from_str(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let registry = Registry::global();
        let doc = match toml_edit::Document::parse(text.to_string()) {
            Ok(d) => d,
            Err(e) => {
                let src = Source {
                    file: path,
                    text,
                    doc: &toml_edit::Document::parse(String::new()).expect("empty"),
                };
                return Err(src.error(e.span(), e.message().trim(), "fix the TOML syntax here"));
            }
        };
        let src = Source {
            file: path,
            text,
            doc: &doc,
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        BASE_DIR.with(|b| *b.borrow_mut() = Some(base));
        let result = Self::build(&src, registry, path);
        BASE_DIR.with(|b| *b.borrow_mut() = None);
        result
    }

    fn build(src: &Source, registry: &Registry, path: &Path) -> Result<Manifest, ManifestError> {
        let shape: Shape =
            toml_edit::de::from_document(src.doc.clone()).map_err(|e| src.de_error(&e, &[]))?;
        let run_sampling = shape.runs.iter().enumerate().filter_map(|(i, r)| {
            let path = vec![key("runs"), Seg::Index(i), key("sampling")];
            r.sampling.as_ref().map(|c| (path, c))
        });
        for (path, config) in
            std::iter::once((vec![key("sampling")], &shape.sampling)).chain(run_sampling)
        {
            if let Err((k, message)) = config.validate() {
                let mut p = path.clone();
                p.push(key(k));
                return Err(src.error(
                    src.span_of(&p),
                    format!("invalid `{}`: {message}", dotted(&p)),
                    format!("change `{}`", dotted(&p)),
                ));
            }
        }
        for (k, bad) in [
            ("steps", shape.train.steps == 0),
            ("lr", shape.train.lr.is_nan() || shape.train.lr <= 0.0),
        ] {
            if bad {
                let p = [key("train"), key(k)];
                return Err(src.error(
                    src.span_of(&p),
                    format!("`train.{k}` must be > 0"),
                    format!("set `train.{k}` to a positive value"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in shape.runs.iter().enumerate() {
            if !seen.insert(r.name.as_str()) {
                let p = [key("runs"), Seg::Index(i), key("name")];
                return Err(src.error(
                    src.span_of(&p),
                    format!("two runs are named `{}`", r.name),
                    "give each run a unique name",
                ));
            }
        }
        if shape.runs.is_empty() {
            return Err(src.error(
                src.span_of(&[key("runs")]),
                "`runs` is empty",
                "add at least one `[[runs]]` with an estimator",
            ));
        }

        let task = src.slot(registry, &[key("task")], Kind::Task, |c| match c {
            Constructor::Task(f) => Some(f),
            _ => None,
        })?;
        let model = src.slot(registry, &[key("model")], Kind::Model, |c| match c {
            Constructor::Model(f) => Some(f),
            _ => None,
        })?;
        let reward = src.slot(registry, &[key("reward")], Kind::Reward, |c| match c {
            Constructor::Reward(f) => Some(f),
            _ => None,
        })?;
        let goodness = src.slot(registry, &[key("goodness")], Kind::Goodness, |c| match c {
            Constructor::Goodness(f) => Some(f),
            _ => None,
        })?;
        let evaluators = src.slots(
            registry,
            &[key("evaluators")],
            Kind::Evaluator,
            |c| match c {
                Constructor::Evaluator(f) => Some(f),
                _ => None,
            },
        )?;
        let mut runs = Vec::new();
        for (i, r) in shape.runs.iter().enumerate() {
            let estimator = src.slot(
                registry,
                &[key("runs"), Seg::Index(i), key("estimator")],
                Kind::Estimator,
                |c| match c {
                    Constructor::Estimator(f) => Some(f),
                    _ => None,
                },
            )?;
            runs.push(Run {
                name: r.name.clone(),
                estimator,
                steps: r.steps.unwrap_or(shape.train.steps),
                lr: r.lr.unwrap_or(shape.train.lr),
                sampling: r.sampling.clone().unwrap_or_else(|| shape.sampling.clone()),
            });
        }
        Ok(Manifest {
            path: path.to_path_buf(),
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
