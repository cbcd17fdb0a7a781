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

use std::path::PathBuf;

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
