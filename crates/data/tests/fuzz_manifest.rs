//! Property tests of whole-manifest loading with every plugin linked (as in
//! the runner): the shipped manifests in experiments/ with values replaced
//! by random numbers, strings, NaN, ±∞ and huge integers, lines deleted,
//! duplicated or swapped, and random `--set` overrides. Each load returns
//! `Ok` or a located `Err`, never panics; a manifest that loads has only
//! finite numbers and counts within the bounds of
//! `align_core::manifest::limits`. crates/core/tests/fuzz_manifest.rs
//! fuzzes the loader without plugins on arbitrary text.
//!
//! Case counts: proptest's default of 256 per property in CI; for a longer
//! local run set `PROPTEST_CASES` (proptest reads it itself), e.g.
//! `PROPTEST_CASES=20000 cargo test -p align-data --test fuzz_manifest`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use align_core::manifest::limits::{MAX_STEPS, MAX_THREADS};
use align_core::manifest::{apply_overrides, Manifest, ManifestError};
use proptest::prelude::*;

// Link every plugin crate so its `inventory` registrations are kept.
use align_evaluators as _;
use align_goodness as _;
use align_models as _;
use align_rewards as _;
use {brain as _, dpo as _, rloo as _, rrhf as _, rso as _, slic as _};

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn experiments() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../experiments")
}

/// The shipped manifests: `(file name, text)`, experiments and `train-rm`.
fn shipped() -> &'static [(String, String)] {
    static ALL: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<(String, String)> = std::fs::read_dir(experiments())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        all.sort();
        all
    })
}

const HOSTILE: &[&str] = &[
    "nan",
    "-nan",
    "inf",
    "-inf",
    "0",
    "-1",
    "1",
    "2",
    "0.0",
    "-0.0",
    "0.5",
    "1e308",
    "-1e308",
    "5e-324",
    "2147483648",
    "4294967298",
    "9223372036854775807",
    "-9223372036854775808",
    "65537",
    "1000000001",
    "1048577",
    "16777217",
    "\"\"",
    "\"..\"",
    "\"../../etc\"",
    "\"/etc/passwd\"",
    "\"a/b\"",
    "\"nan\"",
    "\"\\u0000\"",
    "true",
    "[]",
    "[nan]",
    "{}",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => proptest::sample::select(HOSTILE).prop_map(str::to_string),
        2 => any::<f64>().prop_map(|f| {
            if f.is_nan() {
                "nan".to_string()
            } else if f.is_infinite() {
                if f > 0.0 { "inf" } else { "-inf" }.to_string()
            } else {
                format!("{f:?}")
            }
        }),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        1 => (0i64..100).prop_map(|i| i.to_string()),
        1 => "[ -~]{0,8}".prop_map(|s| toml::Value::String(s).to_string()),
    ]
}

/// Hostile values of the same type as the one they replace: a float gets a
/// non-finite or extreme float, an integer an extreme integer, a string a
/// path-like one. (Type-blind values are mostly refused by the type alone.)
const FLOATS: &[&str] = &[
    "nan", "inf", "-inf", "-0.0", "0.0", "-1.0", "1e308", "5e-324",
];
const INTEGERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2147483648",
    "4294967298",
    "9223372036854775807",
    "65537",
    "1000000001",
    "1048577",
    "16777217",
];
const STRINGS: &[&str] = &[
    "\"\"",
    "\"..\"",
    "\"../../x\"",
    "\"/abs\"",
    "\"a/b\"",
    "\"\\u0007\"",
];

fn same_type(original: &str, pick: usize) -> Option<&'static str> {
    let v = original.trim();
    let list = if v.starts_with('"') {
        STRINGS
    } else if v.parse::<i64>().is_ok() {
        INTEGERS
    } else if v.parse::<f64>().is_ok() {
        FLOATS
    } else {
        return None;
    };
    Some(list[pick % list.len()])
}

