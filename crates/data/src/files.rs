//! One config for the datasets a user brings as files (HH-RLHF, TL;DR), for
//! a task plugin to embed:
//!
//! ```toml
//! [task.whatever.train]
//! format = "hh-rlhf"        # | "carperai-tldr" | "trl-tldr" | "trl-tldr-preference"
//!                           # | "summarize-from-feedback"
//! path = "/data/hh-rlhf/helpful-base/train.jsonl.gz"
//! max_bad_fraction = 0.01   # default
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::records::{Demonstration, PreferencePair};
use crate::rows::{default_max_bad_fraction, Loaded};
use crate::tldr::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    /// `Anthropic/hh-rlhf` JSONL(.gz): pairs.
    HhRlhf,
    /// CarperAI `openai_summarize_tldr` Parquet: demonstrations.
    CarperaiTldr,
    /// `trl-lib/tldr` Parquet: demonstrations.
    TrlTldr,
    /// `trl-lib/tldr-preference` Parquet: pairs.
    TrlTldrPreference,
    /// `openai/summarize_from_feedback` comparisons JSON lines: pairs.
    SummarizeFromFeedback,
}

impl FileFormat {
    /// The public dataset files of this format come from.
    pub fn dataset_url(self) -> &'static str {
        match self {
            FileFormat::HhRlhf => "https://huggingface.co/datasets/Anthropic/hh-rlhf",
            FileFormat::CarperaiTldr => {
                "https://huggingface.co/datasets/CarperAI/openai_summarize_tldr"
            }
            FileFormat::TrlTldr => "https://huggingface.co/datasets/trl-lib/tldr",
            FileFormat::TrlTldrPreference => {
                "https://huggingface.co/datasets/trl-lib/tldr-preference"
            }
            FileFormat::SummarizeFromFeedback => {
                "https://huggingface.co/datasets/openai/summarize_from_feedback"
            }
        }
    }

    /// The dataset's name, for messages.
    pub fn dataset_name(self) -> &'static str {
        match self {
            FileFormat::HhRlhf => "HH-RLHF",
            FileFormat::CarperaiTldr => "CarperAI openai_summarize_tldr",
            FileFormat::TrlTldr => "trl-lib/tldr",
            FileFormat::TrlTldrPreference => "trl-lib/tldr-preference",
            FileFormat::SummarizeFromFeedback => "summarize-from-feedback comparisons",
        }
    }

    /// What to download, and from where, for a file of this format that
    /// should be at `path` (the set-up cannot fetch these).
    pub fn download_hint(self, path: &Path) -> String {
        let url = self.dataset_url();
        let at = path.display();
        match self {
            FileFormat::HhRlhf => {
                // Published as `<subset>/<split>.jsonl.gz`, e.g. helpful-base/test.jsonl.gz.
                let parts: Vec<_> = path.iter().rev().take(2).collect();
                let file = match parts[..] {
                    [name, subset] => format!("{}/{}", subset.to_string_lossy(), name.to_string_lossy()),
                    _ => "helpful-base/test.jsonl.gz".into(),
                };
                format!(
                    "download `{file}` of the Anthropic HH-RLHF dataset ({url}; the file is \
                     {url}/resolve/main/{file}) and put it at {at}"
                )
            }
            FileFormat::SummarizeFromFeedback => format!(
                "download the comparisons (JSON lines, `comparisons/batch*.json`, concatenated) \
                 of OpenAI's summarize-from-feedback data ({url}, originally \
                 https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/) \
                 and put them at {at}"
            ),
            _ => format!(
                "download a Parquet file of the split you want from {url} (its `data/` folder, \
                 {url}/tree/main/data) and put it at {at}"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDatasetConfig {
    pub format: FileFormat,
    pub path: PathBuf,
    #[serde(default = "default_max_bad_fraction")]
    pub max_bad_fraction: f64,
}

/// What a file holds.
#[derive(Debug, Clone)]
pub enum FileRecords {
    Pairs(Loaded<PreferencePair>),
    Demonstrations(Loaded<Demonstration>),
}

impl FileDatasetConfig {
    pub fn load(&self) -> Result<FileRecords, DataError> {
        let (path, bad) = (&self.path, self.max_bad_fraction);
        if !path.exists() {
            return Err(DataError::Missing {
                what: format!("the {} file", self.format.dataset_name()),
                path: path.clone(),
                hint: self.format.download_hint(path),
            });
        }
        Ok(match self.format {
            FileFormat::HhRlhf => FileRecords::Pairs(crate::hh::load(path, bad)?),
            FileFormat::CarperaiTldr => FileRecords::Demonstrations(
                crate::tldr::load_demonstrations(Format::CarperaiTldr, path, bad)?,
            ),
            FileFormat::TrlTldr => FileRecords::Demonstrations(crate::tldr::load_demonstrations(
                Format::TrlTldr,
                path,
                bad,
            )?),
            FileFormat::TrlTldrPreference => FileRecords::Pairs(crate::tldr::load_pairs(
                Format::TrlTldrPreference,
                path,
                bad,
            )?),
            FileFormat::SummarizeFromFeedback => FileRecords::Pairs(crate::tldr::load_pairs(
                Format::SummarizeFromFeedback,
                path,
                bad,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_says_what_to_download_and_where_to_put_it() {
        let path = PathBuf::from("/nowhere/hh-rlhf/helpful-base/test.jsonl.gz");
        let e = FileDatasetConfig {
            format: FileFormat::HhRlhf,
            path: path.clone(),
            max_bad_fraction: 0.01,
        }
        .load()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("missing the HH-RLHF file: /nowhere/hh-rlhf/helpful-base/test.jsonl.gz")
                && e.contains("download `helpful-base/test.jsonl.gz`")
                && e.contains("https://huggingface.co/datasets/Anthropic/hh-rlhf")
                && e.contains("put it at /nowhere/hh-rlhf/helpful-base/test.jsonl.gz"),
            "{e}"
        );
        let hint = FileFormat::CarperaiTldr.download_hint(Path::new("/d/tldr.parquet"));
        assert!(
            hint.contains("CarperAI/openai_summarize_tldr") && hint.contains("/d/tldr.parquet"),
            "{hint}"
        );
    }
}
