//! Property tests of the manifest loader (fixed shape, overrides, located
//! errors): on random TOML-ish text, on mutations of the shipped manifests
//! in experiments/, and through random `--set` overrides, loading returns
//! `Ok` or a located `Err`, never panics.
//!
//! No plugin is linked into this binary, so every load ends in an error at
//! the latest at the first plugin slot; what is fuzzed here is everything
//! before it (parsing, overrides, the shape, its bounds, error rendering).
//! crates/data/tests/fuzz_manifest.rs links the real plugins and fuzzes
//! their tables too.
//!
//! Case counts: proptest's default of 256 per property in CI; for a longer
//! local run set `PROPTEST_CASES` (proptest reads it itself), e.g.
//! `PROPTEST_CASES=20000 cargo test -p align-core --test fuzz_manifest`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use align_core::manifest::{apply_overrides, Manifest, ManifestError};
use proptest::prelude::*;

/// Proptest's default config (256 cases, `PROPTEST_CASES` honoured),
/// without regression files written into the source tree.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every shipped manifest: `(file name, text)`.
fn shipped() -> &'static [(String, String)] {
    static ALL: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ALL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let mut all: Vec<(String, String)> = std::fs::read_dir(&dir)
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
        assert!(all.len() >= 10, "experiments/ has {} manifests", all.len());
        all
    })
}

/// Values that have broken loaders: non-finite and extreme numbers, integers
/// at and past every width, path-like and odd strings, other types.
const HOSTILE: &[&str] = &[
    "nan",
    "+nan",
    "-nan",
    "inf",
    "+inf",
    "-inf",
    "0",
    "-0",
    "-1",
    "0.0",
    "-0.0",
    "1e308",
    "-1e308",
    "5e-324",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "99999999999999999999999",
    "65537",
    "1000000001",
    "1048577",
    "16777217",
    "0x7fffffffffffffff",
    "0o777",
    "0b1",
    "1_000_000_000_000",
    "\"\"",
    "\" \"",
    "\".\"",
    "\"..\"",
    "\"../../etc\"",
    "\"/etc/passwd\"",
    "\"a/b\"",
    "\"C:\\\\x\"",
    "\"\\u0000\"",
    "\"\\n\"",
    "\"é🦀\"",
    "\"nan\"",
    "true",
    "false",
    "[]",
    "[nan, inf]",
    "[1, 1]",
    "[[]]",
    "{}",
    "{ a = 1 }",
    "{ brain = { n = 0 } }",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "'''multi\nline'''",
    "\"\"\"\n\"\"\"",
];

/// A TOML value: a hostile one, a random number (any f64, NaN and ±∞
/// included, written as TOML writes them), a random integer or string.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(HOSTILE).prop_map(str::to_string),
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
        1 => any::<u64>().prop_map(|i| i.to_string()),
        1 => ".{0,16}".prop_map(|s| toml_edit::Value::from(s).to_string()),
        1 => "[ -~]{0,8}",
    ]
}

