//! A lexicon reward: VADER's compound sentiment score (Hutto & Gilbert 2014,
//! the `vader_sentiment` crate's port of vaderSentiment), in [−1, 1], times
//! `scale`. No training and no model: an independent third judge for the
//! movie-review sentiment task.
//!
//! It scores text: [`RewardModel::score`] reads a batch's decoded texts (the
//! completion, or with `text = "full"` the prompt followed by it) and fails
//! with an explanation on a batch without them; [`score_texts`] is the
//! scoring itself.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{Plugin, PluginError, RewardModel, RewardSpec, SampleBatch};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};
use vader_sentiment::SentimentIntensityAnalyzer;

use crate::hf_rm::ScoredText;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LexiconConfig {
    /// Multiplies the compound score.
    #[serde(default = "one")]
    pub scale: f64,
    /// Which text is judged: the completion (default) or `full`, the prompt
    /// followed by the completion.
    #[serde(default = "completion")]
    pub text: ScoredText,
}

fn one() -> f64 {
    1.0
}

fn completion() -> ScoredText {
    ScoredText::Completion
}

/// VADER compound scores of `texts` (in [−1, 1]; 0 for text without
/// sentiment), in parallel.
pub fn score_texts(texts: &[&str]) -> Vec<f32> {
    let analyzer = SentimentIntensityAnalyzer::new();
    texts
        .par_iter()
        .map(|t| {
            analyzer
                .polarity_scores(t)
                .get("compound")
                .copied()
                .unwrap_or(0.0) as f32
        })
        .collect()
}

/// The `lexicon` reward; see the module docs.
pub struct Lexicon(pub LexiconConfig);

impl Lexicon {
    /// `scale ×` [`score_texts`].
    pub fn score_texts(&self, texts: &[&str]) -> Vec<f32> {
        score_texts(texts)
            .into_iter()
            .map(|s| (self.0.scale * s as f64) as f32)
            .collect()
    }
}

impl RewardSpec for Lexicon {
    fn build(&self, _device: Device) -> anyhow::Result<Box<dyn RewardModel>> {
        Ok(Box::new(Lexicon(self.0.clone())))
    }
}

impl RewardModel for Lexicon {
    fn score(&self, batch: &SampleBatch) -> anyhow::Result<Tensor> {
        let texts = batch.texts.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "the `lexicon` reward scores text, but this batch of {} samples carries only token ids \
                 (the model has no tokenizer to decode them with)",
                batch.len()
            )
        })?;
        let texts: Vec<String> = texts
            .iter()
            .map(|t| self.0.text.of(&t.prompt, &t.completion))
            .collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(Tensor::from_slice(&self.score_texts(&texts)).to_device(batch.input_ids.device()))
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn RewardSpec>, PluginError> {
    build_from_config(de, |c: &LexiconConfig| {
        if !(c.scale.is_finite() && c.scale > 0.0) {
            return Err(PluginError::invalid("scale", "must be > 0"));
        }
        Ok(Box::new(Lexicon(c.clone())) as Box<dyn RewardSpec>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "lexicon",
        description: "VADER sentiment lexicon: compound score in [-1, 1] of the completion text (no training)",
        constructor: Constructor::Reward(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compound scores from the reference implementation:
    /// ```python
    /// # vaderSentiment==3.3.2 (the sdist the set-up downloads)
    /// from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    /// a = SentimentIntensityAnalyzer()
    /// print(a.polarity_scores(text)["compound"])
    /// ```
    const REFERENCE: [(&str, f32); 10] = [
        ("VADER is smart, handsome, and funny.", 0.8316),
        ("VADER is not smart, handsome, nor funny.", -0.7424),
        ("The book was good.", 0.4404),
        ("At least it isn't a horrible book.", 0.431),
        (
            "The plot was good, but the characters are uncompelling and the dialog is not great.",
            -0.7042,
        ),
        ("Today SUX!", -0.5461),
        ("A gorgeous, witty, seductive movie.", 0.6124),
        ("The movie is dull and far too long.", -0.4019),
        ("The film opens on a Tuesday.", 0.0),
        ("", 0.0),
    ];

    #[test]
    fn compound_scores_match_the_python_reference() {
        let texts: Vec<&str> = REFERENCE.iter().map(|(t, _)| *t).collect();
        let got = score_texts(&texts);
        for ((text, want), got) in REFERENCE.iter().zip(&got) {
            // Python rounds the compound score to 4 decimals.
            assert!((got - want).abs() < 6e-5, "{text:?}: {got} vs {want}");
        }
    }

    #[test]
    fn scale_multiplies_and_order_is_kept() {
        let l = Lexicon(LexiconConfig {
            scale: 2.0,
            text: ScoredText::Completion,
        });
        let s = l.score_texts(&["The movie is dull and far too long.", "The book was good."]);
        assert!(
            (s[0] + 0.8038).abs() < 2e-4 && (s[1] - 0.8808).abs() < 2e-4,
            "{s:?}"
        );
    }

    #[test]
    fn scoring_token_ids_explains_that_text_is_needed() {
        let prompts = [align_core::task::Prompt {
            ids: vec![1],
            text: None,
        }];
        let batch = SampleBatch::from_completions(
            &prompts,
            &Tensor::from_slice(&[2i64, 3]).view([1, 2]),
            Device::Cpu,
        );
        let e = Lexicon(LexiconConfig {
            scale: 1.0,
            text: ScoredText::Completion,
        })
        .score(&batch)
        .unwrap_err()
        .to_string();
        assert!(e.contains("carries only token ids"), "{e}");
    }

    #[test]
    fn scores_the_decoded_completions() {
        let prompts = [align_core::task::Prompt {
            ids: vec![1],
            text: None,
        }];
        let mut batch = SampleBatch::from_completions(
            &prompts,
            &Tensor::from_slice(&[2i64, 3, 4, 5]).view([2, 2]),
            Device::Cpu,
        );
        batch.texts = Some(vec![
            align_core::SampleText {
                prompt: "The film".into(),
                completion: " was wonderful and moving.".into(),
            },
            align_core::SampleText {
                prompt: "The film".into(),
                completion: " was a dull, awful mess.".into(),
            },
        ]);
        let r = Vec::<f32>::try_from(
            Lexicon(LexiconConfig {
                scale: 2.0,
                text: ScoredText::Completion,
            })
            .score(&batch)
            .unwrap(),
        )
        .unwrap();
        let want = score_texts(&[" was wonderful and moving.", " was a dull, awful mess."]);
        assert_eq!(r, vec![2.0 * want[0], 2.0 * want[1]]);
        assert!(r[0] > 0.5 && r[1] < -0.5, "{r:?}");
    }

    #[test]
    fn full_text_judges_the_prompt_too() {
        let mut batch = SampleBatch::from_texts(
            vec![align_core::SampleText {
                prompt: "A wonderful film".into(),
                completion: " opens on a Tuesday.".into(),
            }],
            Device::Cpu,
        );
        let score = |text| {
            Lexicon(LexiconConfig { scale: 1.0, text })
                .score(&batch)
                .unwrap()
                .double_value(&[0]) as f32
        };
        assert_eq!(score(ScoredText::Completion), 0.0);
        let full = score_texts(&["A wonderful film opens on a Tuesday."])[0];
        assert!(full > 0.3);
        assert_eq!(score(ScoredText::Full), full);
        batch.texts = None;
        assert!(Lexicon(LexiconConfig {
            scale: 1.0,
            text: ScoredText::Full
        })
        .score(&batch)
        .is_err());
    }
}
