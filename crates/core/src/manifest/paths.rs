//! Files named in a manifest. A path is read as written (`~/` is the home
//! directory, as in a shell) and resolved against the manifest's directory by
//! the loader, explicitly: a plugin whose config holds an [`InputPath`] builds
//! with [`build_resolving`](crate::registry::build_resolving), which hands it
//! the [`PathBase`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::registry::PluginError;

/// Where a manifest's relative paths start: its own directory (the working
/// directory for paths given on the command line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathBase(PathBuf);

impl PathBase {
    pub fn new(dir: impl Into<PathBuf>) -> PathBase {
        PathBase(dir.into())
    }

    /// The directory of the manifest at `file`.
    pub fn of_manifest(file: &Path) -> PathBase {
        PathBase(file.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    /// `written` relative to the base; absolute paths stay as they are.
    pub fn join(&self, written: &Path) -> PathBuf {
        if written.is_relative() {
            self.0.join(written)
        } else {
            written.to_path_buf()
        }
    }

    /// Resolves `path` (the value of `key` in the plugin's table) and checks
    /// that it exists.
    pub fn resolve(&self, key: &str, path: &mut InputPath) -> Result<(), PluginError> {
        let resolved = self.join(&path.written);
        if !resolved.exists() {
            return Err(PluginError::Path {
                key: key.to_string(),
                message: format!(
                    "file not found: `{}` (looked at {})",
                    path.written.display(),
                    resolved.display()
                ),
            });
        }
        path.resolved = Some(resolved);
        Ok(())
    }

    /// Resolves a path the run will write.
    pub fn resolve_output(&self, path: &mut OutputPath) {
        path.0 = self.join(&path.0);
    }
}

/// A path to an existing file or directory, resolved against the manifest's
/// directory by [`PathBase::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPath {
    written: PathBuf,
    resolved: Option<PathBuf>,
}

impl InputPath {
    /// A path given on the command line, relative to the working directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        InputPath {
            written: path.clone(),
            resolved: Some(path),
        }
    }

    /// The resolved path.
    ///
    /// # Panics
    /// If the path was deserialized and never resolved: a plugin with paths
    /// in its config must build with [`crate::registry::build_resolving`].
    pub fn path(&self) -> &Path {
        self.resolved.as_deref().unwrap_or_else(|| {
            panic!(
                "`{}` was never resolved against the manifest's directory \
                 (build the plugin with align_core::registry::build_resolving)",
                self.written.display()
            )
        })
    }
}

/// A path a run writes; need not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPath(PathBuf);

impl OutputPath {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// `~/` is the user's home, as in a shell.
fn expand_home(text: &str) -> PathBuf {
    match (text.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(text),
    }
}

impl<'de> Deserialize<'de> for InputPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(InputPath {
            written: expand_home(&String::deserialize(d)?),
            resolved: None,
        })
    }
}

impl<'de> Deserialize<'de> for OutputPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(OutputPath(expand_home(&String::deserialize(d)?)))
    }
}

impl Serialize for InputPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let shown = self.resolved.as_ref().unwrap_or(&self.written);
        s.serialize_str(&shown.to_string_lossy())
    }
}

impl Serialize for OutputPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_start_at_the_manifest_and_absolute_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), b"").unwrap();
        let base = PathBase::of_manifest(&dir.path().join("m.toml"));
        let mut p: InputPath = serde_json::from_str("\"w.bin\"").unwrap();
        base.resolve("path", &mut p).unwrap();
        assert_eq!(p.path(), dir.path().join("w.bin"));
        let abs = dir.path().join("w.bin");
        let mut q = InputPath {
            written: abs.clone(),
            resolved: None,
        };
        PathBase::new("/elsewhere").resolve("path", &mut q).unwrap();
        assert_eq!(q.path(), abs);
    }

    #[test]
    fn a_missing_file_names_the_key_and_where_it_looked() {
        let mut p: InputPath = serde_json::from_str("\"nope.bin\"").unwrap();
        let err = PathBase::new("/tmp/m").resolve("init", &mut p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "file not found: `nope.bin` (looked at /tmp/m/nope.bin)"
        );
    }
}
