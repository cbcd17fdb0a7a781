//! The fixed shape of a manifest refuses bad numbers, extreme settings and
//! names that would write outside `results/` at load time, with an error at
//! file:line:column that names the key, the value and the fix.
//!
//! No plugin is linked into this test binary, so a manifest whose shape is
//! valid stops at its first plugin (`unknown task`): that is how these tests
//! tell "the shape was accepted" from "the shape was refused".

use std::path::Path;

use align_core::manifest::{Manifest, ManifestError};

/// A manifest with a valid shape; `{lr}` etc. are replaced by the tests.
const BASE: &str = r#"name = "limits"
seed = 1
threads = 1

[task.enumerable]
prompts = 2
vocab = 3
length = 2

[model.tabular]

[reward.random-table]

[goodness.bt-exp]

[eval]
samples = 2
temperature = 1.0
batch_prompts = 4

[sft]
lr = 1e-3
epochs = 1

[train]
steps = 4
lr = 0.1
prompts_per_step = 2

[sampling]
temperature = 1.0
top_p = 0.9

[[runs]]
name = "a"
steps = 2
lr = 0.05
[runs.estimator.brain]
"#;

fn load(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::from_str(Path::new("m.toml"), text)
}

/// `BASE` with the line starting `line_start` (the first after `after`)
/// replaced by `with`.
fn edited(after: &str, line_start: &str, with: &str) -> String {
    let from = BASE.find(after).expect("section") + after.len();
    let at = from + BASE[from..].find(line_start).expect("line");
    let end = at + BASE[at..].find('\n').expect("newline");
    format!("{}{with}{}", &BASE[..at], &BASE[end..])
}

/// The 1-based line of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle")]
        .matches('\n')
        .count()
        + 1
}

