//! TL;DR summarisation (Stiennon et al. 2020) in its public formats:
//!
//! | format | file | columns / fields | records |
//! |---|---|---|---|
//! | [`Format::CarperaiTldr`] | CarperAI `openai_summarize_tldr` Parquet | `prompt`, `label` | demonstrations |
//! | [`Format::TrlTldr`] | `trl-lib/tldr` Parquet | `prompt`, `completion` | demonstrations |
//! | [`Format::TrlTldrPreference`] | `trl-lib/tldr-preference` Parquet | `prompt`, `chosen`, `rejected` | pairs |
//! | [`Format::SummarizeFromFeedback`] | `openai/summarize_from_feedback` comparisons, JSON lines (`.json`/`.jsonl`, optionally `.gz`) | `info.{post,title,subreddit}`, `summaries[i].text`, `choice` | pairs |
//!
//! Parquet prompts and completions are taken verbatim. For the comparisons the
//! prompt is built as `"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST:
//! {post}\nTL;DR:"` (the CarperAI / trlx layout) and each summary becomes the
//! completion `" " + text.trim()`. Comparison rows about CNN/DM articles
//! (`info.article`, no `info.post`) are skipped, not malformed.
//!
//! Parquet is read row by row without arrow (row groups in parallel); the
//! build carries the snappy codec only (what `datasets` / pyarrow write by
//! default). A null or non-string cell is a malformed row (numbered from 1);
//! a missing column rejects the file.

use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::archive::{read_maybe_gz, MAX_READ_BYTES};
use crate::error::DataError;
use crate::location::require_user_file;
use crate::records::{Demonstration, PreferencePair};
use crate::rows::{numbered_lines, validate_fraction, Loaded, Location};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    CarperaiTldr,
    TrlTldr,
    TrlTldrPreference,
    SummarizeFromFeedback,
}

/// The most rows read from one Parquet file (the TL;DR sets have about
/// 120 thousand); a file stating more is refused before any row is read.
pub const MAX_PARQUET_ROWS: u64 = 1 << 26;

/// Reads the string columns `columns` of every row of a Parquet file and
/// turns them into records with `make` (an `Err` is a malformed row).
///
/// The file's metadata is checked before any row is read (row counts,
/// column chunk offsets and sizes inside the file), and a panic of the
/// Parquet reader on a corrupt file it did not foresee becomes an error
/// naming the file.
pub fn read_parquet<T: Send>(
    path: &Path,
    columns: &[&str],
    make: impl Fn(Vec<String>) -> Result<T, String> + Sync,
) -> Result<Loaded<T>, DataError> {
    let label = path.display().to_string();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_parquet_checked(path, &label, columns, &make)
    }))
    .unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Err(DataError::format(
            &label,
            format!("not a readable Parquet file (corrupt?): the reader failed: {why}"),
        ))
    })
}

