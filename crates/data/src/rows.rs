//! Malformed-row handling shared by every reader.
//!
//! Readers turn each row into `Ok(Some(record))`, `Ok(None)` (a row the format
//! allows but the dataset does not use, e.g. Rotten Tomatoes plot synopses) or
//! `Err(reason)`. [`Loaded::check`] then refuses the file when the malformed
//! share exceeds `max_bad_fraction`, listing the rows; below it the loaders
//! print every bad row (file, line, reason) to stderr and go on without them.

use crate::error::DataError;

/// The fraction of malformed rows a file may have before loading refuses it.
pub const DEFAULT_MAX_BAD_FRACTION: f64 = 0.01;

pub fn default_max_bad_fraction() -> f64 {
    DEFAULT_MAX_BAD_FRACTION
}

/// Where a row sits in its file: text formats count lines (1-based, the line
/// the row starts on), Parquet counts rows (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Line(u64),
    Row(u64),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// One malformed row.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub file: String,
    pub at: Location,
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.at, self.reason)
    }
}

/// The outcome of reading one file.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The file as reported in messages (archive members as `outer!/inner`).
    pub file: String,
    pub records: Vec<T>,
    pub bad: Vec<BadRow>,
    /// Well-formed rows the dataset does not use.
    pub skipped: usize,
    /// Data rows read (records + bad + skipped).
    pub rows: usize,
}

impl<T> Loaded<T> {
    /// Gathers per-row results (in file order).
    pub fn collect(
        file: impl Into<String>,
        rows: impl IntoIterator<Item = (Location, Result<Option<T>, String>)>,
    ) -> Self {
        let file = file.into();
        let mut out = Loaded {
            file,
            records: Vec::new(),
            bad: Vec::new(),
            skipped: 0,
            rows: 0,
        };
        for (at, row) in rows {
            out.rows += 1;
            match row {
                Ok(Some(r)) => out.records.push(r),
                Ok(None) => out.skipped += 1,
                Err(reason) => out.bad.push(BadRow {
                    file: out.file.clone(),
                    at,
                    reason,
                }),
            }
        }
        out
    }

    pub fn bad_fraction(&self) -> f64 {
        self.bad.len() as f64 / self.rows.max(1) as f64
    }

    /// Refuses the file when more than `max_bad_fraction` of its rows are
    /// malformed, or when it has no usable row.
    pub fn check(self, max_bad_fraction: f64) -> Result<Self, DataError> {
        if self.bad_fraction() > max_bad_fraction {
            return Err(DataError::too_many_bad(
                &self.file,
                &self.bad,
                self.rows,
                max_bad_fraction,
            ));
        }
        if self.records.is_empty() {
            return Err(DataError::Empty { file: self.file });
        }
        Ok(self)
    }

    /// Prints every malformed row to stderr (the loaders call this after
    /// [`Loaded::check`] passes).
    pub fn report(&self) {
        if self.bad.is_empty() {
            return;
        }
        eprintln!(
            "warning: {}: skipping {} malformed of {} rows:",
            self.file,
            self.bad.len(),
            self.rows
        );
        for b in &self.bad {
            eprintln!("  {b}");
        }
    }

    /// `check`, then `report`.
    pub fn checked(self, max_bad_fraction: f64) -> Result<Self, DataError> {
        let out = self.check(max_bad_fraction)?;
        out.report();
        Ok(out)
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Loaded<U> {
        Loaded {
            file: self.file,
            records: self.records.into_iter().map(f).collect(),
            bad: self.bad,
            skipped: self.skipped,
            rows: self.rows,
        }
    }
}

pub(crate) fn validate_fraction(max_bad_fraction: f64) -> Result<(), DataError> {
    if !(0.0..=1.0).contains(&max_bad_fraction) {
        return Err(DataError::Config {
            key: "max_bad_fraction",
            message: format!("must be in [0, 1], got {max_bad_fraction}"),
        });
    }
    Ok(())
}

/// Splits a byte buffer into lines (`\n`, with a trailing `\r` removed),
/// numbered from 1, dropping blank lines.
pub(crate) fn numbered_lines(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(bad: usize, good: usize) -> Loaded<u32> {
        Loaded::collect(
            "f.jsonl",
            (0..good + bad).map(|i| {
                let at = Location::Line(i as u64 + 1);
                if i < bad {
                    (at, Err(format!("broken {i}")))
                } else {
                    (at, Ok(Some(i as u32)))
                }
            }),
        )
    }

    #[test]
    fn below_the_fraction_loads_and_keeps_the_bad_rows() {
        let l = rows(1, 199).check(0.01).unwrap();
        assert_eq!(l.records.len(), 199);
        assert_eq!(l.bad[0].to_string(), "f.jsonl: line 1: broken 0");
    }

    #[test]
    fn above_the_fraction_refuses_with_the_rows_listed() {
        let e = rows(3, 97).check(0.01).unwrap_err().to_string();
        assert!(e.contains("3 of 100 rows are malformed (3.00%)"), "{e}");
        assert!(e.contains("allowed 1.00%"), "{e}");
        assert!(e.contains("f.jsonl: line 3: broken 2"), "{e}");
        let e = rows(30, 0).check(1.0).unwrap_err().to_string();
        assert!(e.contains("no usable rows"), "{e}");
        let e = rows(25, 5).check(0.5).unwrap_err().to_string();
        assert!(e.contains("… and 5 more"), "{e}");
    }

    #[test]
    fn lines_are_numbered_from_one_and_blank_lines_dropped() {
        let ls = numbered_lines(b"a\r\n\r\nb\n  \nc");
        let got: Vec<(u64, &[u8])> = ls;
        assert_eq!(got, vec![(1, &b"a"[..]), (3, &b"b"[..]), (5, &b"c"[..])]);
    }
}
