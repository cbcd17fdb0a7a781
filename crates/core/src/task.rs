//! Tasks: where prompts come from, and (for toy tasks) the whole output space.

use tch::{Device, Tensor};

/// A prompt as token ids (and text, for tasks that have it).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub ids: Vec<i64>,
    pub text: Option<String>,
}

/// A tokenized preference pair, for estimators trained on dataset pairs
/// ("direct" DPO) instead of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPair {
    pub prompt: Prompt,
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
}

pub trait Task: Send + Sync {
    /// Vocabulary size the task's token ids live in, if the task fixes one.
    fn vocab_size(&self) -> Option<i64> {
        None
    }

    /// Prompts to train on.
    fn train_prompts(&self) -> &[Prompt];

    /// Held-out prompts to evaluate on.
    fn eval_prompts(&self) -> &[Prompt];

    /// Reference (gold / SFT) completion of each training prompt, aligned with
    /// [`Task::train_prompts`], for estimators that regularise toward it.
    fn train_references(&self) -> Option<&[Vec<i64>]> {
        None
    }

    /// Preference pairs to train on, for tasks built from a preference dataset.
    fn train_pairs(&self) -> Option<&[TokenPair]> {
        None
    }

    /// Reference (gold) completion of each held-out prompt, aligned with
    /// [`Task::eval_prompts`], for win rates against gold.
    fn eval_references(&self) -> Option<&[Vec<i64>]> {
        None
    }

    /// Completion length cap for sampling.
    fn max_new_tokens(&self) -> i64;

    /// End-of-sequence token, if completions may stop early.
    fn eos_token(&self) -> Option<i64> {
        None
    }

    /// Every possible completion `[M, L]`, for tasks whose output space is small
    /// enough to enumerate (exact evaluators need this).
    fn completion_space(&self, _device: Device) -> Option<Tensor> {
        None
    }
}

/// What building a task may need from the rest of the manifest.
#[derive(Clone)]
pub struct TaskContext {
    pub seed: u64,
    /// The policy's tokenizer, when it has one (text tasks need it).
    pub codec: Option<std::sync::Arc<dyn crate::TextCodec>>,
}

pub trait TaskSpec: Send + Sync {
    fn build(&self, ctx: &TaskContext) -> anyhow::Result<Box<dyn Task>>;

    /// Vocabulary size, for tasks that define their own token space (the
    /// model is built before the task, so this comes from the spec).
    fn vocab_size(&self) -> Option<i64> {
        None
    }

    /// Longest prompt + completion, for models with a fixed maximum length.
    fn max_len(&self) -> Option<i64> {
        None
    }
}
