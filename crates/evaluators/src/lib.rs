//! Evaluators, each registered as an `evaluator` plugin.

pub mod exact_kl;
pub mod reward_stats;
mod winrate_llm;
pub mod winrate_rm;
