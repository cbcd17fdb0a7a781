//! `runner train-rm MANIFEST.toml`: train a scalar-head reward model and
//! write it as an HF directory; `runner score`: add rewards and goodness to a
//! sample file.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use align_core::io::write_atomic;
use align_core::manifest::{apply_overrides, DeviceChoice, InputPath, OutputPath};
use align_core::registry::{Constructor, Kind, Registry};
use align_core::GoodnessModel;
use align_data::files::{FileDatasetConfig, FileFormat, FileRecords};
use align_data::sentiment::{RmHalf, SentimentConfig, SentimentData};
use align_data::split::{text_key, Split, SplitConfig};
use align_rewards::hf_rm::{HfRmConfig, ScoredText};
use align_rewards::scalar::{Pooling, ScalarRm};
use align_rewards::training::{self, Examples, TrainSettings};
use anyhow::{bail, ensure, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::IntoDeserializer;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// A `train-rm` manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmManifest {
    /// Names the results directory, `results/<name>/`.
    pub name: String,
    /// `classifier` (logistic loss on labelled texts) or `bradley-terry`
    /// (pairwise loss on preference pairs).
    pub objective: Objective,
    /// Where the trained reward model goes (an HF directory).
    pub out: OutputPath,
    pub model: RmModel,
    pub data: RmData,
    pub train: TrainSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    Classifier,
    BradleyTerry,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmModel {
    /// A pretrained body: an HF BERT directory (e.g. all-MiniLM-L6-v2) or a
    /// decoder LM directory.
    pub backbone: InputPath,
    /// `mean` or `pooler` for BERT (default `mean`); decoders read the last token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default)]
    pub device: DeviceChoice,
}

fn default_max_len() -> usize {
    128
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
    #[serde(default = "align_data::rows::default_max_bad_fraction")]
    pub max_bad_fraction: f64,
    #[serde(default)]
    pub split: SplitConfig,
    /// Use at most this many training pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_records: Option<usize>,
}

impl RmManifest {
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<RmManifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the manifest", path.display()))?;
        let text = apply_overrides(&text, overrides).map_err(|e| anyhow::anyhow!(e))?;
        let m: RmManifest =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some((key, why)) = m.train.invalid() {
            bail!("{}: train.{key} {why}", path.display());
        }
        if matches!(m.data, RmData::PreferenceFile(_)) && m.objective == Objective::Classifier {
            bail!(
                "{}: a preference file holds pairs; use objective = \"bradley-terry\"",
                path.display()
            );
        }
        ensure!(
            m.model.max_len >= 8,
            "{}: model.max_len must be ≥ 8",
            path.display()
        );
        Ok(m)
    }
}

/// Training and evaluation examples of one manifest.
struct RmExamples {
    train: Examples,
    validation: Examples,
    /// Named held-out sets: `(name, examples)`.
    held_out: Vec<(String, Examples)>,
}

