//! Samples from a fixed distribution, drawn and scored once per manifest and
//! shared by every run that draws them. Every run of a manifest sees the same
//! random numbers at the same step ([`step_seed`](crate::batcher::step_seed):
//! common random numbers), so runs whose plans draw the same number of
//! samples from the prior at a step would each redo the same sampling and
//! scoring; with the cache the first run draws and the others read.
//!
//! On disk ([`SampleCache::on_disk`]) the draws outlive the process: a
//! manifest rerun with one more estimator, or a resumed run, reads its prior
//! samples instead of drawing them again. Each file is named by a hash of its
//! [`SampleKey`] and of the *fingerprint* the runner gives the cache: what
//! makes the prior and the reward what they are (the prior's weights, the
//! reward model's files, device, threads, this format). A file whose key
//! differs from the one asked for is never read as a hit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::task::Prompt;
use crate::{SampleBatch, SamplingConfig};

/// Everything that determines a draw from the prior (the prior itself is
/// fixed for the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SampleKey {
    prompts: Vec<Vec<i64>>,
    count: i64,
    max_new_tokens: i64,
    eos: Option<i64>,
    /// Temperature and top-p by their bits: equal settings, equal keys.
    temperature: u64,
    top_k: Option<i64>,
    top_p: Option<u64>,
    seed: u64,
    /// `(first, total)` when the prompts are one data-parallel rank's part
    /// of a step's `total` prompts ([`Part`](crate::sampling::Part)): the
    /// draws depend on where they stand. Absent for a whole call, so a
    /// single process's keys (and files) are what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    part: Option<(usize, usize)>,
}

impl SampleKey {
    pub fn new(
        prompts: &[Prompt],
        count: i64,
        max_new_tokens: i64,
        eos: Option<i64>,
        config: &SamplingConfig,
        seed: u64,
    ) -> SampleKey {
        SampleKey {
            prompts: prompts.iter().map(|p| p.ids.clone()).collect(),
            count,
            max_new_tokens,
            eos,
            temperature: config.temperature.to_bits(),
            top_k: config.top_k,
            top_p: config.top_p.map(f64::to_bits),
            seed,
            part: None,
        }
    }

    /// The key of the same prompts drawn as `part` of a larger call.
    pub fn in_part(mut self, part: crate::sampling::Part) -> SampleKey {
        let whole = part.first == 0 && part.total == self.prompts.len();
        self.part = (!whole).then_some((part.first, part.total));
        self
    }
}

/// Bumped when the sampler's draws or this file layout change, so that old
/// files are never read as current draws. (Sampling a data-parallel rank's
/// part of a call left a whole call's draws and keys as they were: v1 files
/// stay valid; a part's key differs by its `part`.)
const FORMAT: &str = "brain-rs sample cache v1";

/// Where draws outlive the process: `dir` holds one JSON file per draw.
struct Disk {
    dir: PathBuf,
    fingerprint: String,
    device: Device,
}

/// Scored draws by key: the batch and its rewards `[B]`, in memory and,
/// when made with [`SampleCache::on_disk`], in files.
#[derive(Default)]
pub struct SampleCache {
    draws: Mutex<HashMap<SampleKey, (SampleBatch, Tensor)>>,
    disk: Option<Disk>,
    hits: AtomicUsize,
    disk_hits: AtomicUsize,
    misses: AtomicUsize,
}

impl SampleCache {
    /// A cache that lives as long as the process.
    pub fn new() -> SampleCache {
        SampleCache::default()
    }

    /// A cache that also keeps every draw in `root/<fingerprint[..16]>/`,
    /// read back onto `device`. `fingerprint` must change whenever the prior,
    /// the reward or anything else that shapes a draw or its score changes.
    pub fn on_disk(root: &Path, fingerprint: &str, device: Device) -> SampleCache {
        let fingerprint = hex(&Sha256::digest(format!("{FORMAT}\n{fingerprint}")));
        SampleCache {
            disk: Some(Disk {
                dir: root.join(&fingerprint[..16]),
                fingerprint,
                device,
            }),
            ..SampleCache::default()
        }
    }

