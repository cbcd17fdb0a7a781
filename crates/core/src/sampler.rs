//! Where a run's samples are drawn when not in this process: a `[sampler.NAME]`
//! plugin (inference servers). Without one, the batcher draws with
//! [`crate::sampling::sample_part`].

use crate::sampling::{Part, SampleBatch, SamplingConfig};
use crate::task::Prompt;
use crate::Policy;

/// Draws completions elsewhere, with the log-densities of `policy` (the
/// trainer's copy of what is sampled) recomputed exactly, as the in-process
/// sampler records them.
pub trait SamplerBackend: Send + Sync {
    /// `n` completions per prompt (up to `max_new_tokens`, stopping at
    /// `eos`) from the prior when `from_prior`, else from the proposal (the
    /// prior until the first [`SamplerBackend::refresh`]); `policy` is that
    /// distribution's model here. `prompts` are `part` of the call (one
    /// data-parallel rank's block, from `part.first`; the whole call in one
    /// process): the draws for a prompt must not depend on which rank asks.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        policy: &dyn Policy,
        from_prior: bool,
        prompts: &[Prompt],
        n: i64,
        max_new_tokens: i64,
        eos: Option<i64>,
        config: &SamplingConfig,
        seed: u64,
        part: Part,
    ) -> anyhow::Result<SampleBatch>;

    /// The proposal is now `policy` (refresh number `version`): whatever
    /// draws it must serve it from now on. Every rank of `comm` calls it
    /// (with the same policy); rank 0 alone need tell the servers.
    fn refresh(
        &self,
        policy: &dyn Policy,
        version: u64,
        comm: &dyn align_distributed::Comm,
    ) -> anyhow::Result<()>;

    /// One line for `--dry-run` and logs: where samples come from.
    fn describe(&self) -> String;

    /// What to log of the latest draw (the servers' disagreement with the
    /// trainer's log-densities, say): the batcher adds it to the step's
    /// metrics.
    fn metrics(&self) -> crate::Metrics {
        crate::Metrics::new()
    }
}
