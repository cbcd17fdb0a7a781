//! What an estimator trains on, declared as one value: the [`DataPlan`].
//! The [`Batcher`](crate::batcher::Batcher) turns a plan and a step into the
//! [`GroupInputs`](crate::GroupInputs) the estimator's loss reads, so the
//! training loop never asks an estimator what kind it is.

use std::fmt;
use std::sync::Arc;

use tch::Tensor;

use crate::SamplingConfig;

/// The data one training step of an estimator needs.
#[derive(Clone)]
pub struct DataPlan {
    /// Each prompt's group of candidates: these sets, in this order (the
    /// group size is the sum of their sizes).
    pub candidates: Vec<Candidates>,
    /// Replace the proposal by a frozen copy of the current policy every this
    /// many steps (`None`: the proposal stays the prior).
    pub refresh_every: Option<usize>,
    /// Which of each group's candidates the loss reads, chosen from their
    /// rewards before the policy and prior score them (`None`: all of them).
    pub subset: Option<Subset>,
    /// Fill [`GroupInputs::reference_policy_logp`](crate::GroupInputs): the
    /// policy's log-prob (with gradient) of each prompt's reference output.
    pub reference_logp: bool,
}

/// One set of candidates per prompt.
#[derive(Debug, Clone)]
pub enum Candidates {
    /// `count` samples from `from`, drawn with the run's sampling settings
    /// or these.
    Sample {
        from: Distribution,
        count: i64,
        sampling: Option<SamplingConfig>,
    },
    /// The task's preference pair, chosen then rejected, with rewards 1 and 0
    /// (not scored). Steps then go through the task's pairs, not its prompts.
    DatasetPair,
    /// The prompt's reference (gold / SFT) output, scored like a sample. A
    /// task without references gets one prior sample per prompt, drawn once.
    Reference,
}

/// The distribution a set of samples is drawn from. Fixed candidates
/// (dataset pairs, references) carry `proposal_logp` 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// The frozen prior.
    Prior,
    /// The proposal: the prior until the first refresh, then the latest
    /// frozen copy of the policy.
    Proposal,
    /// After the first refresh, `round(prior_fraction · count)` samples from
    /// the prior and the rest from the proposal, each weighted by the mixture
    /// density `log(f·p(y) + (1−f)·Q(y))`; before it, all from the prior.
    Mixture { prior_fraction: f64 },
}

/// Chooses which candidates the loss reads from their rewards `[P, n]`:
/// indices `[P, k]`, deterministic in the seed.
pub type Subset = Arc<dyn Fn(&Tensor, u64) -> Tensor + Send + Sync>;

impl DataPlan {
    /// `count` samples per prompt from `from`, every one read by the loss.
    pub fn sample(from: Distribution, count: i64) -> DataPlan {
        DataPlan::of(vec![Candidates::Sample {
            from,
            count,
            sampling: None,
        }])
    }

    /// The task's preference pairs.
    pub fn dataset_pairs() -> DataPlan {
        DataPlan::of(vec![Candidates::DatasetPair])
    }

    pub fn of(candidates: Vec<Candidates>) -> DataPlan {
        DataPlan {
            candidates,
            refresh_every: None,
            subset: None,
            reference_logp: false,
        }
    }

    pub fn refresh_every(mut self, k: usize) -> DataPlan {
        self.refresh_every = (k > 0).then_some(k);
        self
    }

    pub fn subset(mut self, f: impl Fn(&Tensor, u64) -> Tensor + Send + Sync + 'static) -> Self {
        self.subset = Some(Arc::new(f));
        self
    }

    pub fn with_reference_logp(mut self) -> DataPlan {
        self.reference_logp = true;
        self
    }

    /// Whether the proposal is refreshed before `step` (0-based).
    pub fn refreshes_at(&self, step: usize) -> bool {
        self.refresh_every
            .is_some_and(|k| step > 0 && step.is_multiple_of(k))
    }

    /// Steps go through the task's preference pairs.
    pub fn uses_dataset_pairs(&self) -> bool {
        self.candidates
            .iter()
            .any(|c| matches!(c, Candidates::DatasetPair))
    }

    /// Reference outputs are read (as candidates or for their log-prob).
    pub fn uses_references(&self) -> bool {
        self.reference_logp
            || self
                .candidates
                .iter()
                .any(|c| matches!(c, Candidates::Reference))
    }
}

impl Candidates {
    pub fn count(&self) -> i64 {
        match self {
            Candidates::Sample { count, .. } => *count,
            Candidates::DatasetPair => 2,
            Candidates::Reference => 1,
        }
    }
}

impl fmt::Debug for DataPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPlan")
            .field("candidates", &self.candidates)
            .field("refresh_every", &self.refresh_every)
            .field("subset", &self.subset.as_ref().map(|_| "fn"))
            .field("reference_logp", &self.reference_logp)
            .finish()
    }
}
