//! Evaluators turn a policy into metrics (KL to the posterior, win rates, …).

use tch::Device;

use crate::{GoodnessModel, Metrics, Policy, RewardModel, Task};

pub struct EvalContext<'a> {
    pub task: &'a dyn Task,
    pub prior: &'a dyn Policy,
    pub reward: &'a dyn RewardModel,
    pub goodness: &'a dyn GoodnessModel,
    /// The policy's tokenizer, for evaluators that work on text.
    pub codec: Option<&'a dyn crate::TextCodec>,
    pub device: Device,
}

pub trait Evaluator: Send + Sync {
    fn evaluate(&self, ctx: &EvalContext, policy: &dyn Policy) -> anyhow::Result<Metrics>;

    /// Rows that are not policies but belong in the table (e.g. the exact
    /// posterior), as `(row name, metrics)`.
    fn reference_rows(&self, _ctx: &EvalContext) -> anyhow::Result<Vec<(String, Metrics)>> {
        Ok(Vec::new())
    }
}