fn read_parquet_checked<T: Send>(
    path: &Path,
    label: &str,
    columns: &[&str],
    make: &(impl Fn(Vec<String>) -> Result<T, String> + Sync),
) -> Result<Loaded<T>, DataError> {
    let label = label.to_string();
    let file = File::open(path).map_err(|e| DataError::io(&label, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(&label, e))?.len();
    let reader = SerializedFileReader::new(file)
        .map_err(|e| DataError::format(&label, format!("not a readable Parquet file: {e}")))?;
    let meta = reader.metadata();
    let present: Vec<String> = meta
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    for c in columns {
        if !present.iter().any(|p| p == c) {
            return Err(DataError::format(
                &label,
                format!("no `{c}` column (columns: {})", present.join(", ")),
            ));
        }
    }
    // Row counts come from the file: check them before reading any row.
    let mut first_row = Vec::with_capacity(meta.num_row_groups());
    let mut next = 1u64;
    for (g, group) in meta.row_groups().iter().enumerate() {
        let rows = u64::try_from(group.num_rows()).map_err(|_| {
            DataError::format(
                &label,
                format!("row group {g} states {} rows", group.num_rows()),
            )
        })?;
        first_row.push(next);
        next = next.saturating_add(rows);
        // Where each column chunk says it lies: inside the file.
        for (c, col) in group.columns().iter().enumerate() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(col.compressed_size()).ok())
                .and_then(|(s, n)| s.checked_add(n));
            if end.is_none_or(|end| end > file_len) || col.uncompressed_size() < 0 {
                return Err(DataError::format(
                    &label,
                    format!(
                        "row group {g}, column {c}: the metadata places it at offset {start}, \
                         {} bytes ({} uncompressed), outside the file's {file_len} bytes \
                         (a corrupt or truncated file?)",
                        col.compressed_size(),
                        col.uncompressed_size()
                    ),
                ));
            }
        }
    }
    let total = next - 1;
    if total > MAX_PARQUET_ROWS {
        return Err(DataError::format(
            &label,
            format!(
                "states {total} rows, more than the limit of {MAX_PARQUET_ROWS} rows read \
                 from one file (a corrupt or hostile file?)"
            ),
        ));
    }
    // The text read so far, over every row group: a few rows of a file can
    // stand for much more text (dictionary pages repeat one value).
    let text_bytes = std::sync::atomic::AtomicU64::new(0);
    let broken = |what: String, e: parquet::errors::ParquetError| {
        DataError::format(&label, format!("{what}: {}", codec_hint(&e)))
    };
    type Rows<T> = Vec<(Location, Result<Option<T>, String>)>;
    let groups: Vec<Rows<T>> = (0..meta.num_row_groups())
        .into_par_iter()
        .map(|g| {
            // One reader (and file handle) per row group: readers of one
            // `File` share its cursor, so they must not run concurrently.
            let file = File::open(path).map_err(|e| DataError::io(&label, e))?;
            let reader =
                SerializedFileReader::new(file).map_err(|e| broken(format!("row group {g}"), e))?;
            let group = reader
                .get_row_group(g)
                .map_err(|e| broken(format!("row group {g}"), e))?;
            let rows = group
                .get_row_iter(None)
                .map_err(|e| broken(format!("row group {g}"), e))?;
            rows.enumerate()
                .map(|(i, row)| {
                    let at = Location::Row(first_row[g] + i as u64);
                    let row = row.map_err(|e| broken(at.to_string(), e))?;
                    let size: u64 = row
                        .get_column_iter()
                        .map(|(_, f)| match f {
                            Field::Str(s) => s.len() as u64,
                            _ => 0,
                        })
                        .sum();
                    let read = text_bytes.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                    if read.saturating_add(size) > MAX_READ_BYTES {
                        return Err(DataError::format(
                            &label,
                            format!(
                                "holds more than {MAX_READ_BYTES} bytes of text (at {at}), the \
                                 limit on one file read into memory"
                            ),
                        ));
                    }
                    let cells = columns
                        .iter()
                        .map(
                            |c| match row.get_column_iter().find(|(name, _)| name == c) {
                                Some((_, Field::Str(s))) => Ok(s.clone()),
                                Some((_, Field::Null)) | None => Err(format!("`{c}` is null")),
                                Some((_, other)) => Err(format!("`{c}` is not a string: {other}")),
                            },
                        )
                        .collect::<Result<Vec<String>, String>>();
                    Ok((at, cells.and_then(make).map(Some)))
                })
                .collect::<Result<Rows<T>, DataError>>()
        })
        .collect::<Result<_, _>>()?;
    Ok(Loaded::collect(label, groups.into_iter().flatten()))
}

fn codec_hint(e: &parquet::errors::ParquetError) -> String {
    let msg = e.to_string();
    if msg.contains("Disabled feature") || msg.contains("not supported") {
        format!("{msg} (this build reads snappy-compressed or uncompressed Parquet only)")
    } else {
        msg
    }
}

fn non_empty(what: &str, s: String) -> Result<String, String> {
    if s.trim().is_empty() {
        Err(format!("`{what}` is empty"))
    } else {
        Ok(s)
    }
}

fn demonstration(completion: &str, cells: Vec<String>) -> Result<Demonstration, String> {
    let mut cells = cells.into_iter();
    let (prompt, reference) = (cells.next(), cells.next());
    Ok(Demonstration {
        prompt: non_empty("prompt", prompt.unwrap_or_default())?,
        reference: non_empty(completion, reference.unwrap_or_default())?,
    })
}

fn pair(cells: Vec<String>) -> Result<PreferencePair, String> {
    let mut cells = cells.into_iter();
    let mut next = |what: &str| non_empty(what, cells.next().unwrap_or_default());
    let pair = PreferencePair {
        prompt: next("prompt")?,
        chosen: next("chosen")?,
        rejected: next("rejected")?,
    };
    if pair.chosen == pair.rejected {
        return Err("`chosen` and `rejected` are identical".into());
    }
    Ok(pair)
}

#[derive(Deserialize)]
struct Comparison {
    info: Info,
    summaries: Vec<Summary>,
    choice: i64,
}

#[derive(Deserialize)]
struct Info {
    post: Option<String>,
    title: Option<String>,
    subreddit: Option<String>,
    article: Option<String>,
}

#[derive(Deserialize)]
struct Summary {
    text: String,
}

/// The TL;DR prompt of a Reddit post.
pub fn tldr_prompt(subreddit: &str, title: &str, post: &str) -> String {
    format!("SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:")
}

