//! Files in and out.
//!
//! Writes never destroy what they should not. [`AtomicFile`] (and
//! [`write_atomic`], which uses it) looks at what is at the destination
//! first, following symbolic links (the link stays, its target is written):
//!
//! - nothing, or a regular file: a temporary file in the target's own
//!   directory is written, fsynced and renamed into place, so a crash never
//!   leaves a half-written result behind;
//! - a FIFO or a character device (`/dev/null`, `/dev/stdout`): opened and
//!   written through, never renamed over or removed;
//! - a directory, socket or block device: refused, naming the path.
//!
//! [`write_dir_atomic`] fills a whole directory the same way (a temporary
//! sibling renamed into place); it replaces only a directory, and
//! [`write_dir_atomic_checked`] lets the caller refuse an existing directory
//! it did not write. [`check_writable`] and [`check_writable_dir`] say,
//! before any work, whether a write would be possible.
//!
//! Reads: [`read_jsonl`] reads a JSON-lines file, naming file and line in
//! its errors.

use std::fs::{File, Metadata};
use std::io::{BufRead, BufWriter, ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;

/// Results are ordinary files (0644) and directories (0755); temporary ones
/// are created private. A regular file that is replaced keeps its own mode.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// The most links followed from one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The directory `path` goes into (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The directory `path` goes into, created if missing.
fn parent_dir(path: &Path) -> anyhow::Result<&Path> {
    let dir = parent_of(path);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    Ok(dir)
}

/// What a destination is, once links are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    Regular,
    Directory,
    /// A FIFO or character device: written through.
    Stream,
    /// A socket or block device: never written.
    Other(&'static str),
}

/// A destination path with its chain of symbolic links followed.
struct Resolved<'a> {
    /// The path as given.
    path: &'a Path,
    /// What the links end at (`path` itself when it is no link).
    target: PathBuf,
    /// The target's metadata (not following links); `None` when missing.
    meta: Option<Metadata>,
}

impl Resolved<'_> {
    fn kind(&self) -> Kind {
        let Some(meta) = &self.meta else {
            return Kind::Missing;
        };
        let t = meta.file_type();
        if t.is_file() {
            Kind::Regular
        } else if t.is_dir() {
            Kind::Directory
        } else if t.is_fifo() || t.is_char_device() {
            Kind::Stream
        } else if t.is_block_device() {
            Kind::Other("block device")
        } else if t.is_socket() {
            Kind::Other("socket")
        } else {
            Kind::Other("special file")
        }
    }

    /// The path for messages: `out (a link to target)` when a link was followed.
    fn shown(&self) -> String {
        if self.target == self.path {
            self.path.display().to_string()
        } else {
            format!(
                "{} (a link to {})",
                self.path.display(),
                self.target.display()
            )
        }
    }
}

fn is_missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// Follows `path`'s symbolic links (if any) to what they end at. A missing
/// path, or one under something that is not a directory, resolves to
/// [`Kind::Missing`] (the caller finds out why when it writes or checks).
fn resolve(path: &Path) -> anyhow::Result<Resolved<'_>> {
    let found = |target: PathBuf, meta| Resolved { path, target, meta };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_symlink() => {
            return Ok(found(path.to_path_buf(), Some(meta)))
        }
        Ok(_) => {}
        Err(e) if is_missing(&e) => return Ok(found(path.to_path_buf(), None)),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot inspect", path.display())),
    }
    // A link: the kernel follows it, /proc's links to pipes and open files
    // (`/dev/stdout`) included, which name no path a program could follow.
    match std::fs::metadata(path) {
        Ok(meta) => {
            let t = meta.file_type();
            // A file or directory is replaced where it really is; a FIFO or
            // device is opened through the link.
            let target = if t.is_file() || t.is_dir() {
                std::fs::canonicalize(path)
                    .with_context(|| format!("{}: cannot follow the link", path.display()))?
            } else {
                path.to_path_buf()
            };
            Ok(found(target, Some(meta)))
        }
        Err(e) if is_missing(&e) => dangling(path),
        Err(e) => Err(e).with_context(|| format!("{}: cannot follow the link", path.display())),
    }
}

