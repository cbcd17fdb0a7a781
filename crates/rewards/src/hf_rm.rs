//! The `hf-rm` reward plugin: a trained scalar-head reward model from an HF
//! directory (see [`crate::scalar`]), scoring the decoded samples.

use std::sync::Mutex;

use align_core::manifest::InputPath;
use align_core::registry::{build_resolving, Built, ConfigDeserializer, Constructor};
use align_core::{Plugin, PluginError, RewardModel, RewardSpec, SampleBatch};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::scalar::{Expect, ScalarRm};

/// Which text of a sample the reward model reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoredText {
    /// The prompt followed by the completion (as HF reward models read a
    /// dialogue).
    #[default]
    Full,
    /// The completion alone.
    Completion,
}

impl std::str::FromStr for ScoredText {
    type Err = String;
    /// `full` or `completion`, as in a manifest.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(ScoredText::Full),
            "completion" => Ok(ScoredText::Completion),
            other => Err(format!("`{other}`: use full or completion")),
        }
    }
}

impl ScoredText {
    /// The name a manifest and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoredText::Full => "full",
            ScoredText::Completion => "completion",
        }
    }

    /// The text to score of a prompt and its completion.
    pub fn of(self, prompt: &str, completion: &str) -> String {
        match self {
            ScoredText::Full => format!("{prompt}{completion}"),
            ScoredText::Completion => completion.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfRmConfig {
    /// An HF `…ForSequenceClassification` directory (e.g. written by
    /// `runner train-rm`).
    pub path: InputPath,
    /// Outputs of the head; the checkpoint must have as many.
    #[serde(default = "one")]
    pub num_labels: i64,
    /// With several labels: the one whose log-odds is the reward (name or
    /// index; default the last of two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default)]
    pub text: ScoredText,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest tokenised text scored (longer ones are cut).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}

fn one() -> i64 {
    1
}
fn default_batch() -> usize {
    32
}
fn default_max_len() -> usize {
    512
}

impl HfRmConfig {
    pub fn load(&self, device: Device) -> anyhow::Result<ScalarRm> {
        let expect = Expect {
            num_labels: self.num_labels,
            label: self.label.clone(),
        };
        let mut rm = ScalarRm::from_checkpoint(self.path.path(), &expect, device)?;
        rm.max_len = self.max_len;
        Ok(rm)
    }
}

struct HfRmSpec(HfRmConfig);

impl RewardSpec for HfRmSpec {
    fn build(&self, device: Device) -> anyhow::Result<Box<dyn RewardModel>> {
        Ok(Box::new(HfRm {
            rm: Mutex::new(self.0.load(device)?),
            config: self.0.clone(),
        }))
    }
}

/// A loaded `hf-rm`.
pub struct HfRm {
    // `RewardModel` is `Send`; the mutex makes the model shareable too.
    rm: Mutex<ScalarRm>,
    config: HfRmConfig,
}

impl RewardModel for HfRm {
    fn score(&self, batch: &SampleBatch) -> anyhow::Result<Tensor> {
        let texts = batch.texts.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "the `hf-rm` reward scores text, but this batch of {} samples carries only token ids \
                 (the policy has no tokenizer to decode them with)",
                batch.len()
            )
        })?;
        let texts: Vec<String> = texts
            .iter()
            .map(|t| self.config.text.of(&t.prompt, &t.completion))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let rm = self.rm.lock().expect("reward model lock");
        let r = rm.score_texts(&refs, self.config.batch_size)?;
        Ok(Tensor::from_slice(&r).to_device(batch.input_ids.device()))
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn RewardSpec>, PluginError> {
    build_resolving(de, |c: &mut HfRmConfig, base| {
        base.resolve("path", &mut c.path)?;
        if c.num_labels < 1 {
            return Err(PluginError::invalid("num_labels", "must be ≥ 1"));
        }
        if c.batch_size == 0 {
            return Err(PluginError::invalid("batch_size", "must be ≥ 1"));
        }
        if c.max_len < 2 {
            return Err(PluginError::invalid("max_len", "must be ≥ 2"));
        }
        if !c.path.path().is_dir() {
            return Err(PluginError::invalid(
                "path",
                format!(
                    "{} is not a directory; give an HF reward-model directory (e.g. one `runner train-rm` wrote)",
                    c.path.path().display()
                ),
            ));
        }
        Ok(Box::new(HfRmSpec(c.clone())) as Box<dyn RewardSpec>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "hf-rm",
        description: "scalar-head reward model from an HF directory (BERT mean-pool/pooler or decoder last-token; BT or classifier)",
        constructor: Constructor::Reward(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scored_text_names_match_the_manifest_spelling() {
        for t in [ScoredText::Full, ScoredText::Completion] {
            assert_eq!(t.as_str().parse::<ScoredText>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert_eq!(
            "prompt".parse::<ScoredText>(),
            Err("`prompt`: use full or completion".to_string())
        );
    }
}