fn comparison(line: &[u8]) -> Result<Option<PreferencePair>, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    let c: Comparison =
        serde_json::from_str(text).map_err(|e| format!("not a comparison object: {e}"))?;
    let Some(post) = c.info.post else {
        return match c.info.article {
            Some(_) => Ok(None),
            None => Err("`info.post` is missing".into()),
        };
    };
    let title = c.info.title.ok_or("`info.title` is missing")?;
    let subreddit = c.info.subreddit.ok_or("`info.subreddit` is missing")?;
    if c.summaries.len() != 2 {
        return Err(format!("expected 2 summaries, found {}", c.summaries.len()));
    }
    let choice = usize::try_from(c.choice)
        .ok()
        .filter(|&k| k < 2)
        .ok_or_else(|| format!("`choice` must be 0 or 1, got {}", c.choice))?;
    let summary = |k: usize| {
        let t = c.summaries[k].text.trim();
        if t.is_empty() {
            Err(format!("summary {k} is empty"))
        } else {
            Ok(format!(" {t}"))
        }
    };
    Ok(Some(PreferencePair {
        prompt: tldr_prompt(&subreddit, &title, &post),
        chosen: summary(choice)?,
        rejected: summary(1 - choice)?,
    }))
}

/// Parses `summarize_from_feedback` comparison JSON lines in parallel.
pub fn parse_comparisons(file: &str, bytes: &[u8]) -> Loaded<PreferencePair> {
    let rows: Vec<_> = numbered_lines(bytes)
        .into_par_iter()
        .map(|(n, line)| (Location::Line(n), comparison(line)))
        .collect();
    Loaded::collect(file, rows)
}

/// Demonstrations (prompt, reference) from a CarperAI or trl-lib/tldr file.
pub fn load_demonstrations(
    format: Format,
    path: &Path,
    max_bad_fraction: f64,
) -> Result<Loaded<Demonstration>, DataError> {
    validate_fraction(max_bad_fraction)?;
    let completion = match format {
        Format::CarperaiTldr => "label",
        Format::TrlTldr => "completion",
        Format::TrlTldrPreference | Format::SummarizeFromFeedback => {
            return Err(DataError::Config {
                key: "format",
                message: format!("{format:?} holds preference pairs, not demonstrations"),
            })
        }
    };
    let path = require_user_file(path, "the TL;DR file")?;
    read_parquet(&path, &["prompt", completion], |cells| {
        demonstration(completion, cells)
    })?
    .checked(max_bad_fraction)
}

/// Preference pairs from a trl-lib/tldr-preference Parquet file or a
/// summarize_from_feedback comparisons file.
pub fn load_pairs(
    format: Format,
    path: &Path,
    max_bad_fraction: f64,
) -> Result<Loaded<PreferencePair>, DataError> {
    validate_fraction(max_bad_fraction)?;
    let path = require_user_file(path, "the TL;DR file")?;
    let loaded = match format {
        Format::TrlTldrPreference => read_parquet(&path, &["prompt", "chosen", "rejected"], pair)?,
        Format::SummarizeFromFeedback => {
            parse_comparisons(&path.display().to_string(), &read_maybe_gz(&path)?)
        }
        Format::CarperaiTldr | Format::TrlTldr => {
            return Err(DataError::Config {
                key: "format",
                message: format!("{format:?} holds demonstrations, not preference pairs"),
            })
        }
    };
    loaded.checked(max_bad_fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_become_prompt_chosen_rejected() {
        let line = br#"{"info": {"id": "t3_x", "post": "My cat ate my homework.", "title": "Help", "subreddit": "pets"}, "split": "train", "summaries": [{"text": " cat ate it ", "policy": "a", "note": null}, {"text": "homework gone", "policy": "b", "note": null}], "choice": 1, "worker": "w", "batch": "b1", "extra": {}}"#;
        let p = comparison(line).unwrap().unwrap();
        assert_eq!(
            p.prompt,
            "SUBREDDIT: r/pets\nTITLE: Help\nPOST: My cat ate my homework.\nTL;DR:"
        );
        assert_eq!(p.chosen, " homework gone");
        assert_eq!(p.rejected, " cat ate it");
    }

    #[test]
    fn cnn_rows_are_skipped_and_broken_rows_explained() {
        let cnn = br#"{"info": {"id": "c", "article": "News.", "title": "T", "site": "cnn"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0}"#;
        assert_eq!(comparison(cnn).unwrap(), None);
        let three = br#"{"info": {"post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}, {"text": "c"}], "choice": 0}"#;
        assert_eq!(
            comparison(three).unwrap_err(),
            "expected 2 summaries, found 3"
        );
        let choice = br#"{"info": {"post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 2}"#;
        assert_eq!(
            comparison(choice).unwrap_err(),
            "`choice` must be 0 or 1, got 2"
        );
    }
}
