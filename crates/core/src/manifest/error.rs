//! A manifest error with its file, line, column, the offending line and a fix.

use std::fmt;
use std::path::PathBuf;

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

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // A span from the parser starts on a character boundary; one that does
    // not (or lies past the end) is clamped rather than trusted.
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

pub(crate) fn snippet(text: &str, line: usize, col: usize, len: usize) -> String {
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
pub(crate) fn fix_for(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "no other keys"));
        if field == "`sweep`" {
            // Only `runner sweep` reads `[sweep]` (it expands the grid into jobs).
            return "this manifest is a sweep: `runner sweep MANIFEST --list` shows its jobs, \
                    `runner sweep MANIFEST --index I` runs one"
                .into();
        }
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
