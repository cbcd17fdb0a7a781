//! Checks on the sizes a model file declares, made before anything is
//! allocated for them: every dimension of a `config.json` (or of the config
//! rebuilt from GGUF metadata) lies in `1..=` a sane bound, the products the
//! architecture forms from them are computed with checked arithmetic, and the
//! parameter count they imply must fit in the checkpoint that is to fill it
//! (a config that declares more than the weights hold is refused before its
//! zero-initialised parameters are allocated).

use std::path::Path;

use crate::error::{ModelError, Result};

/// Largest `vocab_size` (real vocabularies are below 300k).
pub const MAX_VOCAB: i64 = 1 << 23;
/// Largest hidden size, head dimension or head count times head dimension.
pub const MAX_HIDDEN: i64 = 1 << 17;
/// Largest MLP width.
pub const MAX_INTERMEDIATE: i64 = 1 << 20;
/// Largest layer count.
pub const MAX_LAYERS: i64 = 1 << 12;
/// Largest attention head count.
pub const MAX_HEADS: i64 = 1 << 12;
/// Largest positional capacity (`n_positions`, `max_position_embeddings`).
pub const MAX_POSITIONS: i64 = 1 << 24;
/// Largest BERT `type_vocab_size`.
pub const MAX_TYPE_VOCAB: i64 = 1 << 16;
/// Largest parameter count a config may imply, whatever the checkpoint.
pub const MAX_PARAMS: u64 = 1 << 38;

/// Refuses a file longer than `limit` bytes before it is read (`what`
/// names the kind of file in the message).
pub fn file_size(path: &Path, limit: u64, what: &str) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| ModelError::file(path, e.to_string()))?
        .len();
    if len > limit {
        return Err(ModelError::file(
            path,
            format!("{len} bytes is over the limit of {limit} for {what}"),
        ));
    }
    Ok(())
}

/// A size read from `path`: in `1..=max`, or an error naming the key, the
/// value and the bound.
pub fn dim(path: &Path, key: &str, value: i64, max: i64) -> Result<i64> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ModelError::file(
            path,
            format!("`{key}` is {value}; it must be between 1 and {max}"),
        ))
    }
}

/// `value` divides into `by` whole parts, or an error naming both keys.
pub fn divides(path: &Path, what: &str, value: i64, by_what: &str, by: i64) -> Result<()> {
    if by > 0 && value % by == 0 {
        Ok(())
    } else {
        Err(ModelError::file(
            path,
            format!("`{what}` ({value}) is not a multiple of `{by_what}` ({by})"),
        ))
    }
}

/// A finite float `>= min` (or `> min` when `strict`).
pub fn finite(path: &Path, key: &str, value: f64, min: f64, strict: bool) -> Result<f64> {
    let ok = value.is_finite() && if strict { value > min } else { value >= min };
    if ok {
        Ok(value)
    } else {
        let rel = if strict { ">" } else { ">=" };
        Err(ModelError::file(
            path,
            format!("`{key}` is {value}; it must be a finite number {rel} {min}"),
        ))
    }
}

/// A parameter count summed with checked arithmetic: the products of sizes
/// that were each checked by [`dim`].
#[derive(Debug, Clone, Copy)]
pub struct ParamCount(Option<u64>);

impl Default for ParamCount {
    fn default() -> Self {
        ParamCount(Some(0))
    }
}

impl ParamCount {
    /// Adds the element count of a parameter of `shape`.
    pub fn add(&mut self, shape: &[i64]) {
        let n = shape.iter().try_fold(1u64, |n, &d| {
            u64::try_from(d).ok().and_then(|d| n.checked_mul(d))
        });
        self.0 = self.0.zip(n).and_then(|(a, b)| a.checked_add(b));
    }

    /// Adds `times` copies of `other` (e.g. one layer's count × layers).
    pub fn add_times(&mut self, other: ParamCount, times: i64) {
        let more = other
            .0
            .zip(u64::try_from(times).ok())
            .and_then(|(a, b)| a.checked_mul(b));
        self.0 = self.0.zip(more).and_then(|(a, b)| a.checked_add(b));
    }

    /// The total, or an error when it overflows or passes [`MAX_PARAMS`].
    pub fn total(self, path: &Path) -> Result<u64> {
        match self.0 {
            Some(n) if n <= MAX_PARAMS => Ok(n),
            _ => Err(ModelError::file(
                path,
                format!(
                    "the sizes in this config imply more than {MAX_PARAMS} parameters; \
                     is it corrupt?"
                ),
            )),
        }
    }
}

/// How many float values a checkpoint can fill a model with.
#[derive(Debug, Clone)]
pub struct Budget {
    /// At most this many values.
    pub values: u64,
    /// The file(s), for messages.
    pub source: String,
}

impl Budget {
    /// Refuses a config implying more parameters than the checkpoint holds.
    pub fn admit(&self, config_path: &Path, params: u64) -> Result<()> {
        if params <= self.values {
            return Ok(());
        }
        Err(ModelError::file(
            config_path,
            format!(
                "the config declares a model of {params} parameters but the checkpoint ({}) \
                 holds at most {} values: the config does not describe these weights",
                self.source, self.values
            ),
        ))
    }

    /// An upper bound from the safetensors files of `dir` (none found:
    /// `None`): every weight element takes at least two bytes (F16, BF16,
    /// F32 or F64; integer tensors are refused as weights).
    pub fn from_disk(dir: &Path) -> Option<Budget> {
        let files = crate::weights::safetensors_files(dir).ok()?;
        let mut bytes = 0u64;
        for f in &files {
            bytes = bytes.saturating_add(std::fs::metadata(f).ok()?.len());
        }
        Some(Budget {
            values: bytes / 2,
            source: files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}
