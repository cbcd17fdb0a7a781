//! Bounds on manifest settings, checked when a manifest (or a plugin's table)
//! is loaded, never where the value is used: a value outside them is refused
//! with a located error that states the bound, instead of a panic, an
//! allocation failure or a run that cannot finish.
//!
//! The bounds are far above anything an experiment here uses; each exists to
//! catch a typo (`steps = 10000000000000`) or a hostile `--set`, not to
//! limit real work.
//!
//! | bound | value | applies to |
//! |---|---|---|
//! | [`MAX_THREADS`] | 1024 | `threads` |
//! | [`MAX_STEPS`] | 10⁹ | `train.steps`, each run's `steps` |
//! | [`MAX_SAMPLES`] | 65536 | samples per prompt: estimators' `n` / `m` / `candidates`, `eval.samples` |
//! | [`MAX_PROMPTS`] | 2²⁴ | `train.prompts_per_step`, `eval.prompts`, a task's prompt counts |
//! | [`MAX_BATCH`] | 65536 | `eval.batch_prompts`, `sft.batch_size` |
//! | [`MAX_NEW_TOKENS`] | 2²⁰ | a task's `max_new_tokens`, `sft.max_len` |
//! | [`MAX_EPOCHS`] | 10⁶ | `sft.epochs` |

use std::fmt::Display;

/// LibTorch intra-op threads.
pub const MAX_THREADS: i32 = 1024;
/// Optimizer steps of one run.
pub const MAX_STEPS: usize = 1_000_000_000;
/// Completions drawn per prompt (by an estimator or the evaluation).
pub const MAX_SAMPLES: i64 = 65_536;
/// Prompts used per step, evaluated, or taken from a data set.
pub const MAX_PROMPTS: usize = 1 << 24;
/// Prompts (or pairs) in one batch.
pub const MAX_BATCH: usize = 65_536;
/// Tokens generated (or kept) per completion.
pub const MAX_NEW_TOKENS: i64 = 1 << 20;
/// Passes over the fine-tuning data.
pub const MAX_EPOCHS: usize = 1_000_000;

/// `Ok` when `v` is a finite number > 0 (learning rates, temperatures τ, β…).
pub fn finite_positive(v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("must be a finite number > 0, got {v}"))
    }
}

/// `Ok` when `v` is a finite number ≥ 0 (weights, temperatures where 0 means greedy).
pub fn finite_non_negative(v: f64) -> Result<(), String> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(format!("must be a finite number ≥ 0, got {v}"))
    }
}

/// `Ok` when `min ≤ v ≤ max`; the message states both bounds and what the
/// setting counts.
pub fn count_in<T: PartialOrd + Display>(v: T, min: T, max: T, what: &str) -> Result<(), String> {
    if v < min || v > max {
        Err(format!("must be between {min} and {max} ({what}), got {v}"))
    } else {
        Ok(())
    }
}

/// `Ok` when `v ≤ max`: for an upper bound on a setting whose lower bound is
/// checked (with its own message) elsewhere.
pub fn at_most<T: PartialOrd + Display>(v: T, max: T, what: &str) -> Result<(), String> {
    if v > max {
        Err(format!("must be at most {max} ({what}), got {v}"))
    } else {
        Ok(())
    }
}

/// Why `name` is not a plain name (one path component that stays inside the
/// directory it is joined to), or `Ok`: not empty, not `.` or `..`, no `/`,
/// `\` or `:` (path separators here or on Windows), no control characters,
/// at most 200 bytes. A manifest's `name` becomes the directory
/// `results/<name>`.
pub fn plain_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a name but a directory reference"));
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\' | ':')) {
        return Err(format!(
            "`{}` contains `{c}`, a path separator: it would write outside its directory",
            name.escape_debug()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "`{}` contains a control character",
            name.escape_debug()
        ));
    }
    if name.len() > 200 {
        return Err(format!("is {} bytes long; at most 200", name.len()));
    }
    Ok(())
}

/// Why `name` cannot name a run, or `Ok`: not empty, no `/` or `\`, no
/// control characters, at most 200 bytes (the runner turns it into a slug
/// for its directory; anything else, spaces and `=` included, is fine).
pub fn run_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\')) {
        return Err(format!(
            "`{}` contains `{c}`, a path separator",
            name.escape_debug()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "`{}` contains a control character",
            name.escape_debug()
        ));
    }
    if name.len() > 200 {
        return Err(format!("is {} bytes long; at most 200", name.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_say_what_they_allow() {
        assert_eq!(
            finite_positive(f64::NAN).unwrap_err(),
            "must be a finite number > 0, got NaN"
        );
        assert!(finite_positive(f64::INFINITY).is_err());
        assert!(finite_positive(0.0).is_err());
        assert!(finite_positive(1e-300).is_ok());
        assert!(finite_non_negative(0.0).is_ok());
        assert!(finite_non_negative(-0.5).is_err());
        assert!(finite_non_negative(f64::NEG_INFINITY).is_err());
        assert_eq!(
            count_in(0usize, 1, 4, "steps").unwrap_err(),
            "must be between 1 and 4 (steps), got 0"
        );
        assert!(count_in(4usize, 1, 4, "steps").is_ok());
        assert!(count_in(5usize, 1, 4, "steps").is_err());
        assert_eq!(
            at_most(70_000i64, MAX_SAMPLES, "samples per prompt").unwrap_err(),
            "must be at most 65536 (samples per prompt), got 70000"
        );
    }

    #[test]
    fn plain_names_stay_in_their_directory() {
        for ok in [
            "quickstart",
            "n = 8",
            "DPO-sft (beta = 1)",
            "a..b",
            ".hidden",
        ] {
            assert!(plain_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", " ", ".", "..", "../x", "/etc", "a/b", "a\\b", "C:x", "a\nb", "a\0b",
        ] {
            assert!(plain_name(bad).is_err(), "{bad:?}");
        }
        assert!(plain_name(&"x".repeat(201)).is_err());
        for ok in ["BRAIn: n = 4", "softmax pairs (n = 2)", ".."] {
            assert!(run_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "\t", "a/b", "..\\x", "a\u{7f}b"] {
            assert!(run_name(bad).is_err(), "{bad:?}");
        }
    }
}
