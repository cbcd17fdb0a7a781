//! Language models on tch, each registered as a `model` plugin.

pub mod tabular;

/// Referenced by the runner so the linker keeps this crate's registrations.
pub fn link() {}
