//! Where the downloaded data lives.
//!
//! The data directory is, in order: the `data_dir` of the task config, the
//! environment variable `BRAIN_RS_DATA`, `$HOME/.cache/brain-rs/data`.
//! `cargo xtask setup` fills it (see the crate docs for what it holds).

use std::path::{Path, PathBuf};

use crate::error::DataError;

pub const DATA_ENV: &str = "BRAIN_RS_DATA";

/// The data directory: `configured`, else `$BRAIN_RS_DATA`, else
/// `$HOME/.cache/brain-rs/data`.
pub fn data_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os(DATA_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("brain-rs").join("data")
}

/// `path` if it exists, else an error naming it and saying to run the set-up.
pub fn require_setup_file(path: &Path, what: &str) -> Result<PathBuf, DataError> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    Err(DataError::Missing {
        what: what.to_string(),
        path: path.to_path_buf(),
        hint: format!(
            "run `cargo xtask setup` to download it (the data directory is the task's \
             `data_dir`, else ${DATA_ENV}, else ~/.cache/brain-rs/data)"
        ),
    })
}

/// `path` if it exists, else an error naming it: for data the user brings.
pub fn require_user_file(path: &Path, what: &str) -> Result<PathBuf, DataError> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    Err(DataError::Missing {
        what: what.to_string(),
        path: path.to_path_buf(),
        hint: "this data cannot be downloaded by the set-up: point `path` in the manifest \
               at your local copy"
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_dir_wins_and_missing_files_say_how_to_get_them() {
        let d = data_dir(Some(Path::new("/somewhere")));
        assert_eq!(d, PathBuf::from("/somewhere"));
        let e = require_setup_file(&d.join("x.tar.gz"), "the VADER archive")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing the VADER archive: /somewhere/x.tar.gz"),
            "{e}"
        );
        assert!(e.contains("cargo xtask setup"), "{e}");
    }
}
