//! Reward models, each registered as a `reward` plugin.

pub mod lexicon;
pub mod random_table;

/// Referenced by the runner so the linker keeps this crate's registrations.
pub fn link() {}
