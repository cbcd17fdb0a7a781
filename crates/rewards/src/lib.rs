//! Reward models, each registered as a `reward` plugin.
//!
//! - [`lexicon`]: VADER's sentiment lexicon (no training).
//! - [`random_table`]: random rewards for enumerable toy tasks.
//! - [`hf_rm`]: trained scalar-head reward models ([`scalar`]) from HF
//!   directories, trained by [`training`] (Bradley–Terry or classifier loss);
//!   [`pipeline`] is `runner train-rm` (manifest → HF directory + results).

pub mod hf_rm;
pub mod lexicon;
pub mod pipeline;
pub mod random_table;
pub mod scalar;
pub mod training;
