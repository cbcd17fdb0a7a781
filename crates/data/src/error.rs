//! Errors of the data layer: every message names the file it is about.

use std::path::PathBuf;

use crate::rows::BadRow;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An input file is absent; `hint` says how to get it.
    #[error("missing {what}: {path} does not exist; {hint}")]
    Missing {
        what: String,
        path: PathBuf,
        hint: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file as a whole is unusable (bad header, missing column, not the
    /// expected archive layout).
    #[error("{file}: {message}")]
    Format { file: String, message: String },
    /// More rows are malformed than the configured fraction allows.
    #[error(
        "{file}: {bad} of {rows} rows are malformed ({:.2}%), more than the allowed {:.2}% \
         (`max_bad_fraction` = {max_fraction}); refusing to load:\n{listing}",
        100.0 * *bad as f64 / (*rows).max(1) as f64,
        100.0 * max_fraction
    )]
    TooManyBad {
        file: String,
        bad: usize,
        rows: usize,
        max_fraction: f64,
        listing: String,
    },
    #[error("{file}: no usable rows")]
    Empty { file: String },
    #[error("invalid `{key}`: {message}")]
    Config { key: &'static str, message: String },
}

impl DataError {
    pub(crate) fn io(file: impl Into<String>, source: std::io::Error) -> Self {
        DataError::Io {
            file: file.into(),
            source,
        }
    }

    pub(crate) fn format(file: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Format {
            file: file.into(),
            message: message.into(),
        }
    }

    pub(crate) fn too_many_bad(file: &str, bad: &[BadRow], rows: usize, max_fraction: f64) -> Self {
        const SHOWN: usize = 20;
        let mut listing: Vec<String> = bad.iter().take(SHOWN).map(|b| format!("  {b}")).collect();
        if bad.len() > SHOWN {
            listing.push(format!("  … and {} more", bad.len() - SHOWN));
        }
        DataError::TooManyBad {
            file: file.to_string(),
            bad: bad.len(),
            rows,
            max_fraction,
            listing: listing.join("\n"),
        }
    }
}
