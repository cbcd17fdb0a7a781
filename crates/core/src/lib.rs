//! Core of the alignment workspace: the traits every plugin implements, the
//! plugin registry, the manifest, and the shared tensor kernels (sequence
//! log-probs, sampling). Plugin crates depend on this crate only.

pub mod batcher;
pub mod build;
pub mod device;
pub mod estimator;
pub mod evaluator;
pub mod failpoint;
pub mod io;
pub mod logprob;
pub mod manifest;
pub mod metrics;
pub mod optim;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod registry;
pub mod reward;
pub mod sample_cache;
pub mod sampler;
pub mod sampling;
pub mod task;
#[cfg(test)]
mod test_policies;
pub mod text;

pub use device::DeviceChoice;
pub use estimator::{pair_mask, pair_mean, Estimator, GroupInputs, Means, Pairs};
pub use evaluator::{EvalConfig, EvalContext, Evaluation, Evaluator, HeldOut};
pub use metrics::Metrics;
pub use plan::{Candidates, DataPlan, Distribution};
pub use policy::{Decoder, ModelContext, ModelSpec, Policy};
pub use registry::{Plugin, PluginError, PluginKind};
pub use reward::{GoodnessModel, RewardModel, RewardSpec};
pub use sampler::SamplerBackend;
pub use sampling::{SampleBatch, SamplingConfig};
pub use task::{Task, TaskContext, TaskSpec};
pub use text::{SampleText, TextCodec};

// Re-exported so plugin crates submit registrations without naming inventory.
pub use inventory;
