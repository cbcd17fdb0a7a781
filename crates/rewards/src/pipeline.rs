//! The `train-rm` pipeline: a reward-model manifest ([`RmManifest`]) is
//! trained into an HF directory, with its held-out figures written to a
//! results directory ([`train_rm`]).

use std::path::{Path, PathBuf};

use align_core::io::write_atomic;
use align_core::manifest::{DeviceChoice, InputPath, ManifestError, ManifestSource, OutputPath};
use align_data::rm_examples::ExampleKind;
pub use align_data::rm_examples::{PairFileData, RmData, RmExamples, SentimentRmData};
use anyhow::ensure;
use serde::{Deserialize, Serialize};

use crate::scalar::{Pooling, ScalarRm};
use crate::training::{self, Examples, TrainSettings};

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

impl Objective {
    /// What this objective trains on.
    pub fn example_kind(self) -> ExampleKind {
        match self {
            Objective::Classifier => ExampleKind::Labelled,
            Objective::BradleyTerry => ExampleKind::Pairs,
        }
    }
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

impl RmManifest {
    /// Reads a `train-rm` manifest through the one manifest loader: `--set`
    /// overrides, errors at file:line:column with a fix, and paths resolved
    /// against the manifest's directory (`~/` is the home directory).
    pub fn load(path: &Path, overrides: &[String]) -> Result<RmManifest, ManifestError> {
        let src = ManifestSource::read(path, overrides)?;
        let mut m: RmManifest = src.deserialize()?;
        src.resolve("model.backbone", &mut m.model.backbone)?;
        if let RmData::PreferenceFile(p) = &mut m.data {
            src.resolve("data.preference-file.path", &mut p.path)?;
        }
        src.resolve_output(&mut m.out);
        if let Some((key, why)) = m.train.invalid() {
            return Err(src.invalid(
                &format!("train.{key}"),
                format!("`train.{key}` {why}"),
                format!("change `train.{key}`"),
            ));
        }
        if matches!(m.data, RmData::PreferenceFile(_)) && m.objective == Objective::Classifier {
            return Err(src.invalid(
                "objective",
                "a preference file holds pairs, not labelled texts",
                "use objective = \"bradley-terry\"",
            ));
        }
        if m.model.max_len < 8 {
            return Err(src.invalid(
                "model.max_len",
                "`model.max_len` must be ≥ 8",
                "raise `model.max_len`",
            ));
        }
        Ok(m)
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
    let ex = m.data.examples(m.objective.example_kind())?;
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
    let mut rm = ScalarRm::from_backbone(m.model.backbone.path(), m.model.pooling, labels, device)?;
    rm.max_len = m.model.max_len;
    let bar = align_core::progress::bar(progress, 0, "train-rm", "steps");
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
    rm.save(m.out.path(), &extra)?;

    let outcome = RmOutcome {
        epochs,
        held_out,
        out_dir: results_dir.to_path_buf(),
        model_dir: m.out.path().to_path_buf(),
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
