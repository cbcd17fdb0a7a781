//! Fault injection for the resume tests: `BRAIN_RS_FAILPOINT=NAME:K` makes the
//! process SIGKILL itself the K-th time it passes the point `NAME` (1-based),
//! so a test can stop a run at a chosen place (during sampling, inside a
//! training step, between two result files) as a crash or `kill -9` would,
//! with no cleanup. Unset, a point costs one environment lookup, done once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The armed point and its count, read once.
fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("BRAIN_RS_FAILPOINT").ok()?;
            let (name, k) = v.rsplit_once(':')?;
            Some((name.to_string(), k.parse().ok()?))
        })
        .as_ref()
}

/// Marks the point `name`; kills the process here when it is the armed one.
pub fn hit(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((armed, k)) = armed() else { return };
    if armed == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *k {
        eprintln!("failpoint `{name}` hit {k} time(s): killing this process (SIGKILL)");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
