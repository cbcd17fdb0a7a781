//! `runner train-rm MANIFEST.toml` (the pipeline is
//! [`align_rewards::pipeline`]) and `runner score`: add rewards and goodness
//! to a sample file, with any registered reward and goodness plugin.

use std::io::Write;
use std::path::{Path, PathBuf};

use align_core::build::{build_plugin, BuildError};
use align_core::io::{check_writable, read_jsonl_numbered, AtomicFile};
use align_core::registry::{PluginKind, Registry};
use align_core::{DeviceChoice, GoodnessModel, RewardModel, RewardSpec, SampleBatch, SampleText};
use align_rewards::hf_rm::ScoredText;
use anyhow::{bail, ensure, Context};
use clap::Args;
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The reward: an HF reward-model directory (`hf-rm`) or the name of a
    /// reward plugin, e.g. `lexicon`.
    #[arg(long)]
    pub reward: String,
    /// Head outputs the reward-model checkpoint must have.
    #[arg(long, default_value_t = 1)]
    pub num_labels: i64,
    /// Which label's log-odds is the reward (several labels).
    #[arg(long)]
    pub label: Option<String>,
    /// Which text the reward reads: `full` (prompt + completion) or
    /// `completion`; passed to the reward plugin only when given (default: the
    /// plugin's own, `full` for an HF reward model, `completion` for `lexicon`).
    #[arg(long)]
    pub text: Option<ScoredText>,
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
    pub device: DeviceChoice,
    #[arg(long)]
    pub quiet: bool,
}

/// The goodness plugin `--goodness` with `tau = --tau`.
fn goodness_model(args: &ScoreArgs) -> anyhow::Result<Box<dyn GoodnessModel>> {
    let (name, tau) = (&args.goodness, args.tau);
    let settings = toml::Table::from_iter([("tau".to_string(), toml::Value::Float(tau))]);
    build_plugin::<dyn GoodnessModel>(name, settings.into()).map_err(|e| match e {
        BuildError::Unknown(e) => anyhow::anyhow!("--goodness: {e}"),
        BuildError::Config { error, .. } => {
            anyhow::anyhow!("--goodness {name} --tau {tau}: {error}")
        }
    })
}

/// The reward `--reward`: a registered reward plugin by name (with `text =
/// --text` when given, so a plugin without that setting works untouched); or
/// a directory, read by `hf-rm` with `--num-labels`, `--label`, `--text` and
/// `--batch-size`.
fn reward_spec(args: &ScoreArgs) -> anyhow::Result<Box<dyn RewardSpec>> {
    let registry = Registry::global();
    let mut settings = toml::Table::new();
    if let Some(text) = args.text {
        settings.insert("text".into(), text.as_str().into());
    }
    let plugin = if registry.get(PluginKind::Reward, &args.reward).is_ok() {
        args.reward.as_str()
    } else if Path::new(&args.reward).is_dir() {
        settings.insert("path".into(), args.reward.clone().into());
        settings.insert("num_labels".into(), args.num_labels.into());
        if let Some(label) = &args.label {
            settings.insert("label".into(), label.clone().into());
        }
        let batch_size = i64::try_from(args.batch_size).context("--batch-size")?;
        settings.insert("batch_size".into(), batch_size.into());
        "hf-rm"
    } else {
        let known: Vec<String> = registry
            .of_kind(PluginKind::Reward)
            .map(|p| format!("`{}`", p.name))
            .collect();
        bail!(
            "--reward {}: not a directory; give an HF reward-model directory or a reward plugin: {}",
            args.reward,
            known.join(", ")
        );
    };
    build_plugin::<dyn RewardSpec>(plugin, settings.into()).map_err(|e| match e {
        BuildError::Unknown(e) => anyhow::anyhow!("--reward: {e}"),
        BuildError::Config { error, .. } => anyhow::anyhow!("--reward {}: {error}", args.reward),
    })
}

