//! The `[sft]` stage: fine-tune the base model on the task's gold outputs
//! (maximum likelihood of each training prompt's reference), which becomes
//! the prior every run aligns. Cached by a hash of what determines it: the
//! base weights, the tokenized training pairs, the settings and the seed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use align_core::logprob::policy_logprobs;
use align_core::manifest::SftConfig;
use align_core::{Policy, SampleBatch, Task};
use anyhow::Context;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use tch::nn::OptimizerConfig;
use tch::{nn, Kind};

/// Bumped when the training or the file layout changes, so stale caches retrain.
const FORMAT: &str = "sft-v2";

/// What the stage did.
pub struct SftOutcome {
    pub dir: PathBuf,
    pub cached: bool,
    /// Mean gold NLL per token in the first and last epoch (None when cached).
    pub nll: Option<(f64, f64)>,
    pub seconds: f64,
}

/// The runner's cache: `$BRAIN_RS_CACHE`, else `~/.cache/brain-rs`.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("BRAIN_RS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/brain-rs")
}

/// Where stage outputs are cached: `$BRAIN_RS_CACHE/stages` or
/// `~/.cache/brain-rs/stages`.
pub fn stage_root() -> PathBuf {
    cache_root().join("stages")
}

/// The training pairs: each training prompt with its reference, cut to
/// `max_len`; a reference that fits ends with the EOS token, so the SFT
/// model learns to stop as the gold does.
fn pairs(task: &dyn Task, max_len: usize) -> anyhow::Result<Vec<(usize, Vec<i64>)>> {
    let refs = task
        .train_references()
        .context("`[sft]` needs gold outputs, and this task has none")?;
    let eos = task.eos_token();
    Ok(refs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(i, r)| {
            let mut target = r[..r.len().min(max_len)].to_vec();
            if let (Some(eos), true) = (eos, r.len() < max_len) {
                target.push(eos);
            }
            (i, target)
        })
        .collect())
}

/// SHA-256 over the base weights (by name), the pairs, the settings, the seed.
fn key(
    prior: &dyn Policy,
    task: &dyn Task,
    pairs: &[(usize, Vec<i64>)],
    c: &SftConfig,
    seed: u64,
) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    h.update(FORMAT);
    let mut vars: Vec<(String, tch::Tensor)> = prior.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        h.update(name.as_bytes());
        let t = t.to_device(tch::Device::Cpu).contiguous();
        h.update(format!("{:?}{:?}", t.kind(), t.size()));
        let bytes: Vec<u8> = Vec::<u8>::try_from(t.view_dtype(Kind::Uint8).view([-1]))?;
        h.update(&bytes);
    }
    for (i, r) in pairs {
        for id in &task.train_prompts()[*i].ids {
            h.update(id.to_le_bytes());
        }
        h.update(b"|");
        for id in r {
            h.update(id.to_le_bytes());
        }
        h.update(b"\n");
    }
    h.update(toml::to_string(c)?);
    h.update(seed.to_le_bytes());
    Ok(format!("{:x}", h.finalize()))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StageFile {
    stage: String,
    key: String,
    settings: SftConfig,
    pairs: usize,
    nll_first_epoch: f64,
    nll_last_epoch: f64,
    seconds: f64,
}

/// Fine-tunes `prior` in place on the task's gold outputs, or loads the
/// cached result of the same fine-tuning.
pub fn sft(
    prior: &mut dyn Policy,
    task: &dyn Task,
    c: &SftConfig,
    seed: u64,
    progress: bool,
) -> anyhow::Result<SftOutcome> {
    let started = Instant::now();
    let max_len = c.max_len.unwrap_or(task.max_new_tokens() as usize);
    let pairs = pairs(task, max_len)?;
    anyhow::ensure!(
        !pairs.is_empty(),
        "`[sft]`: the task has no non-empty gold outputs"
    );
    let key = key(prior, task, &pairs, c, seed)?;
    let dir = stage_root().join(format!("sft-{}", &key[..16]));
    let weights = dir.join("model.safetensors");
    if let Ok(text) = std::fs::read_to_string(dir.join("stage.json")) {
        let stage: StageFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a stage record", dir.join("stage.json").display()))?;
        if stage.key == key {
            prior
                .var_store_mut()
                .load(&weights)
                .with_context(|| format!("loading the cached SFT model {}", weights.display()))?;
            return Ok(SftOutcome {
                dir,
                cached: true,
                nll: None,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }

    prior.var_store_mut().unfreeze();
    let mut opt = nn::Adam::default().build(prior.var_store(), c.lr)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let steps_per_epoch = pairs.len().div_ceil(c.batch_size);
    let bar = align_core::progress::bar(
        progress,
        (c.epochs * steps_per_epoch) as u64,
        "SFT",
        "steps",
    );
    let prompts = task.train_prompts();
    let device = prior.device();
    let mut epoch_nll = Vec::new();
    for _ in 0..c.epochs {
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.shuffle(&mut rng);
        let (mut nll_sum, mut tokens) = (0.0, 0.0);
        for chunk in order.chunks(c.batch_size) {
            let ps: Vec<_> = chunk.iter().map(|&j| prompts[pairs[j].0].clone()).collect();
            let rs: Vec<Vec<i64>> = chunk.iter().map(|&j| pairs[j].1.clone()).collect();
            let batch = SampleBatch::from_pairs(&ps, &rs, device);
            let logp = policy_logprobs(prior, &batch); // [B] summed over gold tokens
            let n = batch.lengths().sum(Kind::Float); // tokens in the batch
            let loss = -logp.sum(Kind::Float) / &n; // mean NLL per gold token
            opt.zero_grad();
            loss.backward();
            prior.finish_backward();
            opt.step();
            nll_sum += loss.double_value(&[]) * n.double_value(&[]);
            tokens += n.double_value(&[]);
            bar.inc(1);
        }
        epoch_nll.push(nll_sum / tokens);
    }
    bar.finish_and_clear();
    prior.var_store_mut().freeze();
    let seconds = started.elapsed().as_secs_f64();
    let stage = StageFile {
        stage: "sft".into(),
        key: key.clone(),
        settings: c.clone(),
        pairs: pairs.len(),
        nll_first_epoch: epoch_nll[0],
        nll_last_epoch: *epoch_nll.last().expect("≥ 1 epoch"),
        seconds,
    };
    std::fs::create_dir_all(stage_root())
        .with_context(|| format!("creating {}", stage_root().display()))?;
    let vs = prior.var_store();
    // The cache holds this stage's own directories only: one without an SFT
    // stage.json is not ours to replace.
    let ours = |existing: &Path| -> anyhow::Result<()> {
        let file = existing.join("stage.json");
        let stage: Option<serde_json::Value> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match stage.as_ref().and_then(|v| v.get("stage")?.as_str()) {
            Some("sft") => Ok(()),
            _ => anyhow::bail!(
                "{} exists and is not an SFT stage this runner wrote (no stage.json with \"stage\": \"sft\"): move it away",
                existing.display()
            ),
        }
    };
    align_core::io::write_dir_atomic_checked(&dir, ours, |tmp: &Path| {
        vs.save(tmp.join("model.safetensors"))?;
        std::fs::write(
            tmp.join("stage.json"),
            serde_json::to_string_pretty(&stage)?,
        )?;
        Ok(())
    })?;
    Ok(SftOutcome {
        dir,
        cached: false,
        nll: Some((stage.nll_first_epoch, stage.nll_last_epoch)),
        seconds,
    })
}