/// A link to nothing: the path its chain of links ends at, to be created.
fn dangling(path: &Path) -> anyhow::Result<Resolved<'_>> {
    let mut target = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target)
                    .with_context(|| format!("{}: cannot read the link", target.display()))?;
                target = parent_of(&target).join(link);
            }
            Ok(_) => bail!("{}: changed while being inspected", path.display()),
            Err(e) if is_missing(&e) => {
                return Ok(Resolved {
                    path,
                    target,
                    meta: None,
                })
            }
            Err(e) => return Err(e).with_context(|| format!("{}: cannot inspect", path.display())),
        }
    }
    bail!(
        "{}: more than {MAX_LINKS} symbolic links in a row (a loop?)",
        path.display()
    )
}

/// The refusal for a destination a file cannot be written to.
fn refuse_file(r: &Resolved, kind: Kind) -> anyhow::Error {
    match kind {
        Kind::Directory => anyhow::anyhow!(
            "{}: is a directory, not a file; refusing to write over it (give a file path, e.g. {})",
            r.shown(),
            r.path.join("out.jsonl").display()
        ),
        Kind::Other(what) => anyhow::anyhow!(
            "{}: is a {what}; refusing to write to it (only regular files are replaced, and \
             FIFOs and character devices written to; give a file path)",
            r.shown()
        ),
        _ => unreachable!("{kind:?} is written"),
    }
}

/// renameat2(2) with RENAME_EXCHANGE: `a` and `b` trade places atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (a, b) = (
        CString::new(a.as_os_str().as_bytes())?,
        CString::new(b.as_os_str().as_bytes())?,
    );
    // SAFETY: both are NUL-terminated strings that outlive the call, which
    // only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// File systems (or kernels) without RENAME_EXCHANGE.
fn exchange_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

/// access(2): whether this process may write (and, for a directory, enter)
/// `path`. Unlike permission bits this is right for root, ACLs and
/// read-only file systems.
fn access_writable(path: &Path, dir: bool) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mode = if dir {
        libc::W_OK | libc::X_OK
    } else {
        libc::W_OK
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which
    // only reads it.
    if unsafe { libc::access(c.as_ptr(), mode) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a new entry can be made at `target`: its nearest existing
/// ancestor (missing directories are created on writing) is a directory
/// this process may write.
fn creatable(shown: &str, target: &Path) -> anyhow::Result<()> {
    let mut dir = parent_of(target);
    loop {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {
                return access_writable(dir, true).with_context(|| {
                    format!(
                        "{shown}: cannot be written: no permission to create files in {}",
                        dir.display()
                    )
                })
            }
            Ok(_) => bail!(
                "{shown}: cannot be written: {} is not a directory",
                dir.display()
            ),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                match dir.parent() {
                    Some(up) => {
                        dir = if up.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            up
                        }
                    }
                    None => bail!(
                        "{shown}: cannot be written: {} does not exist",
                        dir.display()
                    ),
                }
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "{shown}: cannot be written: cannot inspect {}",
                        dir.display()
                    )
                })
            }
        }
    }
}

/// Whether [`AtomicFile`] (or [`write_atomic`]) could write `path`, checked
/// before any work so that a bad `--out` fails fast, with an error naming
/// it: a regular file must be writable and in a directory this process may
/// write (it is replaced there); a FIFO or character device must be
/// writable; a missing file's nearest existing ancestor must be a writable
/// directory. Creates nothing, and opens nothing (a FIFO's reader would see
/// end-of-file).
pub fn check_writable(path: &Path) -> anyhow::Result<()> {
    let r = resolve(path)?;
    let shown = r.shown();
    match r.kind() {
        Kind::Missing => creatable(&shown, &r.target),
        Kind::Regular => {
            access_writable(&r.target, false)
                .with_context(|| format!("{shown}: cannot be written (read-only?)"))?;
            creatable(&shown, &r.target)
        }
        Kind::Stream => {
            access_writable(&r.target, false).with_context(|| format!("{shown}: cannot be written"))
        }
        kind => Err(refuse_file(&r, kind)),
    }
}