/// Rewards `[B]` of `texts`, as the reward model scores a text batch.
fn rewards(reward: &dyn RewardModel, texts: Vec<SampleText>) -> anyhow::Result<Vec<f32>> {
    let n = texts.len();
    let r = reward.score(&SampleBatch::from_texts(texts, Device::Cpu))?;
    let r = Vec::<f32>::try_from(r.to_kind(Kind::Float).to_device(Device::Cpu).view([-1]))?;
    ensure!(
        r.len() == n,
        "the reward gave {} rewards for {n} samples",
        r.len()
    );
    Ok(r)
}

/// A reward, or log-goodness, that is not finite: an error naming the
/// reward (or goodness) model and the input line, never a `null`.
/// `gives` says who gives what, e.g. "the reward R gives this sample a reward".
fn check_finite(at: &str, gives: impl Fn() -> String, v: f32) -> anyhow::Result<()> {
    ensure!(
        v.is_finite(),
        "{at}: {} of {v}, which is not finite: the model's weights or activations \
         hold NaN or infinities (check the checkpoint)",
        gives()
    );
    Ok(())
}

pub fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    // Before any model loads: a bad --out fails now, not after scoring.
    check_writable(&args.out).context("--out")?;
    let goodness = goodness_model(args)?;
    let needs_reference = goodness.needs_reference();
    let reward = reward_spec(args)?.build(args.device.resolve()?)?;

    let mut records = Vec::new();
    for (line, v) in read_jsonl_numbered::<serde_json::Map<String, serde_json::Value>>(&args.input)?
    {
        let at = || format!("{}:{line}", args.input.display());
        let field = |k: &str| -> anyhow::Result<String> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| format!("{}: no string field `{k}`", at()))
        };
        let prompt = field("prompt")?;
        let sample = SampleText {
            prompt: prompt.clone(),
            completion: field("completion")?,
        };
        let reference = if needs_reference {
            Some(SampleText {
                prompt,
                completion: field("reference")?,
            })
        } else {
            None
        };
        records.push((line, v, sample, reference));
    }

    let bar = align_core::progress::bar(!args.quiet, records.len() as u64, "score", "samples");
    let mut out = AtomicFile::create(&args.out)?;
    for chunk in records.chunks(args.batch_size.max(1) * 8) {
        let at = |line: &usize| format!("{}:{line}", args.input.display());
        let by = |whom: &str| format!("the reward {} gives {whom} a reward", args.reward);
        let rewards_of = rewards(reward.as_ref(), chunk.iter().map(|r| r.2.clone()).collect())?;
        for ((line, ..), &r) in chunk.iter().zip(&rewards_of) {
            check_finite(&at(line), || by("this sample"), r)?;
        }
        let reference = if needs_reference {
            let refs = chunk.iter().filter_map(|r| r.3.clone()).collect();
            let r = rewards(reward.as_ref(), refs)?;
            for ((line, ..), &r) in chunk.iter().zip(&r) {
                check_finite(&at(line), || by("its `reference`"), r)?;
            }
            Some(Tensor::from_slice(&r))
        } else {
            None
        };
        let r = Tensor::from_slice(&rewards_of);
        let g = goodness.log_goodness(&r, reference.as_ref())?;
        let g: Vec<f32> = Vec::try_from(g.to_kind(Kind::Float).to_device(Device::Cpu).view([-1]))?;
        ensure!(
            g.len() == chunk.len(),
            "goodness `{}` gave {} values for {} samples",
            args.goodness,
            g.len(),
            chunk.len()
        );
        for ((line, rec, _, _), (reward, lg)) in chunk.iter().zip(rewards_of.iter().zip(g)) {
            let gives = || {
                format!(
                    "goodness `{}` (tau {}) gives this sample a log-goodness",
                    args.goodness, args.tau
                )
            };
            check_finite(&at(line), gives, lg)?;
            let mut rec = rec.clone();
            rec.insert("reward".into(), serde_json::json!(reward));
            rec.insert("log_goodness".into(), serde_json::json!(lg));
            writeln!(out, "{}", serde_json::to_string(&rec)?)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    out.commit()?;
    eprintln!("scored {} samples → {}", records.len(), args.out.display());
    Ok(())
}
