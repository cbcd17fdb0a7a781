//! Tasks and datasets, each registered as a `task` plugin.

pub mod enumerable;

/// Referenced by the runner so the linker keeps this crate's registrations.
pub fn link() {}
