//! Reward-model training data: the `[data]` section of a `train-rm`
//! manifest and the examples it yields (training, validation and named
//! held-out sets), as labelled texts or `(chosen, rejected)` text pairs.

use serde::{Deserialize, Serialize};

use align_core::manifest::InputPath;

use crate::files::{FileDatasetConfig, FileFormat, FileRecords};
use crate::sentiment::{RmHalf, SentimentConfig, SentimentData};
use crate::split::{text_key, Split, SplitConfig};

/// What a reward model learns from.
#[derive(Debug, Clone, PartialEq)]
pub enum Examples {
    /// Texts with a class id (for one label: 1 = positive, 0 = negative).
    Labelled(Vec<(String, i64)>),
    /// `(chosen, rejected)` texts.
    Pairs(Vec<(String, String)>),
}

impl Examples {
    pub fn len(&self) -> usize {
        match self {
            Examples::Labelled(x) => x.len(),
            Examples::Pairs(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What an accuracy on these examples measures.
    pub fn metric(&self) -> &'static str {
        match self {
            Examples::Labelled(_) => "classification accuracy",
            Examples::Pairs(_) => "pairwise accuracy",
        }
    }

    /// Every text, in order (pairs as chosen, rejected, chosen, …).
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Examples::Labelled(x) => x.iter().map(|(t, _)| t.as_str()).collect(),
            Examples::Pairs(x) => x
                .iter()
                .flat_map(|(c, r)| [c.as_str(), r.as_str()])
                .collect(),
        }
    }
}

/// Which kind of [`Examples`] to train and validate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExampleKind {
    /// Labelled texts (a classifier).
    Labelled,
    /// Preference pairs (Bradley–Terry).
    Pairs,
}

/// Exactly one data source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum RmData {
    /// The human-rated movie-review snippets, one half (A or B): labelled
    /// `valence > 0` for a classifier, pairs of clearly different ratings for
    /// Bradley–Terry.
    Sentiment(SentimentRmData),
    /// Preference pairs from a file in a public format (HH-RLHF, TL;DR);
    /// Bradley–Terry only. Split by a hash of the prompt.
    PreferenceFile(PairFileData),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentimentRmData {
    pub half: RmHalf,
    #[serde(default)]
    pub source: SentimentConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairFileData {
    pub format: FileFormat,
    pub path: InputPath,
    #[serde(default = "crate::rows::default_max_bad_fraction")]
    pub max_bad_fraction: f64,
    #[serde(default)]
    pub split: SplitConfig,
    /// Use at most this many training pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_records: Option<usize>,
}

/// Training and evaluation examples of one data source.
#[derive(Debug, Clone)]
pub struct RmExamples {
    pub train: Examples,
    pub validation: Examples,
    /// Named held-out sets: `(name, examples)`.
    pub held_out: Vec<(String, Examples)>,
}

impl RmData {
    /// Loads the examples: training and validation of `kind`, and the
    /// held-out sets. The sentiment halves hold out both kinds on both
    /// halves' test splits (the model's own half, and the other half it never
    /// saw), and print their record counts to stderr; a preference file
    /// yields pairs whatever `kind`, its test split held out.
    pub fn examples(&self, kind: ExampleKind) -> anyhow::Result<RmExamples> {
        match self {
            RmData::Sentiment(s) => sentiment_examples(s, kind),
            RmData::PreferenceFile(p) => pair_file_examples(p),
        }
    }
}

fn sentiment_examples(s: &SentimentRmData, kind: ExampleKind) -> anyhow::Result<RmExamples> {
    s.source.validate()?;
    let data = SentimentData::load(&s.source)?;
    eprint!("{}", data.counts());
    let labelled = |half, split| {
        Examples::Labelled(
            data.classifier_texts(half, split)
                .into_iter()
                .map(|t| (t.text, t.label as i64))
                .collect(),
        )
    };
    let pairs = |half, split| {
        Examples::Pairs(
            data.bt_pairs(half, split)
                .into_iter()
                .map(|p| (p.chosen, p.rejected))
                .collect(),
        )
    };
    let of = |half, split| match kind {
        ExampleKind::Labelled => labelled(half, split),
        ExampleKind::Pairs => pairs(half, split),
    };
    let mut held_out = Vec::new();
    for half in [s.half, s.half.other()] {
        let own = if half == s.half { "own" } else { "other" };
        held_out.push((
            format!("half {half:?} ({own}) test, texts"),
            labelled(half, Split::Test),
        ));
        held_out.push((
            format!("half {half:?} ({own}) test, pairs"),
            pairs(half, Split::Test),
        ));
    }
    Ok(RmExamples {
        train: of(s.half, Split::Train),
        validation: of(s.half, Split::Validation),
        held_out,
    })
}

fn pair_file_examples(p: &PairFileData) -> anyhow::Result<RmExamples> {
    p.split.validate()?;
    let file = FileDatasetConfig {
        format: p.format,
        path: p.path.path().to_path_buf(),
        max_bad_fraction: p.max_bad_fraction,
    };
    let FileRecords::Pairs(loaded) = file.load()? else {
        anyhow::bail!(
            "{}: this format holds demonstrations, not preference pairs",
            p.path.path().display()
        );
    };
    let pick = |split: Split, n: usize| {
        Examples::Pairs(
            loaded
                .records
                .iter()
                .filter(|r| p.split.split_of(&text_key(&r.prompt)) == split)
                .take(n)
                .map(|r| {
                    (
                        format!("{}{}", r.prompt, r.chosen),
                        format!("{}{}", r.prompt, r.rejected),
                    )
                })
                .collect(),
        )
    };
    Ok(RmExamples {
        train: pick(Split::Train, p.train_records.unwrap_or(usize::MAX)),
        validation: pick(Split::Validation, usize::MAX),
        held_out: vec![("test, pairs".into(), pick(Split::Test, usize::MAX))],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(p: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/data")
            .join(p)
    }

    #[test]
    fn preference_files_give_prompt_joined_pairs_split_by_prompt() {
        let data = |extra: &str| -> RmData {
            let mut data: RmData = toml::from_str(&format!(
                "[preference-file]\nformat = \"hh-rlhf\"\npath = {:?}\nsplit = {{ validation = 0.0, test = 0.3 }}\n{extra}",
                fixture("hh-rlhf-clean.jsonl.gz").display().to_string()
            ))
            .unwrap();
            let RmData::PreferenceFile(p) = &mut data else {
                unreachable!()
            };
            align_core::manifest::PathBase::default()
                .resolve("path", &mut p.path)
                .unwrap();
            data
        };
        let ex = data("").examples(ExampleKind::Labelled).unwrap();
        let Examples::Pairs(train) = &ex.train else {
            panic!("pairs expected: {:?}", ex.train)
        };
        assert!(!train.is_empty());
        for (c, r) in train {
            assert_ne!(c, r);
        }
        assert!(ex.validation.is_empty());
        assert_eq!(ex.held_out.len(), 1);
        assert_eq!(ex.held_out[0].0, "test, pairs");
        assert_eq!(ex.held_out[0].1.metric(), "pairwise accuracy");
        // The fixture's four records, each in one split.
        assert_eq!(ex.train.len() + ex.held_out[0].1.len(), 4);
        assert_eq!(ex.train.texts().len(), 2 * ex.train.len());

        let capped = data("train_records = 1")
            .examples(ExampleKind::Pairs)
            .unwrap();
        assert_eq!(capped.train.len(), 1);
        assert_eq!(capped.held_out[0].1, ex.held_out[0].1);
    }
}