/// Whether [`write_dir_atomic`] could write the directory `path`: it is
/// missing or a directory (links followed), and its parent (or nearest
/// existing ancestor) is a directory this process may write. Creates
/// nothing.
pub fn check_writable_dir(path: &Path) -> anyhow::Result<()> {
    let r = resolve(path)?;
    match r.kind() {
        Kind::Missing | Kind::Directory => creatable(&r.shown(), &r.target),
        kind => Err(refuse_dir(&r, kind)),
    }
}

/// The refusal for a directory destination that holds something else.
fn refuse_dir(r: &Resolved, kind: Kind) -> anyhow::Error {
    let what = match kind {
        Kind::Regular => "file",
        Kind::Stream => "FIFO or character device",
        Kind::Other(what) => what,
        Kind::Missing | Kind::Directory => unreachable!("{kind:?} is writable"),
    };
    anyhow::anyhow!(
        "{}: is a {what}, not a directory; refusing to replace it (move it away or choose \
         another directory)",
        r.shown()
    )
}

/// Where an [`AtomicFile`]'s bytes go.
enum Sink {
    /// A temporary file beside `target` (the regular file, or nothing, that
    /// links end at), renamed over it on commit.
    Replace {
        tmp: BufWriter<tempfile::NamedTempFile>,
        target: PathBuf,
    },
    /// A FIFO or character device, written as the bytes come.
    Through(BufWriter<File>),
}

/// A file written in place of `path` only on [`AtomicFile::commit`]: until
/// then the bytes go to a temporary file in the directory of `path` (of the
/// file it links to, for a symbolic link: the link is kept), which is
/// removed if the `AtomicFile` is dropped uncommitted (the target is left
/// untouched). A FIFO or character device at `path` is instead opened (a
/// FIFO waits for its reader) and written through: what was written before
/// a drop has been written.
pub struct AtomicFile {
    path: PathBuf,
    sink: Sink,
}

impl AtomicFile {
    /// Starts writing `path` (its directory is created if missing); an error
    /// naming it if it is a directory or another file that is never written.
    pub fn create(path: impl AsRef<Path>) -> anyhow::Result<AtomicFile> {
        let path = path.as_ref();
        let r = resolve(path)?;
        let sink = match r.kind() {
            Kind::Missing | Kind::Regular => {
                let mode = match &r.meta {
                    Some(meta) => meta.permissions().mode() & 0o777,
                    None => FILE_MODE,
                };
                let dir = parent_dir(&r.target)
                    .with_context(|| format!("{}: cannot be written", r.shown()))?;
                let tmp = tempfile::Builder::new()
                    .prefix(".")
                    .suffix(".tmp")
                    .tempfile_in(dir)
                    .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("writing {}", path.display()))?;
                Sink::Replace {
                    tmp: BufWriter::new(tmp),
                    target: r.target.clone(),
                }
            }
            Kind::Stream => {
                // No create, no truncate: a FIFO or device is only written.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&r.target)
                    .with_context(|| format!("{}: cannot open for writing", r.shown()))?;
                let t = file
                    .metadata()
                    .with_context(|| format!("{}: cannot inspect", r.shown()))?
                    .file_type();
                if !(t.is_fifo() || t.is_char_device()) {
                    bail!(
                        "{}: changed while being opened (no longer a FIFO or device); not written",
                        r.shown()
                    );
                }
                Sink::Through(BufWriter::new(file))
            }
            kind => return Err(refuse_file(&r, kind)),
        };
        Ok(AtomicFile {
            path: path.to_path_buf(),
            sink,
        })
    }

    /// Flushes, fsyncs and moves the finished file into place (a FIFO or
    /// device: flushes).
    pub fn commit(self) -> anyhow::Result<()> {
        let AtomicFile { path, sink } = self;
        let (tmp, target) = match sink {
            Sink::Through(mut out) => {
                return out
                    .flush()
                    .with_context(|| format!("writing {}", path.display()))
            }
            Sink::Replace { tmp, target } => (tmp, target),
        };
        let tmp = tmp
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|tmp| tmp.as_file().sync_all().map(|_| tmp))
            .with_context(|| format!("writing {}", path.display()))?;
        // What is there may have changed while we wrote: replace only a
        // regular file (or nothing) still, at the same place.
        let now = resolve(&path)?;
        match now.kind() {
            Kind::Missing | Kind::Regular if now.target == target => {}
            Kind::Missing | Kind::Regular => bail!(
                "{}: changed while being written (now {}); not written",
                path.display(),
                now.shown()
            ),
            _ => bail!(
                "{}: changed while being written (no longer a regular file); not written",
                now.shown()
            ),
        }
        tmp.persist(&target)
            .with_context(|| format!("moving the finished file into place at {}", now.shown()))?;
        // The rename itself survives a crash once the directory is synced.
        if let Ok(dir) = File::open(parent_of(&target)) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn out(&mut self) -> &mut dyn Write {
        match &mut self.sink {
            Sink::Replace { tmp, .. } => tmp,
            Sink::Through(out) => out,
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out().flush()
    }
}