    /// The folder the draws are written to, when on disk.
    pub fn dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(|d| d.dir.as_path())
    }

    /// The draw for `key`: from memory, else from disk, else made by `draw`
    /// (and then kept in both).
    pub fn get_or_draw(
        &self,
        key: SampleKey,
        draw: impl FnOnce() -> anyhow::Result<(SampleBatch, Tensor)>,
    ) -> anyhow::Result<(SampleBatch, Tensor)> {
        let shared = |(b, r): &(SampleBatch, Tensor)| (b.shallow_clone(), r.shallow_clone());
        if let Some(found) = self.lock().get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(shared(found));
        }
        let made = match self
            .disk
            .as_ref()
            .map(|d| d.read(&key))
            .transpose()?
            .flatten()
        {
            Some(read) => {
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                read
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let made = draw()?;
                if let Some(disk) = &self.disk {
                    disk.write(&key, &made)?;
                }
                made
            }
        };
        let out = shared(&made);
        self.lock().insert(key, made);
        Ok(out)
    }

    /// Forgets every draw held in memory (the keys of another seed never
    /// match them); files stay.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// `(draws read from memory, draws read from disk, draws made)`.
    pub fn stats(&self) -> (usize, usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.disk_hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SampleKey, (SampleBatch, Tensor)>> {
        // A panic while holding the lock leaves a consistent map: use it.
        self.draws.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One draw as a file: the key and fingerprint it answers, the batch's
/// tensors as exact numbers (f32 → f64 → f32 is lossless), its texts.
#[derive(Serialize, Deserialize)]
struct DrawFile {
    format: String,
    fingerprint: String,
    key: SampleKey,
    input_ids: Vec<Vec<i64>>,
    attention_mask: Vec<Vec<i64>>,
    completion_mask: Vec<Vec<i64>>,
    prompt_index: Vec<usize>,
    proposal_logp: Vec<f32>,
    model_logp: Vec<f32>,
    reward: Vec<f32>,
    texts: Option<Vec<(String, String)>>,
}

impl Disk {
    fn path(&self, key: &SampleKey) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.fingerprint.as_bytes());
        h.update(serde_json::to_vec(key).expect("a key serialises"));
        self.dir.join(format!("{}.json", &hex(&h.finalize())[..32]))
    }

    /// The stored draw for `key`, `None` when there is none (or the file
    /// answers another key or format: then it is drawn again and replaced).
    fn read(&self, key: &SampleKey) -> anyhow::Result<Option<(SampleBatch, Tensor)>> {
        let path = self.path(key);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file: DrawFile = match serde_json::from_slice(&text) {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "note: {} is not a readable sample file ({e}); drawing again",
                    path.display()
                );
                return Ok(None);
            }
        };
        if file.format != FORMAT || file.fingerprint != self.fingerprint || &file.key != key {
            return Ok(None);
        }
        let rows = file.prompt_index.len();
        let matrix = |m: &[Vec<i64>], what: &str| -> anyhow::Result<Tensor> {
            let width = m.first().map_or(0, Vec::len);
            anyhow::ensure!(
                m.len() == rows && m.iter().all(|r| r.len() == width),
                "{}: `{what}` is not a {rows}-row matrix",
                path.display()
            );
            let flat: Vec<i64> = m.concat();
            Ok(Tensor::from_slice(&flat)
                .view([rows as i64, width as i64])
                .to_device(self.device))
        };
        let vector = |v: &[f32], what: &str| -> anyhow::Result<Tensor> {
            anyhow::ensure!(
                v.len() == rows,
                "{}: `{what}` has {} values for {rows} rows",
                path.display(),
                v.len()
            );
            Ok(Tensor::from_slice(v).to_device(self.device))
        };
        let batch = SampleBatch {
            input_ids: matrix(&file.input_ids, "input_ids")?,
            attention_mask: matrix(&file.attention_mask, "attention_mask")?,
            completion_mask: matrix(&file.completion_mask, "completion_mask")?,
            prompt_index: file.prompt_index,
            proposal_logp: vector(&file.proposal_logp, "proposal_logp")?,
            model_logp: vector(&file.model_logp, "model_logp")?,
            texts: file.texts.map(|t| {
                t.into_iter()
                    .map(|(prompt, completion)| crate::SampleText { prompt, completion })
                    .collect()
            }),
        };
        let reward = vector(&file.reward, "reward")?;
        Ok(Some((batch, reward)))
    }

    /// Writes the draw whole (a temporary file renamed over the name).
    fn write(
        &self,
        key: &SampleKey,
        (batch, reward): &(SampleBatch, Tensor),
    ) -> anyhow::Result<()> {
        let matrix = |t: &Tensor| -> anyhow::Result<Vec<Vec<i64>>> {
            Ok(Vec::<Vec<i64>>::try_from(
                t.to_device(Device::Cpu).to_kind(Kind::Int64),
            )?)
        };
        let vector = |t: &Tensor| -> anyhow::Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                t.to_device(Device::Cpu).to_kind(Kind::Float).view([-1]),
            )?)
        };
        let file = DrawFile {
            format: FORMAT.into(),
            fingerprint: self.fingerprint.clone(),
            key: key.clone(),
            input_ids: matrix(&batch.input_ids)?,
            attention_mask: matrix(&batch.attention_mask)?,
            completion_mask: matrix(&batch.completion_mask)?,
            prompt_index: batch.prompt_index.clone(),
            proposal_logp: vector(&batch.proposal_logp)?,
            model_logp: vector(&batch.model_logp)?,
            reward: vector(reward)?,
            texts: batch.texts.as_ref().map(|t| {
                t.iter()
                    .map(|s| (s.prompt.clone(), s.completion.clone()))
                    .collect()
            }),
        };
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the sample cache {}", self.dir.display()))?;
        crate::io::write_atomic(&self.path(key), &serde_json::to_vec(&file)?)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
