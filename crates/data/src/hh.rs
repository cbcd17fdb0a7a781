//! Anthropic HH-RLHF (`Anthropic/hh-rlhf`): JSON lines, optionally gzip'd
//! (`train.jsonl.gz` as published), each `{"chosen": DIALOGUE, "rejected":
//! DIALOGUE}` where a dialogue is `"\n\nHuman: …\n\nAssistant: …"` turns and
//! the two differ only in the last assistant turn.
//!
//! The prompt is `chosen` up to and including its last `"\n\nAssistant:"`;
//! `chosen` / `rejected` in the [`PreferencePair`] are what follows it in each
//! dialogue. A line that is not such an object, whose `chosen` has no
//! assistant turn, or whose `rejected` does not start with the prompt is a
//! malformed row.

use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;

use crate::archive::read_maybe_gz;
use crate::error::DataError;
use crate::location::require_user_file;
use crate::records::PreferencePair;
use crate::rows::{numbered_lines, validate_fraction, Loaded, Location};

pub const ASSISTANT: &str = "\n\nAssistant:";

#[derive(Deserialize)]
struct Line {
    chosen: String,
    rejected: String,
}

/// Splits one HH pair into prompt and the two completions.
pub fn split_dialogues(chosen: &str, rejected: &str) -> Result<PreferencePair, String> {
    let end = chosen
        .rfind(ASSISTANT)
        .ok_or_else(|| "`chosen` has no \"\\n\\nAssistant:\" turn".to_string())?
        + ASSISTANT.len();
    let prompt = &chosen[..end];
    let rejected = rejected.strip_prefix(prompt).ok_or_else(|| {
        "`rejected` does not start with the prompt (`chosen` up to its last \
         \"\\n\\nAssistant:\")"
            .to_string()
    })?;
    Ok(PreferencePair {
        prompt: prompt.to_string(),
        chosen: chosen[end..].to_string(),
        rejected: rejected.to_string(),
    })
}

fn parse_line(line: &[u8]) -> Result<PreferencePair, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    let Line { chosen, rejected } = serde_json::from_str(text)
        .map_err(|e| format!("not a {{\"chosen\", \"rejected\"}} object: {e}"))?;
    split_dialogues(&chosen, &rejected)
}

/// Parses HH JSON lines in parallel.
pub fn parse(file: &str, bytes: &[u8]) -> Loaded<PreferencePair> {
    let rows: Vec<_> = numbered_lines(bytes)
        .into_par_iter()
        .map(|(n, line)| (Location::Line(n), parse_line(line).map(Some)))
        .collect();
    Loaded::collect(file, rows)
}

/// Reads an HH file (`.jsonl` or `.jsonl.gz`), refusing it when more than
/// `max_bad_fraction` of its lines are malformed; the rest are reported on
/// stderr and left out.
pub fn load(path: &Path, max_bad_fraction: f64) -> Result<Loaded<PreferencePair>, DataError> {
    validate_fraction(max_bad_fraction)?;
    let path = require_user_file(path, "the HH-RLHF file")?;
    let bytes = read_maybe_gz(&path)?;
    parse(&path.display().to_string(), &bytes).checked(max_bad_fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_ends_at_the_last_assistant_turn() {
        let p = split_dialogues(
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Sure, one.",
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: No.",
        )
        .unwrap();
        assert_eq!(
            p.prompt,
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:"
        );
        assert_eq!(p.chosen, " Sure, one.");
        assert_eq!(p.rejected, " No.");
    }

    #[test]
    fn mismatched_or_turnless_dialogues_are_malformed() {
        let e = split_dialogues(
            "\n\nHuman: a\n\nAssistant: b",
            "\n\nHuman: x\n\nAssistant: b",
        )
        .unwrap_err();
        assert!(e.contains("does not start with the prompt"), "{e}");
        let e = split_dialogues("\n\nHuman: a", "\n\nHuman: a").unwrap_err();
        assert!(e.contains("no \"\\n\\nAssistant:\""), "{e}");
    }
}
