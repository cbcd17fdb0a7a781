//! Tasks and datasets.
//!
//! - [`enumerable`]: the toy task with an enumerable output space (a `task`
//!   plugin).
//! - [`sentiment`]: movie-review sentiment (rated snippets and Rotten
//!   Tomatoes reviews) read from the archives the set-up downloads.
//! - [`text_task`]: text tasks tokenized with the policy's tokenizer; the
//!   `sentiment` task plugin.
//! - [`hh`]: Anthropic HH-RLHF preference dialogues (JSONL / JSONL.gz).
//! - [`tldr`]: TL;DR summarisation in its public formats (CarperAI and TRL
//!   Parquet, OpenAI's comparison JSON lines).
//! - [`files`]: one manifest config (`format`, `path`, `max_bad_fraction`)
//!   for the HH and TL;DR files.
//! - [`rm_examples`]: reward-model training data (sentiment halves,
//!   preference files) as labelled texts or text pairs.
//! - Shared: [`records`] (record types), [`split`] (deterministic splits by
//!   SHA-256 of a stable key), [`rows`] (malformed rows: reported with file
//!   and line; a file with more than `max_bad_fraction` of them is refused),
//!   [`location`] (the data directory: the task's `data_dir`, else
//!   `$BRAIN_RS_DATA`, else `~/.cache/brain-rs/data`).

pub mod archive;
pub mod enumerable;
pub mod error;
pub mod files;
pub mod hh;
pub mod location;
pub mod records;
pub mod rm_examples;
pub mod rows;
pub mod sentiment;
pub mod split;
pub mod text_task;
pub mod tldr;

pub use error::DataError;
pub use files::{FileDatasetConfig, FileFormat, FileRecords};
pub use records::{Demonstration, LabelledText, PreferencePair, RatedText};
pub use rows::{BadRow, Loaded, Location, DEFAULT_MAX_BAD_FRACTION};
pub use split::{Split, SplitConfig, Splits};