fn examples(m: &RmManifest) -> anyhow::Result<RmExamples> {
    match &m.data {
        RmData::Sentiment(s) => {
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
            let of = |half, split| match m.objective {
                Objective::Classifier => labelled(half, split),
                Objective::BradleyTerry => pairs(half, split),
            };
            // Both kinds of held-out figure on both halves' test splits: the
            // model's own half, and the other half it never saw.
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
        RmData::PreferenceFile(p) => {
            p.split.validate()?;
            let file = FileDatasetConfig {
                format: p.format,
                path: p.path.0.clone(),
                max_bad_fraction: p.max_bad_fraction,
            };
            let FileRecords::Pairs(loaded) = file.load()? else {
                bail!(
                    "{}: this format holds demonstrations, not preference pairs",
                    p.path.0.display()
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
    }
}

/// What `train-rm` measured.
#[derive(Debug, Clone)]
pub struct RmOutcome {
    pub epochs: Vec<training::EpochReport>,
    /// `(set, metric, value)` on the held-out sets.
    pub held_out: Vec<(String, &'static str, f64)>,
    pub out_dir: PathBuf,
    pub model_dir: PathBuf,
}

/// Trains the manifest's reward model, writes it to `out`, and the figures to
/// `results_dir`.
pub fn train_rm(m: &RmManifest, results_dir: &Path, progress: bool) -> anyhow::Result<RmOutcome> {
    let device = m.model.device.resolve()?;
    let ex = examples(m)?;
    let n_train = ex.train.len();
    ensure!(n_train > 0, "no training examples (check the data section)");
    eprintln!(
        "training a {:?} reward model on {n_train} examples ({} validation) on {device:?}",
        m.objective,
        ex.validation.len()
    );
    let labels = vec![match m.objective {
        Objective::Classifier => "positive".to_string(),
        Objective::BradleyTerry => "reward".to_string(),
    }];
    let mut rm = ScalarRm::from_backbone(&m.model.backbone.0, m.model.pooling, labels, device)?;
    rm.max_len = m.model.max_len;
    let bar = if progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}")
            .expect("valid template"),
    );
    let epochs = training::train(
        &mut rm,
        &ex.train,
        &ex.validation,
        &m.train,
        &mut |done, total, loss| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("loss {loss:.4}"));
        },
    )?;
    bar.finish_and_clear();
    for e in &epochs {
        eprintln!(
            "epoch {}: train loss {:.4}, validation {} {:.4}",
            e.epoch,
            e.train_loss,
            ex.validation.metric(),
            e.val_accuracy
        );
    }
    let mut held_out = Vec::new();
    for (name, set) in &ex.held_out {
        // A Bradley–Terry reward has no calibrated zero: no class accuracy.
        if m.objective == Objective::BradleyTerry && matches!(set, Examples::Labelled(_)) {
            continue;
        }
        let acc = training::accuracy(&rm, set, 64)?;
        held_out.push((format!("{name} ({})", set.len()), set.metric(), acc));
    }
    let mut extra = serde_json::Map::new();
    extra.insert(
        "brain_rs_training".into(),
        serde_json::json!({
            "objective": m.objective,
            "manifest": m.name,
            "held_out": held_out.iter().map(|(n, k, v)| serde_json::json!({"set": n, "metric": k, "value": v})).collect::<Vec<_>>(),
        }),
    );
    rm.save(&m.out.0, &extra)?;

    let outcome = RmOutcome {
        epochs,
        held_out,
        out_dir: results_dir.to_path_buf(),
        model_dir: m.out.0.clone(),
    };
    write_atomic(
        &results_dir.join("manifest.resolved.toml"),
        toml::to_string_pretty(m)?.as_bytes(),
    )?;
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["epoch", "train_loss", "val_accuracy"])?;
    for e in &outcome.epochs {
        csv.write_record([
            e.epoch.to_string(),
            format!("{:.6}", e.train_loss),
            format!("{:.6}", e.val_accuracy),
        ])?;
    }
    write_atomic(&results_dir.join("epochs.csv"), &csv.into_inner()?)?;
    write_atomic(
        &results_dir.join("summary.md"),
        markdown(m, &outcome).as_bytes(),
    )?;
    Ok(outcome)
}

