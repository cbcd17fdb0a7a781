//! Evaluators, each registered as an `evaluator` plugin.

pub mod exact_kl;
pub mod reward_stats;

/// Referenced by the runner so the linker keeps this crate's registrations.
pub fn link() {}