fn refused(text: &str) -> ManifestError {
    match load(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// The shape is fine: the load stops at the first plugin, which this binary lacks.
fn shape_accepted(text: &str) {
    let e = refused(text);
    assert!(
        e.message.starts_with("unknown task `enumerable`"),
        "the shape was refused: {e}"
    );
}

/// Refused at `needle`'s line, column 1 (the key), with `message` and a fix
/// containing `fix`.
fn refused_at(text: &str, needle: &str, message: &str, fix: &str) -> ManifestError {
    let e = refused(text);
    let line = line_of(text, needle);
    let shown = e.to_string();
    assert_eq!(e.location, Some((line, 1)), "{shown}");
    assert_eq!(e.message, message, "{shown}");
    assert!(e.fix.contains(fix), "fix `{}` lacks `{fix}`", e.fix);
    assert!(
        shown.starts_with(&format!("m.toml:{line}:1: {message}")),
        "{shown}"
    );
    let first = needle.lines().next().unwrap_or_default();
    assert!(shown.contains(first), "the snippet shows the line: {shown}");
    e
}

#[test]
fn the_base_manifest_has_a_valid_shape() {
    shape_accepted(BASE);
}

#[test]
fn non_finite_or_non_positive_learning_rates_are_refused() {
    for (v, shown) in [
        ("nan", "NaN"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("0.0", "0"),
        ("-1e-3", "-0.001"),
    ] {
        let lr = format!("lr = {v}");
        let text = edited("[train]", "lr =", &lr);
        let e = refused_at(
            &text,
            &format!("{lr}\nprompts_per_step"),
            &format!("invalid `train.lr`: must be a finite number > 0, got {shown}"),
            "finite learning rate > 0",
        );
        assert_eq!(
            e.fix,
            "set `train.lr` to a finite learning rate > 0, e.g. `1e-4`"
        );
        let text = edited("[[runs]]", "lr =", &lr);
        refused_at(
            &text,
            &format!("{lr}\n[runs.estimator"),
            &format!("invalid `runs.0.lr`: must be a finite number > 0, got {shown}"),
            "finite learning rate > 0",
        );
        let text = edited("[sft]", "lr =", &lr);
        refused_at(
            &text,
            &format!("{lr}\nepochs"),
            &format!("invalid `sft.lr`: must be a finite number > 0, got {shown}"),
            "finite learning rate > 0",
        );
    }
    // Tiny and large finite rates are the user's call.
    shape_accepted(&edited("[train]", "lr =", "lr = 1e-12"));
    shape_accepted(&edited("[[runs]]", "lr =", "lr = 10.0"));
}

#[test]
fn non_finite_temperatures_and_top_p_are_refused() {
    for v in ["nan", "inf", "-0.5"] {
        let t = format!("temperature = {v}");
        let text = edited("[sampling]", "temperature", &t);
        let e = refused_at(
            &text,
            &format!("{t}\ntop_p"),
            &format!(
                "invalid `sampling.temperature`: must be a finite number ≥ 0 (0: greedy), got {}",
                v.parse::<f64>().unwrap()
            ),
            "sampling.temperature",
        );
        assert_eq!(e.fix, "change `sampling.temperature`");
        let text = edited("[eval]", "temperature", &t);
        refused_at(
            &text,
            &format!("{t}\nbatch_prompts"),
            &format!(
                "invalid `eval.temperature`: must be a finite number ≥ 0, got {}",
                v.parse::<f64>().unwrap()
            ),
            "eval.temperature",
        );
    }
    for v in ["nan", "inf", "0.0", "1.5"] {
        let p = format!("top_p = {v}");
        let text = edited("[sampling]", "top_p", &p);
        let e = refused(&text);
        assert_eq!(e.location, Some((line_of(&text, &p), 1)), "{e}");
        assert!(e
            .message
            .starts_with("invalid `sampling.top_p`: must be in (0, 1]"));
    }
    // A run's own sampling, inline, is located at its key.
    let text = edited(
        "[[runs]]",
        "lr =",
        "lr = 0.05\nsampling = { temperature = nan }",
    );
    let e = refused(&text);
    let line = line_of(&text, "sampling = { temperature = nan }");
    assert_eq!(e.location, Some((line, 14)), "{e}");
    assert!(
        e.message
            .starts_with("invalid `runs.0.sampling.temperature`: must be a finite number"),
        "{e}"
    );
    // Greedy decoding stays allowed.
    shape_accepted(&edited("[sampling]", "temperature", "temperature = 0.0"));
}

#[test]
fn thread_counts_outside_1_to_1024_are_refused() {
    for (v, shown) in [("0", "0"), ("-4", "-4"), ("1025", "1025")] {
        let t = format!("threads = {v}");
        let text = edited("seed = 1\n", "threads", &t);
        refused_at(
            &text,
            &t,
            &format!(
                "invalid `threads`: must be between 1 and 1024 (LibTorch intra-op threads), got {shown}"
            ),
            "number of cores",
        );
    }
    shape_accepted(&edited("seed = 1\n", "threads", "threads = 1024"));
    // Beyond i32, the type itself refuses it, located at the value.
    let text = edited("seed = 1\n", "threads", "threads = 99999999999");
    let e = refused(&text);
    assert_eq!(e.location.map(|l| l.0), Some(3), "{e}");
}

#[test]
fn step_counts_are_bounded_and_never_zero() {
    for (v, shown) in [("0", "0"), ("1000000001", "1000000001")] {
        let s = format!("steps = {v}");
        let text = edited("[train]", "steps", &s);
        refused_at(
            &text,
            &s,
            &format!(
                "invalid `train.steps`: must be between 1 and 1000000000 (optimizer steps), got {shown}"
            ),
            "between 1 and 1000000000",
        );
        let text = edited("[[runs]]", "steps", &s);
        refused_at(
            &text,
            &format!("{s}\nlr = 0.05"),
            &format!(
                "invalid `runs.0.steps`: must be between 1 and 1000000000 (optimizer steps), got {shown}"
            ),
            "between 1 and 1000000000",
        );
    }
    shape_accepted(&edited("[train]", "steps", "steps = 1000000000"));
    // Negative: not a count at all, refused by the type at the value.
    let text = edited("[train]", "steps", "steps = -1");
    let e = refused(&text);
    assert_eq!(e.location, Some((line_of(&text, "steps = -1"), 9)), "{e}");
    assert!(e.message.contains("-1"), "{e}");
}

#[test]
fn prompts_per_step_and_sft_counts_are_bounded() {
    let text = edited("[train]", "prompts_per_step", "prompts_per_step = 0");
    refused_at(
        &text,
        "prompts_per_step = 0",
        "invalid `train.prompts_per_step`: must be between 1 and 16777216 (prompts per step), got 0",
        "leave it out",
    );
    let text = edited("[train]", "prompts_per_step", "prompts_per_step = 16777217");
    refused_at(
        &text,
        "prompts_per_step = 16777217",
        "invalid `train.prompts_per_step`: must be between 1 and 16777216 (prompts per step), got 16777217",
        "leave it out",
    );
    let text = edited("[sft]", "epochs", "epochs = 0");
    refused_at(
        &text,
        "epochs = 0",
        "invalid `sft.epochs`: must be between 1 and 1000000 (passes over the gold outputs), got 0",
        "at least 1",
    );
    let text = edited("[sft]", "epochs", "epochs = 1\nbatch_size = 1000000");
    refused_at(
        &text,
        "batch_size = 1000000",
        "invalid `sft.batch_size`: must be between 1 and 65536 (pairs per step), got 1000000",
        "at least 1",
    );
    let text = edited("[sft]", "epochs", "epochs = 1\nmax_len = 1048577");
    refused_at(
        &text,
        "max_len = 1048577",
        "invalid `sft.max_len`: must be between 1 and 1048576 (tokens per gold output), got 1048577",
        "task's completion cap",
    );
    let text = edited("[sft]", "epochs", "epochs = 1\nmax_len = 0");
    refused_at(
        &text,
        "max_len = 0",
        "invalid `sft.max_len`: must be between 1 and 1048576 (tokens per gold output), got 0",
        "task's completion cap",
    );
}

#[test]
fn eval_counts_are_bounded_and_never_zero() {
    for (line, message) in [
        (
            "samples = 0",
            "invalid `eval.samples`: must be between 1 and 65536 (completions per held-out prompt), got 0",
        ),
        (
            "samples = 65537",
            "invalid `eval.samples`: must be between 1 and 65536 (completions per held-out prompt), got 65537",
        ),
        (
            "samples = -3",
            "invalid `eval.samples`: must be between 1 and 65536 (completions per held-out prompt), got -3",
        ),
    ] {
        let text = edited("[eval]", "samples", line);
        refused_at(&text, line, message, "eval.samples");
    }
    for (line, message) in [
        (
            "batch_prompts = 0",
            "invalid `eval.batch_prompts`: must be between 1 and 65536 (prompts per sampling batch), got 0",
        ),
        (
            "batch_prompts = 9007199254740993",
            "invalid `eval.batch_prompts`: must be between 1 and 65536 (prompts per sampling batch), got 9007199254740993",
        ),
    ] {
        let text = edited("[eval]", "batch_prompts", line);
        refused_at(&text, line, message, "eval.batch_prompts");
    }
    for (v, shown) in [("0", "0"), ("100000000", "100000000")] {
        let line = format!("batch_prompts = 4\nprompts = {v}");
        let text = edited("[eval]", "batch_prompts", &line);
        refused_at(
            &text,
            &format!("prompts = {v}"),
            &format!(
                "invalid `eval.prompts`: must be between 1 and 16777216 (held-out prompts; leave it out for all), got {shown}"
            ),
            "eval.prompts",
        );
    }
}

#[test]
fn the_manifest_name_must_stay_inside_results() {
    for (name, why) in [
        ("", "is empty"),
        ("   ", "is empty"),
        (".", "`.` is not a name but a directory reference"),
        ("..", "`..` is not a name but a directory reference"),
        (
            "../elsewhere",
            "`../elsewhere` contains `/`, a path separator: it would write outside its directory",
        ),
        (
            "/tmp/abs",
            "`/tmp/abs` contains `/`, a path separator: it would write outside its directory",
        ),
        (
            "a\\\\b",
            "`a\\\\b` contains `\\`, a path separator: it would write outside its directory",
        ),
        (
            "C:evil",
            "`C:evil` contains `:`, a path separator: it would write outside its directory",
        ),
        ("tab\\there", "`tab\\there` contains a control character"),
    ] {
        let line = format!("name = \"{name}\"");
        let text = edited("", "name =", &line);
        let e = refused_at(
            &text,
            &line,
            &format!("invalid `name`: {why}"),
            "plain name such as `my-experiment`",
        );
        assert!(e.fix.contains("results/<name>"), "{}", e.fix);
    }
    let long = format!("name = \"{}\"", "x".repeat(201));
    refused_at(
        &edited("", "name =", &long),
        &long,
        "invalid `name`: is 201 bytes long; at most 200",
        "plain name",
    );
    for ok in ["quickstart", "ablation-n", "n = 8 (a..b)"] {
        shape_accepted(&edited("", "name =", &format!("name = \"{ok}\"")));
    }
}

#[test]
fn run_names_have_no_path_separators() {
    for (name, why) in [
        ("", "is empty"),
        ("a/b", "`a/b` contains `/`, a path separator"),
        ("..\\\\up", "`..\\\\up` contains `\\`, a path separator"),
        ("new\\nline", "`new\\nline` contains a control character"),
    ] {
        let line = format!("name = \"{name}\"");
        let text = edited("[[runs]]", "name =", &line);
        refused_at(
            &text,
            &line,
            &format!("invalid `runs.0.name`: {why}"),
            "without `/` or `\\`",
        );
    }
    for ok in [
        "BRAIn: n = 4",
        "softmax pairs (n = 2)",
        "..",
        "DPO-sft (beta = 1)",
    ] {
        shape_accepted(&edited("[[runs]]", "name =", &format!("name = \"{ok}\"")));
    }
}

#[test]
fn overrides_are_checked_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, BASE).unwrap();
    for (set, key) in [
        ("train.lr=nan", "train.lr"),
        ("train.lr=-inf", "train.lr"),
        ("runs.0.lr=inf", "runs.0.lr"),
        ("train.steps=99999999999", "train.steps"),
        ("threads=0", "threads"),
        ("name=../../etc", "name"),
        ("eval.samples=100000000", "eval.samples"),
        ("sampling.temperature=nan", "sampling.temperature"),
    ] {
        let e = match Manifest::load(&path, &[set.to_string()]) {
            Ok(_) => panic!("--set {set} accepted"),
            Err(e) => e,
        };
        assert!(
            e.message.starts_with(&format!("invalid `{key}`: ")),
            "--set {set}: {e}"
        );
        assert!(e.location.is_some(), "--set {set}: {e}");
        assert!(e.to_string().starts_with(&path.display().to_string()));
    }
}

#[test]
fn an_oversized_manifest_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.toml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len((16 << 20) + 1).unwrap(); // sparse: no 16 MiB written
    let e = match Manifest::load(&path, &[]) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert_eq!(e.location, None);
    assert!(
        e.message
            .contains("it is 16777217 bytes, more than a manifest's limit of 16777216 (16 MiB)"),
        "{e}"
    );
}

/// Every shipped experiment manifest passes the shape's bounds (it stops
/// only at its first plugin here), so the bounds break none of them.
#[test]
fn the_shipped_experiments_pass_the_bounds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // rm-*.toml are `train-rm` manifests, another shape.
        if path.extension().is_none_or(|e| e != "toml") || name.starts_with("rm-") {
            continue;
        }
        let e = match Manifest::load(&path, &[]) {
            Ok(_) => panic!("{name}: loaded without plugins?"),
            Err(e) => e,
        };
        assert!(
            e.message.starts_with("unknown task"),
            "{name} is refused by its shape: {e}"
        );
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} experiment manifests found");
}