/// Writes `contents` to `path` atomically (see [`AtomicFile`]).
pub fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    file.commit()
}

/// Writes the directory `out` whole or not at all: `fill` writes its files
/// into a temporary sibling directory, which then replaces `out` (an
/// existing directory is removed only once the new one is in place; a link
/// is followed and its target replaced). If `fill` fails, the temporary
/// directory is removed and `out` is left untouched. `out` that exists and
/// is not a directory is refused before `fill`, untouched.
///
/// Any existing directory is replaced: a caller that may find one it did
/// not write uses [`write_dir_atomic_checked`].
pub fn write_dir_atomic(
    out: &Path,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    write_dir_atomic_checked(out, |_| Ok(()), fill)
}

/// [`write_dir_atomic`], replacing an existing directory only if
/// `may_replace(dir)` agrees (its error, which should name the directory
/// and the fix, is returned and nothing is touched). It is asked before
/// `fill` and again just before the swap. Nothing is left behind on any
/// error: no temporary directory, no moved-aside old one (unless putting
/// it back fails, which the error then says).
pub fn write_dir_atomic_checked(
    out: &Path,
    may_replace: impl Fn(&Path) -> anyhow::Result<()>,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let check = |r: &Resolved| -> anyhow::Result<bool> {
        match r.kind() {
            Kind::Missing => Ok(false),
            Kind::Directory => may_replace(&r.target).map(|()| true),
            kind => Err(refuse_dir(r, kind)),
        }
    };
    let r = resolve(out)?;
    check(&r)?;
    let target = r.target.clone();
    let name = target
        .file_name()
        .with_context(|| format!("{}: not a directory name", r.shown()))?
        .to_string_lossy()
        .into_owned();
    let parent =
        parent_dir(&target).with_context(|| format!("{}: cannot be written", r.shown()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("writing {}", out.display()))?;
    fill(tmp.path()).with_context(|| format!("writing {}", out.display()))?;

    // What is there may have changed while `fill` ran: check again.
    let now = resolve(out)?;
    if now.target != target {
        bail!(
            "{}: changed while being written (now {}); not written",
            out.display(),
            now.shown()
        );
    }
    let had_old = check(&now)?;
    // Where the file system can, swap the two in one step: a process killed
    // at any point leaves either the old directory or the new one in place.
    if had_old {
        match exchange(tmp.path(), &target) {
            Ok(()) => {
                // `tmp` now holds the previous version.
                let previous = tmp.keep();
                std::fs::remove_dir_all(&previous).with_context(|| {
                    format!(
                        "{} is written, but its previous version, swapped to {}, could not be \
                         removed: remove it yourself",
                        now.shown(),
                        previous.display()
                    )
                })?;
                if let Ok(dir) = File::open(parent) {
                    let _ = dir.sync_all();
                }
                return Ok(());
            }
            Err(e) if exchange_unsupported(&e) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("swapping in {}", now.shown())))
            }
        }
    }
    // Otherwise in two renames; the old one (if any) goes only after.
    let old = unused_name(parent, &format!(".{name}.old-{}", std::process::id()));
    if had_old {
        std::fs::rename(&target, &old).with_context(|| format!("moving {} aside", now.shown()))?;
    }
    if let Err(e) = std::fs::rename(tmp.path(), &target) {
        let err = anyhow::Error::new(e).context(format!("renaming into {}", now.shown()));
        if had_old {
            if let Err(back) = std::fs::rename(&old, &target) {
                return Err(err.context(format!(
                    "and the previous {} could not be moved back from {} ({back}): move it back yourself",
                    target.display(),
                    old.display()
                )));
            }
        }
        return Err(err);
    }
    // In place: nothing left to clean up.
    let _ = tmp.keep();
    if had_old {
        std::fs::remove_dir_all(&old).with_context(|| {
            format!(
                "{} is written, but its previous version, moved aside to {}, could not be \
                 removed: remove it yourself",
                now.shown(),
                old.display()
            )
        })?;
    }
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// `dir/stem`, or `dir/stem.N` for the first N with nothing there.
fn unused_name(dir: &Path, stem: &str) -> PathBuf {
    let free = |p: &Path| matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == ErrorKind::NotFound);
    let first = dir.join(stem);
    if free(&first) {
        return first;
    }
    (1..)
        .map(|n| dir.join(format!("{stem}.{n}")))
        .find(|p| free(p))
        .expect("some name is free")
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
    use std::os::unix::fs::MetadataExt;

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

    /// Replacing a directory is one atomic swap where the file system has
    /// RENAME_EXCHANGE (a kill between two renames would leave neither).
    #[test]
    fn exchange_swaps_two_directories_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x"), "").unwrap();
        std::fs::write(b.join("y"), "").unwrap();
        match exchange(&a, &b) {
            Ok(()) => {
                assert_eq!(entries(&a), ["y"]);
                assert_eq!(entries(&b), ["x"]);
            }
            Err(e) => assert!(exchange_unsupported(&e), "{e}"),
        }
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

    fn mkfifo(p: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(status.success(), "mkfifo {}", p.display());
    }

    fn is_fifo(p: &Path) -> bool {
        std::fs::symlink_metadata(p).unwrap().file_type().is_fifo()
    }

    /// Reads the FIFO `p` to its end on a thread; `join` waits (at most a
    /// minute, so a wrong implementation fails rather than hangs).
    fn fifo_reader(p: &Path) -> std::sync::mpsc::Receiver<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = p.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read_to_string(&p).unwrap());
        });
        rx
    }

    fn join(rx: std::sync::mpsc::Receiver<String>) -> String {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the FIFO's reader got no end-of-file")
    }

    fn err_of<T>(r: anyhow::Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_replaced_file_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.jsonl");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(entries(dir.path()), ["private.jsonl"]);
    }

    /// A link is kept; the file it points to is replaced in its own
    /// directory (no temporary beside the link), relative links included;
    /// a dangling link's target is created.
    #[test]
    fn a_symlink_is_followed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (links, files) = (dir.path().join("links"), dir.path().join("files"));
        std::fs::create_dir(&links).unwrap();
        std::fs::create_dir(&files).unwrap();
        let target = files.join("real.jsonl");
        std::fs::write(&target, "old").unwrap();
        let link = links.join("out.jsonl");
        std::os::unix::fs::symlink("../files/real.jsonl", &link).unwrap();
        // A link to a link.
        let link2 = links.join("out2.jsonl");
        std::os::unix::fs::symlink(&link, &link2).unwrap();

        let mut f = AtomicFile::create(&link2).unwrap();
        writeln!(f, "new").unwrap();
        // The temporary is beside the target, not the link.
        assert_eq!(entries(&links), ["out.jsonl", "out2.jsonl"]);
        assert_eq!(entries(&files).len(), 2);
        f.commit().unwrap();
        for l in [&link, &link2] {
            assert!(std::fs::symlink_metadata(l)
                .unwrap()
                .file_type()
                .is_symlink());
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
        assert_eq!(entries(&links), ["out.jsonl", "out2.jsonl"]);
        assert_eq!(entries(&files), ["real.jsonl"]);

        let dangling = links.join("later.jsonl");
        std::os::unix::fs::symlink(files.join("later.jsonl"), &dangling).unwrap();
        check_writable(&dangling).unwrap();
        write_atomic(&dangling, b"made").unwrap();
        assert!(std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(files.join("later.jsonl")).unwrap(),
            "made"
        );

        // A loop is an error, not a hang.
        let (a, b) = (links.join("a"), links.join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let err = err_of(AtomicFile::create(&a));
        assert!(
            err.starts_with(&format!("{}: cannot follow the link", a.display()))
                && err.contains("symbolic links"),
            "{err}"
        );
    }

    /// A FIFO (directly or through a link) is opened and written, never
    /// replaced; then, the same path proven, a character device.
    #[test]
    fn fifos_and_devices_are_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        check_writable(&fifo).unwrap();
        let rx = fifo_reader(&fifo);
        let mut f = AtomicFile::create(&fifo).unwrap();
        writeln!(f, "one").unwrap();
        writeln!(f, "two").unwrap();
        f.commit().unwrap();
        assert_eq!(join(rx), "one\ntwo\n");
        assert!(is_fifo(&fifo), "the FIFO was replaced");
        assert_eq!(entries(dir.path()), ["pipe"]);

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let rx = fifo_reader(&fifo);
        write_atomic(&link, b"three").unwrap();
        assert_eq!(join(rx), "three");
        assert!(is_fifo(&fifo));
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(entries(dir.path()), ["link", "pipe"]);

        // /dev/null is a character device: written through like the FIFO
        // above (only ever through a link in the temporary directory, and
        // only once it is known to be taken for one).
        let null = Path::new("/dev/null");
        let before = std::fs::symlink_metadata(null).unwrap();
        assert!(before.file_type().is_char_device());
        assert_eq!(resolve(null).unwrap().kind(), Kind::Stream);
        let to_null = dir.path().join("null");
        std::os::unix::fs::symlink(null, &to_null).unwrap();
        assert_eq!(resolve(&to_null).unwrap().kind(), Kind::Stream);
        check_writable(&to_null).unwrap();
        write_atomic(&to_null, b"discarded").unwrap();
        let after = std::fs::symlink_metadata(null).unwrap();
        assert!(after.file_type().is_char_device());
        assert_eq!(
            (after.ino(), after.rdev()),
            (before.ino(), before.rdev()),
            "/dev/null was replaced"
        );
        assert_eq!(entries(dir.path()), ["link", "null", "pipe"]);
    }

    /// A directory or socket is refused by name, untouched, and nothing is
    /// left beside it.
    #[test]
    fn directories_and_other_special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("results");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("keep.txt"), "mine").unwrap();
        for r in [
            AtomicFile::create(&d).map(|_| ()),
            write_atomic(&d, b"x"),
            check_writable(&d),
        ] {
            let err = err_of(r);
            assert!(
                err.starts_with(&format!("{}: is a directory, not a file", d.display()))
                    && err.contains("give a file path"),
                "{err}"
            );
        }
        let link = dir.path().join("to-results");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let err = err_of(write_atomic(&link, b"x"));
        assert!(
            err.contains(&format!(
                "{} (a link to {})",
                link.display(),
                d.canonicalize().unwrap().display()
            )) && err.contains("is a directory"),
            "{err}"
        );
        assert_eq!(entries(&d), ["keep.txt"]);
        assert_eq!(std::fs::read_to_string(d.join("keep.txt")).unwrap(), "mine");

        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for r in [write_atomic(&sock, b"x"), check_writable(&sock)] {
            let err = err_of(r);
            assert!(
                err.starts_with(&format!("{}: is a socket; refusing", sock.display())),
                "{err}"
            );
        }
        assert!(std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket());
        assert_eq!(entries(dir.path()), ["results", "sock", "to-results"]);
    }

    /// Whether a write would work is known before any work, and checking
    /// creates nothing. (Under a regular file, so that it holds for root.)
    #[test]
    fn writability_is_checked_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file.txt");
        std::fs::write(&file, "x").unwrap();
        check_writable(&file).unwrap();
        check_writable(&dir.path().join("new/sub/out.jsonl")).unwrap();
        check_writable_dir(&dir.path().join("new/model")).unwrap();
        check_writable_dir(dir.path()).unwrap();
        let under = file.join("out.jsonl");
        let err = err_of(check_writable(&under));
        assert_eq!(
            err,
            format!(
                "{}: cannot be written: {} is not a directory",
                under.display(),
                file.display()
            )
        );
        let err = err_of(check_writable(&file.join("a/b/out.jsonl")));
        assert!(
            err.ends_with(&format!("{} is not a directory", file.display())),
            "{err}"
        );
        // Writing there fails too, naming the path, and leaves the file be.
        assert!(err_of(write_atomic(&under, b"x")).contains(&under.display().to_string()));
        let err = err_of(check_writable_dir(&file));
        assert!(
            err.starts_with(&format!("{}: is a file, not a directory", file.display())),
            "{err}"
        );
        assert!(err_of(check_writable_dir(&file.join("model"))).contains("is not a directory"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
        assert_eq!(entries(dir.path()), ["file.txt"]);
    }

    /// Only a directory is replaced; anything else at `out` is refused before
    /// `fill` runs, untouched, with nothing left beside it.
    #[test]
    fn write_dir_refuses_what_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model");
        std::fs::write(&file, "a file").unwrap();
        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        for (out, what) in [(&file, "file"), (&fifo, "FIFO or character device")] {
            let mut filled = false;
            let err = err_of(write_dir_atomic(out, |d| {
                filled = true;
                Ok(std::fs::write(d.join("a"), "1")?)
            }));
            assert!(
                err.starts_with(&format!(
                    "{}: is a {what}, not a directory; refusing to replace it (move it away",
                    out.display()
                )),
                "{err}"
            );
            assert!(!filled, "filled before refusing");
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "a file");
        assert!(is_fifo(&fifo));
        assert_eq!(entries(dir.path()), ["model", "pipe"]);

        // Something that turns up while `fill` runs is refused at the swap.
        let out = dir.path().join("late");
        let err = err_of(write_dir_atomic(&out, |d| {
            std::fs::write(d.join("a"), "1")?;
            Ok(std::fs::write(&out, "arrived")?)
        }));
        assert!(err.contains("is a file, not a directory"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "arrived");
        assert_eq!(entries(dir.path()), ["late", "model", "pipe"]);
    }

    /// A link to a directory is kept, the directory it points to replaced.
    #[test]
    fn write_dir_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("store/model");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("old"), "0").unwrap();
        let link = dir.path().join("model");
        std::os::unix::fs::symlink("store/model", &link).unwrap();
        check_writable_dir(&link).unwrap();
        write_dir_atomic(&link, |d| Ok(std::fs::write(d.join("new"), "1")?)).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(entries(&real), ["new"]);
        assert_eq!(entries(&dir.path().join("store")), ["model"]);
        assert_eq!(entries(dir.path()), ["model", "store"]);
    }

    /// The caller's check decides whether an existing directory goes:
    /// refused before `fill` or at the swap, it is untouched and nothing is
    /// left beside it.
    #[test]
    fn write_dir_replaces_only_what_the_caller_allows() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let ours = |d: &Path| -> anyhow::Result<()> {
            anyhow::ensure!(
                d.join("marker").exists(),
                "{}: not ours; move it away",
                d.display()
            );
            Ok(())
        };
        let mut filled = false;
        let err = err_of(write_dir_atomic_checked(&out, ours, |_| {
            filled = true;
            Ok(())
        }));
        assert_eq!(err, format!("{}: not ours; move it away", out.display()));
        assert!(!filled);
        assert_eq!(entries(&out), ["notes.txt"]);
        assert_eq!(entries(dir.path()), ["model"]);

        // Allowed before `fill`, refused at the swap (it changed meanwhile).
        std::fs::write(out.join("marker"), "").unwrap();
        let err = err_of(write_dir_atomic_checked(&out, ours, |d| {
            std::fs::write(d.join("a"), "1")?;
            Ok(std::fs::remove_file(out.join("marker"))?)
        }));
        assert!(err.contains("not ours"), "{err}");
        assert_eq!(entries(&out), ["notes.txt"]);
        assert_eq!(entries(dir.path()), ["model"]);

        std::fs::write(out.join("marker"), "").unwrap();
        write_dir_atomic_checked(&out, ours, |d| {
            std::fs::write(d.join("marker"), "")?;
            Ok(std::fs::write(d.join("b"), "2")?)
        })
        .unwrap();
        assert_eq!(entries(&out), ["b", "marker"]);
        assert_eq!(entries(dir.path()), ["model"]);
    }
}
