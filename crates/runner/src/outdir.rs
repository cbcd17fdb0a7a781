//! The experiment's output directory: one writer at a time (an exclusive
//! lock, `.lock`, holding the writer's PID), and a marker, `run-state.json`,
//! that says whether the results in it are running, finished or failed, and
//! for which manifest (the SHA-256 of the resolved manifest). A rerun over an
//! unfinished run or another manifest's results refuses and says what to do.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use align_core::io::write_atomic;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::Digest;

const STATE_FILE: &str = "run-state.json";
const LOCK_FILE: &str = ".lock";

/// What this runner wrote into an output directory, removed when a run
/// starts over (nothing else there is touched).
const WRITTEN: &[&str] = &[
    "checkpoints",
    "steps",
    "samples",
    "plots",
    "runs.json",
    "summary.md",
    "summary.csv",
    "report.html",
    "manifest.resolved.toml",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Finished,
    Failed,
}

#[derive(Debug, Serialize, Deserialize)]
struct RunState {
    state: State,
    /// SHA-256 of the resolved manifest (overrides included).
    manifest_sha256: String,
    experiment: String,
    pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The SHA-256 of a resolved manifest, as `run-state.json` records it.
pub fn manifest_hash(resolved_toml: &str) -> String {
    sha2::Sha256::digest(resolved_toml.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `path` holds a finished run of the manifest whose resolved form
/// is `resolved_toml` (read without the lock: a writer there now fails at
/// [`OutDir::lock`] anyway). `runner sweep` skips such a job.
pub fn is_finished(path: &Path, resolved_toml: &str) -> bool {
    std::fs::read(path.join(STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<RunState>(&b).ok())
        .is_some_and(|s| {
            s.state == State::Finished && s.manifest_sha256 == manifest_hash(resolved_toml)
        })
}

/// An output directory this process holds the lock of (released on drop,
/// or by the kernel if the process dies).
pub struct OutDir {
    path: PathBuf,
    _lock: File,
    experiment: String,
    hash: String,
    /// The lock created the directory: if nothing else is written into it,
    /// it goes again on drop (a manifest error leaves no empty folder).
    created: bool,
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let only_lock = std::fs::read_dir(&self.path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .all(|e| e.file_name() == LOCK_FILE)
            })
            .unwrap_or(false);
        if only_lock {
            let _ = std::fs::remove_file(self.path.join(LOCK_FILE));
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// How [`OutDir::begin`] found the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Nothing to continue: the results are written from scratch.
    Fresh,
    /// An unfinished (or finished) run of this manifest: finished runs are
    /// read back and the others continue from their checkpoints.
    Resume,
}

impl OutDir {
    /// Creates `path` if it is missing and takes its lock; a directory
    /// another runner writes fails at once, naming that runner's PID. This
    /// is also the check that the directory can be written, done before any
    /// work.
    pub fn lock(path: &Path) -> anyhow::Result<OutDir> {
        if path.exists() && !path.is_dir() {
            anyhow::bail!(
                "the output {} exists and is not a directory: choose another --out",
                path.display()
            );
        }
        let created = !path.exists();
        std::fs::create_dir_all(path).with_context(|| {
            format!(
                "creating the output directory {} (choose a writable --out)",
                path.display()
            )
        })?;
        let lock_path = path.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| {
                format!(
                    "{} cannot be written (opening {}): choose a writable --out",
                    path.display(),
                    lock_path.display()
                )
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                anyhow::bail!(
                    "{} is being written by another runner (PID {}): wait for it to finish, or choose another --out",
                    path.display(),
                    if holder.is_empty() { "unknown" } else { holder }
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(OutDir {
            path: path.to_path_buf(),
            _lock: file,
            experiment: String::new(),
            hash: String::new(),
            created,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks what the directory holds against the manifest (its name and
    /// resolved form), clears this runner's earlier files when starting
    /// over, and marks the directory running.
    pub fn begin(
        &mut self,
        experiment: &str,
        resolved_toml: &str,
        resume: bool,
    ) -> anyhow::Result<Start> {
        let hash = manifest_hash(resolved_toml);
        let dir = self.path.display();
        let start = match self.read_state()? {
            Some(s) if s.manifest_sha256 != hash => anyhow::bail!(
                "{dir} holds a {} run of another manifest (`{}`, resolved manifest sha256 {}…; this one is {}…): \
                 choose another --out, or remove {dir} to start over",
                state_word(s.state),
                s.experiment,
                &s.manifest_sha256[..12.min(s.manifest_sha256.len())],
                &hash[..12]
            ),
            Some(s) if resume => {
                if s.state == State::Finished {
                    eprintln!("{dir}: every run had finished; rewriting the results from its checkpoints");
                }
                Start::Resume
            }
            Some(s) if s.state == State::Finished => Start::Fresh,
            Some(s) => anyhow::bail!(
                "{dir} holds an unfinished run of this manifest ({}, last written by PID {}{}): \
                 add --resume to continue it, or remove {dir} to start over",
                state_word(s.state),
                s.pid,
                s.error.map(|e| format!(", error: {e}")).unwrap_or_default()
            ),
            None => {
                self.check_unmarked(experiment)?;
                if resume {
                    eprintln!("{dir}: nothing to resume; starting the experiment");
                }
                Start::Fresh
            }
        };
        if start == Start::Fresh {
            self.clear()?;
        }
        self.experiment = experiment.to_string();
        self.hash = hash;
        self.mark(State::Running, None)?;
        Ok(start)
    }

    /// A directory without a marker is either empty, or results of this
    /// experiment written before markers existed (`runs.json` names it);
    /// anything else is not this runner's to overwrite.
    fn check_unmarked(&self, experiment: &str) -> anyhow::Result<()> {
        let others: Vec<String> = std::fs::read_dir(&self.path)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE)
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let runs = align_report::format::read_runs(&self.path).ok();
        match runs {
            Some(r) if r.experiment == experiment => Ok(()),
            Some(r) => anyhow::bail!(
                "{} holds the results of another experiment (`{}`): choose another --out, or remove it",
                self.path.display(),
                r.experiment
            ),
            None => anyhow::bail!(
                "{} is not empty ({} …) and holds no results of this runner: choose another --out, or empty it",
                self.path.display(),
                others[..others.len().min(3)].join(", ")
            ),
        }
    }

    /// Removes what an earlier run of this runner wrote (listed in `WRITTEN`).
    fn clear(&self) -> anyhow::Result<()> {
        for name in WRITTEN {
            let p = self.path.join(name);
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let removed = if meta.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.with_context(|| format!("removing the earlier {}", p.display()))?;
        }
        Ok(())
    }

    fn read_state(&self) -> anyhow::Result<Option<RunState>> {
        let p = self.path.join(STATE_FILE);
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "{} is not a run state this runner wrote: remove it to start over",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    fn mark(&self, state: State, error: Option<String>) -> anyhow::Result<()> {
        let s = RunState {
            state,
            manifest_sha256: self.hash.clone(),
            experiment: self.experiment.clone(),
            pid: std::process::id(),
            error,
        };
        write_atomic(
            &self.path.join(STATE_FILE),
            serde_json::to_string_pretty(&s)?.as_bytes(),
        )
    }

    pub fn finish(&self) -> anyhow::Result<()> {
        self.mark(State::Finished, None)
    }

    /// Marks the run failed with `error` (a rerun then needs --resume).
    pub fn fail(&self, error: &anyhow::Error) {
        if let Err(e) = self.mark(State::Failed, Some(format!("{error:#}"))) {
            eprintln!(
                "warning: could not mark {} failed: {e:#}",
                self.path.display()
            );
        }
    }
}

fn state_word(s: State) -> &'static str {
    match s {
        State::Running => "running (or killed)",
        State::Finished => "finished",
        State::Failed => "failed",
    }
}
