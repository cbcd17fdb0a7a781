//! The manifest's shared draws from the prior (`train.sample_cache`): where
//! they are kept, and the fingerprint that says which prior and reward made
//! them.

use std::path::{Path, PathBuf};

use align_core::manifest::{Manifest, SampleCacheMode};
use align_core::sample_cache::SampleCache;
use align_core::Policy;
use anyhow::Context;
use sha2::{Digest, Sha256};

/// Where sample files go: `$BRAIN_RS_CACHE/samples`, else
/// `~/.cache/brain-rs/samples`.
pub fn root() -> PathBuf {
    crate::sft::cache_root().join("samples")
}

/// The cache `train.sample_cache` asks for (`None`: every run draws its own);
/// `text_task` picks what `"auto"` means.
pub fn cache(
    manifest: &Manifest,
    prior: &dyn Policy,
    device: tch::Device,
    text_task: bool,
) -> anyhow::Result<Option<SampleCache>> {
    let disk = match manifest.train.sample_cache {
        SampleCacheMode::Off => return Ok(None),
        SampleCacheMode::Memory => false,
        SampleCacheMode::Disk => true,
        SampleCacheMode::Auto => text_task,
    };
    // Servers' draws are shared by the runs in memory, never kept on disk:
    // what a server draws for a seed is the server's affair, not a function
    // of the key and fingerprint.
    if !disk || manifest.sampler.is_some() {
        return Ok(Some(SampleCache::new()));
    }
    let fingerprint = fingerprint(manifest, prior, device).context("fingerprinting the prior")?;
    Ok(Some(SampleCache::on_disk(&root(), &fingerprint, device)))
}

/// What determines a prior draw and its reward besides its [`SampleKey`]
/// (prompts, counts, sampling settings, seed): the prior's weights (hashed
/// whole, so an SFT stage or a changed checkpoint is a new prior), the
/// model, reward and task settings, the files they name (by size and
/// modification time), the device, the thread count and the CPU (float
/// paths differ between them).
///
/// [`SampleKey`]: align_core::sample_cache::SampleKey
fn fingerprint(
    manifest: &Manifest,
    prior: &dyn Policy,
    device: tch::Device,
) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    h.update(crate::machine(device));
    h.update(format!("threads {}\n", tch::get_num_threads()));
    h.update(format!("seed {}\n", manifest.seed));
    let base = manifest.path.parent().unwrap_or(Path::new("."));
    for (what, plugin, config) in [
        ("model", &manifest.model.plugin, &manifest.model.config),
        ("reward", &manifest.reward.plugin, &manifest.reward.config),
        ("task", &manifest.task.plugin, &manifest.task.config),
    ] {
        h.update(format!("{what} {plugin} {config}\n"));
        files(config, base, &mut h);
    }
    if let Some(sft) = &manifest.sft {
        h.update(toml::to_string(sft)?);
    }
    let mut vars: Vec<(String, tch::Tensor)> = prior.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        h.update(format!("{name} {:?} {:?}\n", t.kind(), t.size()));
        // The bytes, without a copy: the tensor is contiguous on the CPU.
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        // SAFETY: `t` is a contiguous CPU tensor of `bytes` bytes, alive
        // until the end of this iteration.
        let view = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, bytes) };
        h.update(view);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Hashes the size and modification time of every file a config's strings
/// name (a folder: its files), so that a retrained reward model in the same
/// folder is a new reward.
fn files(config: &toml::Value, base: &Path, h: &mut Sha256) {
    match config {
        toml::Value::String(s) => {
            let path = match s.strip_prefix("~/") {
                Some(rest) => std::env::var_os("HOME").map_or_else(
                    || PathBuf::from(rest),
                    |home| PathBuf::from(home).join(rest),
                ),
                None => base.join(s),
            };
            let mut entries = match std::fs::read_dir(&path) {
                Ok(dir) => dir.flatten().map(|e| e.path()).collect(),
                Err(_) => vec![path.clone()],
            };
            entries.sort();
            for file in entries {
                if let Ok(meta) = std::fs::metadata(&file) {
                    let modified = meta.modified().ok().and_then(|m| {
                        m.duration_since(std::time::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_nanos())
                    });
                    h.update(format!("{} {} {modified:?}\n", file.display(), meta.len()));
                }
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|v| files(v, base, h)),
        toml::Value::Table(table) => table.values().for_each(|v| files(v, base, h)),
        _ => {}
    }
}