/// One change to a manifest's text; indices are taken modulo its length.
#[derive(Debug, Clone)]
enum Mutation {
    /// `key = …` on that line gets this value (lines without `=` are left).
    Value(usize, String),
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Random text inserted as a line.
    Insert(usize, String),
    /// The text cut at this byte (rounded down to a character boundary).
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<usize>();
    prop_oneof![
        6 => (line, value()).prop_map(|(l, v)| Mutation::Value(l, v)),
        2 => line.prop_map(Mutation::Delete),
        1 => line.prop_map(Mutation::Duplicate),
        1 => (line, line).prop_map(|(a, b)| Mutation::Swap(a, b)),
        1 => (line, toml_line()).prop_map(|(l, t)| Mutation::Insert(l, t)),
        1 => line.prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match m {
        Mutation::Value(l, v) => {
            let line = &mut lines[l % n];
            if let Some(eq) = line.find('=') {
                *line = format!("{}= {v}", &line[..eq]);
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
        Mutation::Insert(l, t) => lines.insert(l % (n + 1), t.clone()),
        Mutation::Truncate(at) => {
            let mut text = lines.join("\n");
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
            return text;
        }
    }
    lines.join("\n")
}

/// Keys of the fixed shape and of common plugin tables, for TOML-ish lines.
const KEYS: &[&str] = &[
    "name",
    "description",
    "seed",
    "seeds",
    "device",
    "threads",
    "task",
    "model",
    "reward",
    "goodness",
    "evaluators",
    "eval",
    "sft",
    "stages",
    "train",
    "sampling",
    "runs",
    "steps",
    "lr",
    "temperature",
    "top_p",
    "top_k",
    "samples",
    "prompts",
    "batch_prompts",
    "prompts_per_step",
    "eval_every",
    "checkpoint_every",
    "on_nonfinite",
    "epochs",
    "batch_size",
    "max_len",
    "estimator",
    "n",
    "beta",
    "tau",
    "reward_models",
];

/// A line of TOML-ish text: a header, a key/value pair (dotted keys too) or
/// random printable text.
fn toml_line() -> impl Strategy<Value = String> {
    let key = proptest::sample::select(KEYS);
    prop_oneof![
        3 => (key.clone(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => (key.clone(), key.clone(), value()).prop_map(|(a, b, v)| format!("{a}.{b} = {v}")),
        2 => (key.clone(), proptest::option::of(key.clone()))
            .prop_map(|(a, b)| match b {
                Some(b) => format!("[{a}.{b}]"),
                None => format!("[{a}]"),
            }),
        1 => Just("[[runs]]".to_string()),
        1 => "[ -~]{0,24}",
    ]
}

/// Checks what every outcome must satisfy: an error names the file, sits
/// inside the text when located, and renders.
fn check(path: &Path, text: &str, result: Result<Manifest, ManifestError>) {
    let Err(e) = result else { return };
    let shown = e.to_string();
    assert!(
        shown.starts_with(&path.display().to_string()),
        "unnamed file: {shown}"
    );
    assert!(!e.message.is_empty() && !e.fix.is_empty(), "{shown}");
    if let Some((line, col)) = e.location {
        let lines = text.split('\n').count();
        assert!(
            line >= 1 && line <= lines + 1 && col >= 1,
            "{line}:{col} outside the {lines} lines: {shown}"
        );
    }
}

/// A shape refusal: the message is about a value, not an unknown plugin.
fn is_bound_refusal(e: &ManifestError) -> bool {
    e.message.starts_with("invalid `")
}

fn file() -> PathBuf {
    PathBuf::from("experiments/fuzzed.toml")
}

proptest! {
    #![proptest_config(config())]

    /// Random TOML-ish documents: parsed, shaped, refused; never a panic.
    #[test]
    fn random_toml_never_panics(lines in proptest::collection::vec(toml_line(), 0..24)) {
        let text = lines.join("\n");
        let result = Manifest::from_str(&file(), &text);
        prop_assert!(result.is_err(), "no plugins here, so nothing loads");
        check(&file(), &text, result);
    }

    /// Arbitrary strings (not even TOML).
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,256}") {
        let result = Manifest::from_str(&file(), &text);
        check(&file(), &text, result);
    }

    /// The shipped manifests with one to four mutations: each loads or is
    /// refused with a located error, and `Manifest::stages` too.
    #[test]
    fn mutated_experiments_never_panic(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        let all = shipped();
        let (name, text) = &all[which % all.len()];
        let text = mutations.iter().fold(text.clone(), |t, m| apply(&t, m));
        let path = PathBuf::from("experiments").join(name);
        let result = Manifest::from_str(&path, &text);
        check(&path, &text, result);
        // `stages` reads the same file through the same loader.
        let dir = tempfile::tempdir().unwrap();
        let on_disk = dir.path().join(name);
        std::fs::write(&on_disk, &text).unwrap();
        let _ = Manifest::stages(&on_disk, &[]);
    }

    /// A hostile value on a key that the fixed shape bounds is refused by
    /// name, at its line: e.g. `lr = nan` in `[train]`.
    #[test]
    fn hostile_bounded_values_are_refused_at_their_line(
        which in any::<usize>(),
        v in proptest::sample::select(&[
            "nan", "inf", "-inf", "0", "-1", "0.0", "-0.0",
        ][..]),
    ) {
        let all = shipped();
        // Experiment manifests only (rm-*.toml have another shape).
        let exps: Vec<_> = all.iter().filter(|(n, _)| !n.starts_with("rm-")).collect();
        let (name, text) = exps[which % exps.len()];
        let lines: Vec<&str> = text.lines().collect();
        let train = lines.iter().position(|l| l.trim() == "[train]").expect("[train]");
        let lr = train + lines[train..].iter().position(|l| l.starts_with("lr")).expect("lr");
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        edited[lr] = format!("lr = {v}");
        let text = edited.join("\n");
        let path = PathBuf::from("experiments").join(name);
        let e = match Manifest::from_str(&path, &text) {
            Ok(_) => panic!("{name}: `lr = {v}` accepted"),
            Err(e) => e,
        };
        prop_assert!(is_bound_refusal(&e), "{}", e);
        prop_assert!(e.message.starts_with("invalid `train.lr`: must be a finite number > 0"), "{}", e);
        prop_assert_eq!(e.location, Some((lr + 1, 1)));
    }

    /// Random `--set` overrides (existing and new keys, array indices, any
    /// value) on the shipped manifests.
    #[test]
    fn random_overrides_never_panic(
        which in any::<usize>(),
        sets in proptest::collection::vec(
            (
                proptest::collection::vec(
                    prop_oneof![
                        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
                        1 => (0usize..4).prop_map(|i| i.to_string()),
                        1 => "[a-z.]{0,6}",
                    ],
                    1..4,
                ),
                value(),
            ),
            1..4,
        ),
    ) {
        let all = shipped();
        let (name, text) = &all[which % all.len()];
        let sets: Vec<String> = sets
            .iter()
            .map(|(path, v)| format!("{}={v}", path.join(".")))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let result = Manifest::load(&path, &sets);
        let shown = apply_overrides(text, &sets).unwrap_or_default();
        check(&path, &shown, result);
    }
}
