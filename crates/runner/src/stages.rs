//! The `[stages]` that run before a manifest's plugins are built: reward
//! models trained from their `train-rm` manifests, each cached by the hash
//! of its inputs and settings (see `align_rewards::pipeline::ensure_trained`).

use std::path::PathBuf;

use align_core::manifest::ManifestError;

use align_rewards::pipeline::{self, RmManifest};
use anyhow::Context;

/// Reads every listed reward-model manifest (a bad one stops everything
/// before any work, with its located error).
pub fn load(paths: &[PathBuf]) -> Result<Vec<(PathBuf, RmManifest)>, ManifestError> {
    paths
        .iter()
        .map(|p| Ok((p.clone(), RmManifest::load(p, &[])?)))
        .collect()
}

/// Trains (or reuses) every reward model listed; one line per stage.
pub fn reward_models(
    stages: &[(PathBuf, RmManifest)],
    progress: bool,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for (path, m) in stages {
        let results = PathBuf::from("results").join(&m.name);
        let done = pipeline::ensure_trained(m, &results, progress)
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
pub fn plan_reward_models(stages: &[(PathBuf, RmManifest)]) -> anyhow::Result<(Vec<String>, bool)> {
    let mut lines = Vec::new();
    let mut all_cached = true;
    for (path, m) in stages {
        let cached = pipeline::is_cached(m)?;
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
