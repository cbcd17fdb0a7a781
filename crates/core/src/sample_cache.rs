//! Samples from a fixed distribution, drawn and scored once per manifest and
//! shared by every run that draws them. Every run of a manifest sees the same
//! random numbers at the same step ([`step_seed`](crate::batcher::step_seed):
//! common random numbers), so runs whose plans draw the same number of
//! samples from the prior at a step would each redo the same sampling and
//! scoring; with the cache the first run draws and the others read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tch::Tensor;

use crate::task::Prompt;
use crate::{SampleBatch, SamplingConfig};

/// Everything that determines a draw from the prior (the prior itself is
/// fixed for the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
        }
    }
}

/// Scored draws by key: the batch and its rewards `[B]`.
#[derive(Default)]
pub struct SampleCache {
    draws: Mutex<HashMap<SampleKey, (SampleBatch, Tensor)>>,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

impl SampleCache {
    pub fn new() -> SampleCache {
        SampleCache::default()
    }

    /// The draw for `key`, made by `draw` the first time it is asked for.
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
        self.misses.fetch_add(1, Ordering::Relaxed);
        let made = draw()?;
        let out = shared(&made);
        self.lock().insert(key, made);
        Ok(out)
    }

    /// Forgets every draw (the keys of another seed never match them).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// `(draws read from the cache, draws made)`.
    pub fn stats(&self) -> (usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SampleKey, (SampleBatch, Tensor)>> {
        // A panic while holding the lock leaves a consistent map: use it.
        self.draws.lock().unwrap_or_else(|e| e.into_inner())
    }
}
