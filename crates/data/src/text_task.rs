//! Text tasks: prompts (and gold references) as text, tokenized with the
//! policy's tokenizer when the task is built. The `sentiment` task plugin:
//! continue movie-review openings; the gold continuation is the rest of a
//! positively rated review.

use std::sync::Arc;

use align_core::manifest::InputPath;
use align_core::registry::{
    build_from_config, build_resolving, Built, ConfigDeserializer, Constructor,
};
use align_core::task::{Prompt, TokenPair};
use align_core::{Plugin, PluginError, Task, TaskContext, TaskSpec, TextCodec};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::sentiment::{SentimentConfig, SentimentData};
use crate::{
    Demonstration, FileDatasetConfig, FileFormat, FileRecords, PreferencePair, Split, SplitConfig,
};

/// Prompts and references tokenized once, at build time.
pub struct TextTask {
    train: Vec<Prompt>,
    train_references: Vec<Vec<i64>>,
    eval: Vec<Prompt>,
    eval_references: Vec<Vec<i64>>,
    pairs: Vec<TokenPair>,
    max_new_tokens: i64,
    eos: Option<i64>,
}

impl TextTask {
    /// Tokenizes `train` / `eval` demonstrations with `codec` (in parallel):
    /// prompts with the tokenizer's special tokens (or the chat template),
    /// references as plain continuations.
    pub fn tokenize(
        codec: &dyn TextCodec,
        train: &[Demonstration],
        eval: &[Demonstration],
        chat: bool,
        max_new_tokens: i64,
    ) -> anyhow::Result<TextTask> {
        let prompt = |d: &Demonstration| -> anyhow::Result<Prompt> {
            let ids = if chat {
                codec.encode_chat_prompt(&d.prompt)?
            } else {
                codec.encode(&d.prompt, true)?
            };
            Ok(Prompt {
                ids,
                text: Some(d.prompt.clone()),
            })
        };
        let train_prompts = train
            .par_iter()
            .map(prompt)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let train_references = train
            .par_iter()
            .map(|d| codec.encode(&d.reference, false))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let eval_prompts = eval
            .par_iter()
            .map(prompt)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let eval_references = eval
            .par_iter()
            .map(|d| codec.encode(&d.reference, false))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(TextTask {
            train: train_prompts,
            train_references,
            eval: eval_prompts,
            eval_references,
            pairs: Vec::new(),
            max_new_tokens,
            eos: codec.eos_token_id(),
        })
    }
}

impl Task for TextTask {
    fn train_prompts(&self) -> &[Prompt] {
        &self.train
    }

    fn eval_prompts(&self) -> &[Prompt] {
        &self.eval
    }

    fn train_references(&self) -> Option<&[Vec<i64>]> {
        Some(&self.train_references)
    }

    fn train_pairs(&self) -> Option<&[TokenPair]> {
        (!self.pairs.is_empty()).then_some(&self.pairs[..])
    }

    fn eval_references(&self) -> Option<&[Vec<i64>]> {
        Some(&self.eval_references)
    }

    fn max_new_tokens(&self) -> i64 {
        self.max_new_tokens
    }

    fn eos_token(&self) -> Option<i64> {
        self.eos
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentimentTaskConfig {
    /// Completion length cap (tokens).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: i64,
    /// How many training prompts to use (the first of the train split).
    #[serde(default = "default_train_prompts")]
    pub train_prompts: usize,
    /// How many held-out prompts to evaluate on (the first of the test split).
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    /// Wrap prompts in the model's chat template.
    #[serde(default)]
    pub chat: bool,
    /// Where the data is and how it is split (see `SentimentConfig`).
    #[serde(default)]
    pub data: SentimentConfig,
}

fn default_max_new_tokens() -> i64 {
    24
}
fn default_train_prompts() -> usize {
    256
}
fn default_eval_prompts() -> usize {
    64
}

struct SentimentSpec(SentimentTaskConfig);

impl TaskSpec for SentimentSpec {
    fn build(&self, ctx: &TaskContext) -> anyhow::Result<Box<dyn Task>> {
        let codec: &Arc<dyn TextCodec> = ctx.codec.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "task `sentiment` is text: it needs a model with a tokenizer (e.g. `[model.hf]`)"
            )
        })?;
        let data = SentimentData::load(&self.0.data)?;
        let c = &self.0;
        let take = |split: Split, n: usize| {
            data.demonstrations(split)
                .into_iter()
                .take(n)
                .collect::<Vec<_>>()
        };
        let (train, eval) = (
            take(Split::Train, c.train_prompts),
            take(Split::Test, c.eval_prompts),
        );
        anyhow::ensure!(
            !train.is_empty(),
            "task `sentiment`: the train split has no prompts"
        );
        Ok(Box::new(TextTask::tokenize(
            codec.as_ref(),
            &train,
            &eval,
            c.chat,
            c.max_new_tokens,
        )?))
    }
}