/// The held-out table.
pub fn markdown(m: &RmManifest, o: &RmOutcome) -> String {
    let mut s = format!(
        "# {}: {:?} reward model\n\nWritten to `{}`.\n\n| held-out set | metric | value |\n|---|---|--:|\n",
        m.name,
        m.objective,
        o.model_dir.display()
    );
    for (set, metric, v) in &o.held_out {
        s += &format!("| {set} | {metric} | {v:.4} |\n");
    }
    s
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The reward: an HF reward-model directory (`hf-rm`) or `lexicon`.
    #[arg(long)]
    pub reward: String,
    /// Head outputs the reward-model checkpoint must have.
    #[arg(long, default_value_t = 1)]
    pub num_labels: i64,
    /// Which label's log-odds is the reward (several labels).
    #[arg(long)]
    pub label: Option<String>,
    /// `full` (prompt + completion) or `completion`.
    #[arg(long, default_value = "full")]
    pub text: String,
    /// Goodness model for `log_goodness`: bt-exp, bt-vs-reference or classifier.
    #[arg(long, default_value = "bt-exp")]
    pub goodness: String,
    /// Goodness temperature τ.
    #[arg(long, default_value_t = 1.0)]
    pub tau: f64,
    /// Samples (JSONL with `prompt` and `completion`, e.g. from `runner
    /// sample`; `reference` too for bt-vs-reference).
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL: the input records with `reward` and `log_goodness` added.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// auto (CUDA when present), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

/// Scores texts with `hf-rm` or the lexicon.
enum Scorer {
    Rm(Box<ScalarRm>),
    Lexicon,
}

impl Scorer {
    fn score(&self, texts: &[&str], batch: usize) -> anyhow::Result<Vec<f32>> {
        match self {
            Scorer::Rm(rm) => rm.score_texts(texts, batch),
            Scorer::Lexicon => Ok(align_rewards::lexicon::score_texts(texts)),
        }
    }
}

/// The registered goodness plugin `name` with temperature `tau`.
fn goodness_model(name: &str, tau: f64) -> anyhow::Result<Box<dyn GoodnessModel>> {
    let plugin = Registry::global()
        .get(Kind::Goodness, name)
        .map_err(|e| anyhow::anyhow!("--goodness: {e}"))?;
    let Constructor::Goodness(make) = plugin.constructor else {
        unreachable!("registered under the goodness kind")
    };
    let config: toml_edit::Value = format!("{{ tau = {tau:?} }}").parse()?;
    let (model, _) = make(config.into_deserializer())
        .map_err(|e| anyhow::anyhow!("--goodness {name} --tau {tau}: {e}"))?;
    Ok(model)
}

pub fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    let text: ScoredText = serde_json::from_value(serde_json::json!(args.text))
        .map_err(|_| anyhow::anyhow!("--text `{}`: use full or completion", args.text))?;
    let goodness = goodness_model(&args.goodness, args.tau)?;
    let needs_reference = args.goodness == "bt-vs-reference";
    let scorer = if args.reward == "lexicon" {
        Scorer::Lexicon
    } else {
        let config = HfRmConfig {
            path: InputPath(PathBuf::from(&args.reward)),
            num_labels: args.num_labels,
            label: args.label.clone(),
            text,
            batch_size: args.batch_size,
            max_len: 512,
        };
        ensure!(
            config.path.0.is_dir(),
            "--reward {}: not a directory; give an HF reward-model directory or `lexicon`",
            args.reward
        );
        let device: DeviceChoice = serde_json::from_value(serde_json::json!(args.device))
            .map_err(|_| anyhow::anyhow!("--device `{}`: use auto, cpu or cuda", args.device))?;
        Scorer::Rm(Box::new(config.load(device.resolve()?)?))
    };

    let file = std::fs::File::open(&args.input)
        .with_context(|| format!("{}: cannot open", args.input.display()))?;
    let mut records = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = || format!("{}:{}", args.input.display(), i + 1);
        let line = line.with_context(|| format!("{}: cannot read", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&line).with_context(|| format!("{}: bad JSON line", at()))?;
        let field = |k: &str| -> anyhow::Result<String> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| format!("{}: no string field `{k}`", at()))
        };
        let prompt = field("prompt")?;
        let scored = text.of(&prompt, &field("completion")?);
        let reference = if needs_reference {
            Some(text.of(&prompt, &field("reference")?))
        } else {
            None
        };
        records.push((v, scored, reference));
    }

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(records.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} samples scored")
            .expect("valid template"),
    );
    let mut out = Vec::new();
    for chunk in records.chunks(args.batch_size.max(1) * 8) {
        let texts: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
        let rewards = scorer.score(&texts, args.batch_size)?;
        let reference = if needs_reference {
            let refs: Vec<&str> = chunk.iter().filter_map(|r| r.2.as_deref()).collect();
            Some(Tensor::from_slice(&scorer.score(&refs, args.batch_size)?))
        } else {
            None
        };
        let r = Tensor::from_slice(&rewards);
        let g = goodness.log_goodness(&r, reference.as_ref())?;
        let g: Vec<f32> = Vec::try_from(g.to_device(Device::Cpu))?;
        for ((rec, _, _), (reward, lg)) in chunk.iter().zip(rewards.iter().zip(g)) {
            let mut rec = rec.clone();
            rec.insert("reward".into(), serde_json::json!(reward));
            rec.insert("log_goodness".into(), serde_json::json!(lg));
            writeln!(out, "{}", serde_json::to_string(&rec)?)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    write_atomic(&args.out, &out)?;
    eprintln!("scored {} samples → {}", records.len(), args.out.display());
    Ok(())
}
