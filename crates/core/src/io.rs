//! Files in and out.
//!
//! Writes are atomic: a sibling temporary file (or directory) is written,
//! fsynced and renamed into place, so a crash never leaves a half-written
//! result behind. [`AtomicFile`] streams into one; [`write_atomic`] writes a
//! buffer; [`write_dir_atomic`] fills a whole directory.
//!
//! Reads: [`read_jsonl`] reads a JSON-lines file, naming file and line in
//! its errors.

use std::io::{BufRead, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Results are ordinary files (0644) and directories (0755); temporary ones
/// are created private.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// The directory `path` goes into (`.` for a bare name), created if missing.
fn parent_dir(path: &Path) -> anyhow::Result<&Path> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    Ok(dir)
}

/// A file written in place of `path` only on [`AtomicFile::commit`]: until
/// then the bytes go to a temporary sibling, which is removed if the
/// `AtomicFile` is dropped uncommitted (the target is left untouched).
pub struct AtomicFile {
    path: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
}

impl AtomicFile {
    /// Starts writing `path` (its directory is created if missing).
    pub fn create(path: impl AsRef<Path>) -> anyhow::Result<AtomicFile> {
        let path = path.as_ref();
        let dir = parent_dir(path)?;
        let tmp = tempfile::Builder::new()
            .prefix(".")
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            out: BufWriter::new(tmp),
        })
    }

    /// Flushes, fsyncs and moves the finished file into place.
    pub fn commit(self) -> anyhow::Result<()> {
        let AtomicFile { path, out } = self;
        let tmp = out
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|tmp| tmp.as_file().sync_all().map(|_| tmp))
            .with_context(|| format!("writing {}", path.display()))?;
        tmp.persist(&path).with_context(|| {
            format!("moving the finished file into place at {}", path.display())
        })?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes `contents` to `path` atomically.
pub fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    file.commit()
}

/// Writes the directory `out` whole or not at all: `fill` writes its files
/// into a temporary sibling directory, which then replaces `out` (an
/// existing `out` is removed only once the new one is in place). If `fill`
/// fails, the temporary directory is removed and `out` is left untouched.
pub fn write_dir_atomic(
    out: &Path,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let parent = parent_dir(out)?;
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a directory name", out.display()))?
        .to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("writing {}", out.display()))?;
    fill(tmp.path()).with_context(|| format!("writing {}", out.display()))?;
    // Swap in the new directory; the old one (if any) goes only after.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
    }
    if let Err(e) = std::fs::rename(tmp.path(), out) {
        if had_old {
            let _ = std::fs::rename(&old, out);
        }
        return Err(e).with_context(|| format!("renaming into {}", out.display()));
    }
    // In place: nothing left to clean up.
    let _ = tmp.keep();
    if had_old {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the previous {}", out.display()))?;
    }
    Ok(())
}

/// Every non-blank line of the JSON-lines file `path` as a `T`, with its
/// 1-based line number; errors name the file and line.
pub fn read_jsonl_numbered<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<(usize, T)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: bad JSON line", path.display(), i + 1))?;
        out.push((i + 1, value));
    }
    Ok(out)
}

/// Every non-blank line of the JSON-lines file `path` as a `T`; errors name
/// the file and line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    Ok(read_jsonl_numbered(path)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.jsonl");
        let mut f = AtomicFile::create(&path).unwrap();
        writeln!(f, "one").unwrap();
        assert!(!path.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(mode(&path), FILE_MODE);
        assert_eq!(entries(&dir.path().join("sub")), ["out.jsonl"]);

        // Dropped uncommitted: the old file stays, no temporary is left.
        let mut f = AtomicFile::create(&path).unwrap();
        writeln!(f, "two").unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(entries(&dir.path().join("sub")), ["out.jsonl"]);

        write_atomic(&path, b"three").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three");
    }

    #[test]
    fn directories_are_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        write_dir_atomic(&out, |d| Ok(std::fs::write(d.join("a"), "1")?)).unwrap();
        assert_eq!(entries(&out), ["a"]);
        assert_eq!(mode(&out), DIR_MODE);
        let err = write_dir_atomic(&out, |d| {
            std::fs::write(d.join("b"), "2")?;
            anyhow::bail!("disk full")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        assert_eq!(entries(&out), ["a"]);
        assert_eq!(entries(dir.path()), ["model"]);
        write_dir_atomic(&out, |d| Ok(std::fs::write(d.join("c"), "3")?)).unwrap();
        assert_eq!(entries(&out), ["c"]);
        assert_eq!(entries(dir.path()), ["model"]);
    }

    #[test]
    fn jsonl_skips_blank_lines_and_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"a\": 1}\n\n  \n{\"a\": 2}\n").unwrap();
        let got: Vec<(usize, serde_json::Value)> = read_jsonl_numbered(&path).unwrap();
        assert_eq!(
            got,
            [
                (1, serde_json::json!({"a": 1})),
                (4, serde_json::json!({"a": 2}))
            ]
        );
        std::fs::write(&path, "{\"a\": 1}\n\n{\"a\": \n").unwrap();
        let err = read_jsonl::<serde_json::Value>(&path).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("{}:3: bad JSON line", path.display())),
            "{err:#}"
        );
        let err = read_jsonl::<serde_json::Value>(&dir.path().join("none.jsonl")).unwrap_err();
        assert!(format!("{err:#}").contains("none.jsonl: cannot open"));
    }
}