#[derive(Debug, Clone)]
enum Mutation {
    Value(usize, String),
    /// A same-type hostile value (see [`same_type`]) on that assignment.
    Typed(usize, usize),
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<usize>();
    prop_oneof![
        4 => (line, value()).prop_map(|(l, v)| Mutation::Value(l, v)),
        6 => (line, any::<usize>()).prop_map(|(l, p)| Mutation::Typed(l, p)),
        2 => line.prop_map(Mutation::Delete),
        1 => line.prop_map(Mutation::Duplicate),
        1 => (line, line).prop_map(|(a, b)| Mutation::Swap(a, b)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len();
    // Lines that assign a value (not comments).
    let assigns: Vec<usize> = (0..n)
        .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains(" = "))
        .collect();
    let assign = |l: usize| assigns.get(l % assigns.len().max(1)).copied();
    match m {
        Mutation::Value(l, v) => {
            if let Some(i) = assign(*l) {
                let eq = lines[i].find(" = ").unwrap();
                lines[i] = format!("{} = {v}", &lines[i][..eq]);
            }
        }
        Mutation::Typed(l, pick) => {
            if let Some(i) = assign(*l) {
                let eq = lines[i].find(" = ").unwrap();
                if let Some(v) = same_type(&lines[i][eq + 3..], *pick) {
                    lines[i] = format!("{} = {v}", &lines[i][..eq]);
                }
            }
        }
        Mutation::Delete(l) => {
            lines.remove(l % n);
        }
        Mutation::Duplicate(l) => {
            let line = lines[l % n].clone();
            lines.insert(l % n, line);
        }
        Mutation::Swap(a, b) => lines.swap(a % n, b % n),
    }
    lines.join("\n")
}

/// Floats in the resolved manifest that are not finite, by dotted key.
fn non_finite(v: &toml::Value, at: &str, out: &mut Vec<String>) {
    match v {
        toml::Value::Float(f) if !f.is_finite() => out.push(at.to_string()),
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                non_finite(x, &format!("{at}.{i}"), out);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t {
                non_finite(x, &format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// What a loaded manifest must satisfy, and what an error must.
fn check(path: &Path, text: &str, result: Result<Manifest, ManifestError>) {
    let m = match result {
        Ok(m) => m,
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with(&path.display().to_string()),
                "unnamed: {shown}"
            );
            if let Some((line, col)) = e.location {
                let lines = text.split('\n').count();
                assert!(line >= 1 && line <= lines + 1 && col >= 1, "{shown}");
            }
            return;
        }
    };
    assert!(m.threads.is_none_or(|t| (1..=MAX_THREADS).contains(&t)));
    assert!(!m.name.is_empty() && !m.name.contains(['/', '\\']) && m.name != "..");
    assert!(m.train.steps >= 1 && m.train.steps <= MAX_STEPS);
    for r in &m.runs {
        assert!(r.steps >= 1 && r.steps <= MAX_STEPS, "{}", r.name);
        assert!(r.lr.is_finite() && r.lr > 0.0, "{}: lr {}", r.name, r.lr);
        assert!(!r.name.contains(['/', '\\']));
        assert!(r.sampling.validate().is_ok());
    }
    // Every number the manifest resolved to is finite.
    let resolved: toml::Value = toml::from_str(&m.resolved_toml()).expect("resolved TOML");
    let mut bad = Vec::new();
    non_finite(&resolved, "", &mut bad);
    assert!(
        bad.is_empty(),
        "non-finite settings accepted: {bad:?}\n{text}"
    );
}

/// A copy of experiments/ in a temporary directory, beside a link to the
/// repository's tests/ (manifests name `../tests/fixtures/…` and each
/// other), so mutated manifests are written outside the working tree.
struct Sandbox(tempfile::TempDir);

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let exp = dir.path().join("experiments");
        std::fs::create_dir(&exp).unwrap();
        for (name, text) in shipped() {
            std::fs::write(exp.join(name), text).unwrap();
        }
        let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests");
        std::os::unix::fs::symlink(tests.canonicalize().unwrap(), dir.path().join("tests"))
            .unwrap();
        Sandbox(dir)
    }

    /// Replaces `experiments/NAME` in the sandbox with `text`.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join("experiments").join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

proptest! {
    #![proptest_config(config())]

    /// The shipped manifests with one to three mutations, loaded from disk
    /// in a sandbox where their relative paths still resolve.
    #[test]
    fn mutated_experiments_load_or_are_refused(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let all = shipped();
        let (name, text) = &all[which % all.len()];
        let text = mutations.iter().fold(text.clone(), |t, m| apply(&t, m));
        let sandbox = Sandbox::new();
        let path = sandbox.write(name, &text);
        if name.starts_with("rm-") {
            let _ = align_rewards::pipeline::RmManifest::load(&path, &[]);
        } else {
            let result = Manifest::load(&path, &[]);
            check(&path, &text, result);
            let _ = Manifest::stages(&path, &[]);
        }
    }

    /// `--set` overrides with hostile values on real keys of the toy
    /// manifests (which need no download, so most of them load).
    #[test]
    fn hostile_overrides_load_or_are_refused(
        which in 0usize..4,
        sets in proptest::collection::vec(((0usize..1000, value()), any::<usize>()), 1..4),
    ) {
        let toy = ["exact.toml", "estimators.toml", "ablation-n.toml", "tiny-sentiment.toml"];
        let path = experiments().join(toy[which]);
        let text = std::fs::read_to_string(&path).unwrap();
        // The keys this manifest sets, as `--set` paths (`runs.N.…` by index).
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let mut keys = Vec::new();
        fn walk(v: &toml::Value, at: String, keys: &mut Vec<(String, String)>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, x) in t {
                        walk(x, if at.is_empty() { k.clone() } else { format!("{at}.{k}") }, keys);
                    }
                }
                toml::Value::Array(a) if a.iter().all(toml::Value::is_table) => {
                    for (i, x) in a.iter().enumerate() {
                        walk(x, format!("{at}.{i}"), keys);
                    }
                }
                _ => keys.push((at, v.to_string())),
            }
        }
        walk(&toml::Value::Table(doc), String::new(), &mut keys);
        let sets: Vec<String> = sets
            .iter()
            .map(|((k, v), pick)| {
                let (key, original) = &keys[k % keys.len()];
                // Half the time a value of the key's own type.
                let v = match (pick % 2, same_type(original, pick / 2)) {
                    (0, Some(typed)) => typed.to_string(),
                    _ => v.clone(),
                };
                format!("{key}={v}")
            })
            .collect();
        let result = Manifest::load(&path, &sets);
        let shown = apply_overrides(&text, &sets).unwrap_or_default();
        check(&path, &shown, result);
    }
}
