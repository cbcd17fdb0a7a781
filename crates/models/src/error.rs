//! Loading errors. Every variant names the file (or directory) it is about.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: not found", .0.display())]
    NotFound(PathBuf),
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{}: unsupported architecture `{arch}`; supported: {supported}", path.display())]
    Unsupported {
        path: PathBuf,
        arch: String,
        supported: String,
    },
    #[error(
        "{}: refusing to load a pickle checkpoint (unpickling can run arbitrary code); \
         convert it to safetensors first, e.g. with transformers: \
         `AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`",
        .0.display()
    )]
    Pickle(PathBuf),
}

impl ModelError {
    pub fn file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        ModelError::File {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