/// The bounds of [`align_core::manifest::limits`] on a text task's counts:
/// the completion cap, the training prompts or records (`train`: key and
/// value) and the held-out prompts (0 allowed: no held-out evaluation).
fn check_counts(
    max_new_tokens: i64,
    train: (&str, Option<usize>),
    eval_prompts: usize,
) -> Result<(), PluginError> {
    use align_core::manifest::limits::{count_in, MAX_NEW_TOKENS, MAX_PROMPTS};
    count_in(max_new_tokens, 1, MAX_NEW_TOKENS, "tokens per completion")
        .map_err(|e| PluginError::invalid("max_new_tokens", e))?;
    if let (key, Some(n)) = train {
        count_in(n, 1, MAX_PROMPTS, "training prompts")
            .map_err(|e| PluginError::invalid(key, e))?;
    }
    count_in(eval_prompts, 0, MAX_PROMPTS, "held-out prompts")
        .map_err(|e| PluginError::invalid("eval_prompts", e))?;
    Ok(())
}

/// A data-config error as a plugin message (the key is given separately).
fn config_message(e: crate::DataError) -> String {
    match e {
        crate::DataError::Config { message, .. } => message,
        other => other.to_string(),
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn TaskSpec>, PluginError> {
    build_from_config(de, |c: &SentimentTaskConfig| {
        check_counts(
            c.max_new_tokens,
            ("train_prompts", Some(c.train_prompts)),
            c.eval_prompts,
        )?;
        c.data
            .validate()
            .map_err(|e| PluginError::invalid("data", e.to_string()))?;
        Ok(Box::new(SentimentSpec(c.clone())) as Box<dyn TaskSpec>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "sentiment",
        description: "continue movie-review openings positively (VADER-rated snippets + Rotten Tomatoes; gold: rest of a positive review)",
        constructor: Constructor::Task(construct),
    }
}

/// `[task.preference-file]`: a preference or demonstration file in one of the
/// public formats (HH-RLHF JSONL(.gz), TL;DR Parquet / JSON lines). Pairs feed
/// "direct" estimators; the chosen (or reference) output of each prompt is its
/// gold / SFT target. Train / test by a hash of the prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceFileConfig {
    pub format: FileFormat,
    pub path: InputPath,
    #[serde(default = "crate::rows::default_max_bad_fraction")]
    pub max_bad_fraction: f64,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: i64,
    /// How many training records to use (the first of the train split; default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_records: Option<usize>,
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    #[serde(default)]
    pub chat: bool,
    #[serde(default)]
    pub split: SplitConfig,
}

struct PreferenceFileSpec(PreferenceFileConfig);

impl TaskSpec for PreferenceFileSpec {
    fn build(&self, ctx: &TaskContext) -> anyhow::Result<Box<dyn Task>> {
        let c = &self.0;
        let codec = ctx.codec.as_ref().ok_or_else(|| {
            anyhow::anyhow!("task `preference-file` is text: it needs a model with a tokenizer (e.g. `[model.hf]`)")
        })?;
        let file = FileDatasetConfig {
            format: c.format,
            path: c.path.path().to_path_buf(),
            max_bad_fraction: c.max_bad_fraction,
        };
        let (pairs, demos): (Vec<PreferencePair>, Vec<Demonstration>) = match file.load()? {
            FileRecords::Pairs(loaded) => {
                let demos = loaded
                    .records
                    .iter()
                    .map(|p| Demonstration {
                        prompt: p.prompt.clone(),
                        reference: p.chosen.clone(),
                    })
                    .collect();
                (loaded.records, demos)
            }
            FileRecords::Demonstrations(loaded) => (Vec::new(), loaded.records),
        };
        let split_of = |prompt: &str| c.split.split_of(&crate::split::text_key(prompt));
        let pick = |split: Split, n: usize| -> Vec<Demonstration> {
            demos
                .iter()
                .filter(|d| split_of(&d.prompt) == split)
                .take(n)
                .cloned()
                .collect()
        };
        let (train, eval) = (
            pick(Split::Train, c.train_records.unwrap_or(usize::MAX)),
            pick(Split::Test, c.eval_prompts),
        );
        anyhow::ensure!(
            !train.is_empty(),
            "{}: no training records in the train split",
            c.path.path().display()
        );
        let mut task = TextTask::tokenize(codec.as_ref(), &train, &eval, c.chat, c.max_new_tokens)?;
        let train_pairs: Vec<&PreferencePair> = pairs
            .iter()
            .filter(|p| split_of(&p.prompt) == Split::Train)
            .take(c.train_records.unwrap_or(usize::MAX))
            .collect();
        task.pairs = train_pairs
            .par_iter()
            .map(|p| -> anyhow::Result<TokenPair> {
                let ids = if c.chat {
                    codec.encode_chat_prompt(&p.prompt)?
                } else {
                    codec.encode(&p.prompt, true)?
                };
                Ok(TokenPair {
                    prompt: Prompt {
                        ids,
                        text: Some(p.prompt.clone()),
                    },
                    chosen: codec.encode(&p.chosen, false)?,
                    rejected: codec.encode(&p.rejected, false)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Box::new(task))
    }
}

fn construct_preference_file(de: ConfigDeserializer) -> Result<Built<dyn TaskSpec>, PluginError> {
    build_resolving(de, |c: &mut PreferenceFileConfig, base| {
        // A missing file says what to download and where to put it.
        base.resolve("path", &mut c.path).map_err(|e| match e {
            PluginError::Path { key, message } => {
                let written = serde_json::to_value(&c.path)
                    .ok()
                    .and_then(|v| v.as_str().map(std::path::PathBuf::from))
                    .unwrap_or_default();
                let hint = c.format.download_hint(&base.join(&written));
                PluginError::Path {
                    key,
                    message: format!("{message}: {hint}"),
                }
            }
            other => other,
        })?;
        check_counts(
            c.max_new_tokens,
            ("train_records", c.train_records),
            c.eval_prompts,
        )?;
        crate::rows::validate_fraction(c.max_bad_fraction)
            .map_err(|e| PluginError::invalid("max_bad_fraction", config_message(e)))?;
        c.split
            .validate()
            .map_err(|e| PluginError::invalid("split", e.to_string()))?;
        Ok(Box::new(PreferenceFileSpec(c.clone())) as Box<dyn TaskSpec>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "preference-file",
        description: "a preference / demonstration file in a public format (HH-RLHF, TL;DR); pairs for direct DPO",
        constructor: Constructor::Task(construct_preference_file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A codec over bytes: one token per byte, BOS = 256, EOS = 257.
    struct Bytes;
    impl TextCodec for Bytes {
        fn encode(&self, text: &str, special: bool) -> anyhow::Result<Vec<i64>> {
            Ok(special
                .then_some(256)
                .into_iter()
                .chain(text.bytes().map(i64::from))
                .collect())
        }
        fn decode(&self, ids: &[i64]) -> anyhow::Result<String> {
            Ok(ids
                .iter()
                .filter(|&&i| i < 256)
                .map(|&i| i as u8 as char)
                .collect())
        }
        fn eos_token_id(&self) -> Option<i64> {
            Some(257)
        }
    }

    #[test]
    fn prompts_get_special_tokens_and_references_do_not() {
        let demo = |p: &str, r: &str| Demonstration {
            prompt: p.into(),
            reference: r.into(),
        };
        let task = TextTask::tokenize(
            &Bytes,
            &[demo("A fine", " film indeed")],
            &[demo("Not", " bad")],
            false,
            8,
        )
        .unwrap();
        assert_eq!(
            task.train_prompts()[0].ids,
            [
                256,
                b'A' as i64,
                b' ' as i64,
                b'f' as i64,
                b'i' as i64,
                b'n' as i64,
                b'e' as i64
            ]
        );
        assert_eq!(
            Bytes.decode(&task.train_references().unwrap()[0]).unwrap(),
            " film indeed"
        );
        assert_eq!(task.eval_prompts()[0].text.as_deref(), Some("Not"));
        assert_eq!(task.eos_token(), Some(257));
    }
}
