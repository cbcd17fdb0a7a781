//! The `[stages]` that run before a manifest's plugins are built: reward
//! models trained from their `train-rm` manifests, each cached by the hash
//! of its inputs and settings (see `align_rewards::pipeline::ensure_trained`).

use std::path::{Path, PathBuf};

use align_rewards::pipeline::{self, RmManifest};
use anyhow::Context;

/// Whether the RM at `m.out` was trained from exactly these inputs.
fn is_cached(m: &RmManifest) -> anyhow::Result<bool> {
    let key = pipeline::stage_key(m)?;
    let stage = m.out.path().join("stage.json");
    let Ok(text) = std::fs::read_to_string(&stage) else {
        return Ok(false);
    };
    let record: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", stage.display()))?;
    Ok(record.get("key").and_then(|k| k.as_str()) == Some(key.key.as_str()))
}

fn load(path: &Path) -> anyhow::Result<RmManifest> {
    RmManifest::load(path, &[]).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Trains (or reuses) every reward model listed; one line per stage.
pub fn reward_models(paths: &[PathBuf], progress: bool) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for path in paths {
        let m = load(path)?;
        let results = PathBuf::from("results").join(&m.name);
        let done = pipeline::ensure_trained(&m, &results, progress)
            .with_context(|| format!("reward-model stage {}", path.display()))?;
        lines.push(format!(
            "reward model `{}`: {} ({})",
            m.name,
            done.status.as_str(),
            done.model_dir.display()
        ));
    }
    Ok(lines)
}

/// What `reward_models` would do, without training.
pub fn plan_reward_models(paths: &[PathBuf]) -> anyhow::Result<(Vec<String>, bool)> {
    let mut lines = Vec::new();
    let mut all_cached = true;
    for path in paths {
        let m = load(path)?;
        let cached = is_cached(&m)?;
        all_cached &= cached;
        lines.push(format!(
            "reward model `{}` from {}: {} ({})",
            m.name,
            path.display(),
            if cached { "cached" } else { "to train" },
            m.out.path().display()
        ));
    }
    Ok((lines, all_cached))
}
