//! Training scalar reward models: the Bradley–Terry pairwise loss on
//! preference pairs and the logistic (classifier) loss on labelled texts, one
//! flat loop for both, and the held-out accuracies.
//!
//! With `freeze_backbone` the body's pooled features are computed once and
//! only the head trains (a logistic regression on sentence embeddings);
//! otherwise everything is fine-tuned with AdamW, linear warm-up and decay.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Kind, Tensor};

use crate::scalar::{ScalarRm, HEAD_GROUP};

/// `−mean log σ(r_chosen − r_rejected)`: Bradley–Terry negative
/// log-likelihood of the preferences; `chosen`, `rejected` `[B]`.
pub fn bradley_terry_loss(chosen: &Tensor, rejected: &Tensor) -> Tensor {
    -(chosen - rejected).log_sigmoid().mean(Kind::Float)
}

/// Logistic loss of head outputs `logits` `[B, L]` against class ids
/// `labels` `[B]` (int64): binary cross-entropy on the logit when `L = 1`
/// (label 1 = positive), softmax cross-entropy otherwise.
pub fn classifier_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    if logits.size()[1] == 1 {
        let target = labels.to_kind(logits.kind());
        logits
            .select(1, 0)
            .binary_cross_entropy_with_logits::<Tensor>(&target, None, None, tch::Reduction::Mean)
    } else {
        logits.cross_entropy_for_logits(labels)
    }
}

/// What an RM learns from (defined with the data it is loaded from).
pub use align_data::rm_examples::Examples;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    #[serde(default = "three")]
    pub epochs: usize,
    /// Examples (texts or pairs) per step.
    #[serde(default = "thirty_two")]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Peak learning rate of the head (default `lr`). The head starts at
    /// zero; at a body-sized rate it stays small, and the body learns to
    /// saturate its features instead, which leaves nearly two-valued rewards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_lr: Option<f64>,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Fraction of the steps spent warming the learning rate up from 0; it
    /// then decays linearly to 0.
    #[serde(default = "default_warmup")]
    pub warmup: f64,
    /// Train the head only, on the body's features computed once (one
    /// forward per distinct text, no gradient): a logistic regression on
    /// sentence embeddings, minutes instead of the fine-tune's half hour.
    #[serde(default)]
    pub freeze_backbone: bool,
    /// Train on a seeded random subset of at most this many training
    /// examples (texts or pairs); validation and held-out sets stay whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_examples: Option<usize>,
    /// Gradient-norm clip.
    #[serde(default = "one")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub seed: u64,
}

fn three() -> usize {
    3
}
fn thirty_two() -> usize {
    32
}
fn default_wd() -> f64 {
    0.01
}
fn default_warmup() -> f64 {
    0.06
}
fn one() -> f64 {
    1.0
}

impl TrainSettings {
    /// The first invalid setting: `(key, why)`.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if self.epochs == 0 {
            return Some(("epochs", "must be ≥ 1".into()));
        }
        if self.max_examples == Some(0) {
            return Some(("max_examples", "must be ≥ 1".into()));
        }
        if self.batch_size == 0 {
            return Some(("batch_size", "must be ≥ 1".into()));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Some(("lr", format!("must be > 0, got {}", self.lr)));
        }
        if let Some(h) = self.head_lr.filter(|h| !(*h > 0.0 && h.is_finite())) {
            return Some(("head_lr", format!("must be > 0, got {h}")));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return Some(("warmup", format!("must be in [0, 1), got {}", self.warmup)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Some((
                "weight_decay",
                format!("must be a finite number ≥ 0, got {}", self.weight_decay),
            ));
        }
        if !(self.max_grad_norm > 0.0 && self.max_grad_norm.is_finite()) {
            return Some((
                "max_grad_norm",
                format!("must be a finite number > 0, got {}", self.max_grad_norm),
            ));
        }
        None
    }
}

/// At most `max` of `examples`, a random subset (seeded, in their original
/// order); all of them when `max` is `None` or not smaller.
pub fn subsample(examples: &Examples, max: Option<usize>, seed: u64) -> Examples {
    let n = examples.len();
    let Some(max) = max.filter(|&m| m < n) else {
        return examples.clone();
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5a3b);
    let mut keep = rand::seq::index::sample(&mut rng, n, max).into_vec();
    keep.sort_unstable();
    match examples {
        Examples::Labelled(x) => Examples::Labelled(keep.iter().map(|&i| x[i].clone()).collect()),
        Examples::Pairs(x) => Examples::Pairs(keep.iter().map(|&i| x[i].clone()).collect()),
    }
}

/// One epoch's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    /// Accuracy on the validation examples (classification or pairwise).
    pub val_accuracy: f64,
}

/// Pooled features `[N, H]` of token-id rows (no gradient), `batch` at a
/// time, in rows sorted by length so batches pad little.
fn features_of(rm: &ScalarRm, ids: &[Vec<i64>], batch: usize) -> Tensor {
    let _guard = tch::no_grad_guard();
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let parts: Vec<Tensor> = order
        .chunks(batch.max(1))
        .map(|c| {
            let rows: Vec<&[i64]> = c.iter().map(|&i| ids[i].as_slice()).collect();
            let (x, mask) = rm.pad(&rows);
            rm.features(&x, &mask)
        })
        .collect();
    let sorted = Tensor::cat(&parts, 0); // [N, H] in `order`
    let order: Vec<i64> = order.iter().map(|&i| i as i64).collect();
    let order = Tensor::from_slice(&order).to_device(sorted.device());
    // Row `order[k]` of the result is row `k` of `sorted`.
    sorted.index_select(0, &order.argsort(0, false))
}

/// Pooled features of distinct texts, computed once without gradient: while
/// the body does not change, each text costs one forward however many sets
/// and pairs it is in.
pub struct TextFeatures {
    rows: HashMap<String, i64>,
    /// `[N, H]`, row `rows[text]`.
    features: Tensor,
}

impl TextFeatures {
    /// Features of every distinct text of `texts`, `batch` at a time.
    pub fn compute(rm: &ScalarRm, texts: &[&str], batch: usize) -> anyhow::Result<TextFeatures> {
        let mut unique = texts.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let ids = rm.encoder().encode_all(&unique)?;
        let features = if ids.is_empty() {
            Tensor::zeros([0, 0], (Kind::Float, rm.vs.device()))
        } else {
            features_of(rm, &ids, batch)
        };
        let rows = unique
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as i64))
            .collect();
        Ok(TextFeatures { rows, features })
    }

    /// Number of distinct texts.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row of each text; fails on a text that was not computed.
    pub fn rows_of(&self, texts: &[&str]) -> anyhow::Result<Vec<i64>> {
        texts
            .iter()
            .map(|t| {
                self.rows
                    .get(*t)
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("no precomputed features for the text {t:?}"))
            })
            .collect()
    }

    /// Features `[B, H]` of the given rows.
    fn select(&self, rows: &[i64]) -> Tensor {
        let i = Tensor::from_slice(rows).to_device(self.features.device());
        self.features.index_select(0, &i)
    }
}

/// Where a training batch's features come from.
enum Source<'a> {
    /// Token ids of `train.texts()`: a forward through the (trained) body.
    Body(Vec<Vec<i64>>),
    /// A frozen body: precomputed features, and the row of each text of
    /// `train.texts()`.
    Frozen(&'a TextFeatures, Vec<i64>),
}

/// Head outputs `[B, L]` of the texts at positions `idx` of `train.texts()`.
fn logits_of(rm: &ScalarRm, source: &Source, idx: &[usize]) -> Tensor {
    let f = match source {
        Source::Frozen(features, rows) => {
            let r: Vec<i64> = idx.iter().map(|&i| rows[i]).collect();
            features.select(&r)
        }
        Source::Body(ids) => {
            let rows: Vec<&[i64]> = idx.iter().map(|&i| ids[i].as_slice()).collect();
            let (x, mask) = rm.pad(&rows);
            rm.features(&x, &mask)
        }
    };
    rm.head(&f) // [B, L]
}

/// Makes only the head trainable.
fn freeze_body(rm: &mut ScalarRm) {
    for (_, mut v) in rm.vs.variables() {
        let _ = v.requires_grad_(false);
    }
    for mut p in rm.head_parameters() {
        let _ = p.requires_grad_(true);
    }
}

/// Features of the training and validation texts, once, for a frozen body.
fn frozen_features(
    rm: &ScalarRm,
    train: &Examples,
    val: &Examples,
) -> anyhow::Result<TextFeatures> {
    let start = std::time::Instant::now();
    let mut texts = train.texts();
    texts.extend(val.texts());
    let f = TextFeatures::compute(rm, &texts, 64)?;
    eprintln!(
        "computed the frozen body's features of {} distinct texts in {:.1} s",
        f.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(f)
}

/// Trains `rm` on `train`, reporting accuracy on `val` after each epoch;
/// `progress(done_steps, total_steps, loss)` is called after every step.
pub fn train(
    rm: &mut ScalarRm,
    train: &Examples,
    val: &Examples,
    s: &TrainSettings,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> anyhow::Result<Vec<EpochReport>> {
    anyhow::ensure!(!train.is_empty(), "no training examples");
    if let Some((key, why)) = s.invalid() {
        anyhow::bail!("train.{key} {why}");
    }
    tch::manual_seed(s.seed as i64);
    let frozen = if s.freeze_backbone {
        freeze_body(rm);
        Some(frozen_features(rm, train, val)?)
    } else {
        None
    };
    let source = match &frozen {
        Some(f) => Source::Frozen(f, f.rows_of(&train.texts())?),
        None => Source::Body(rm.encoder().encode_all(&train.texts())?),
    };
    let mut opt = nn::AdamW {
        wd: s.weight_decay,
        ..Default::default()
    }
    .build(&rm.vs, s.lr)?;
    let steps_per_epoch = train.len().div_ceil(s.batch_size);
    let total = steps_per_epoch * s.epochs;
    let warmup = ((total as f64) * s.warmup).round() as usize;
    // Linear warm-up, then linear decay to 0: the fraction of the peak rate.
    let schedule = |step: usize| {
        if step < warmup {
            (step + 1) as f64 / warmup as f64
        } else {
            (total - step) as f64 / (total - warmup).max(1) as f64
        }
    };
    let head_lr = s.head_lr.unwrap_or(s.lr);
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut reports = Vec::new();
    let mut step = 0;
    for epoch in 1..=s.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for batch in order.chunks(s.batch_size) {
            let loss = batch_loss(rm, train, &source, batch);
            opt.set_lr(s.lr * schedule(step));
            opt.set_lr_group(HEAD_GROUP, head_lr * schedule(step));
            opt.backward_step_clip_norm(&loss, s.max_grad_norm);
            let l = loss.double_value(&[]);
            loss_sum += l * batch.len() as f64;
            step += 1;
            progress(step, total, l);
        }
        let val_accuracy = match &frozen {
            Some(f) => accuracy_on(rm, val, f)?,
            None => accuracy(rm, val, s.batch_size.max(32))?,
        };
        reports.push(EpochReport {
            epoch,
            train_loss: loss_sum / train.len() as f64,
            val_accuracy,
        });
    }
    Ok(reports)
}

/// The loss of the training examples `batch` (indices into `train`).
fn batch_loss(rm: &ScalarRm, train: &Examples, source: &Source, batch: &[usize]) -> Tensor {
    match train {
        Examples::Labelled(x) => {
            let logits = logits_of(rm, source, batch);
            let labels: Vec<i64> = batch.iter().map(|&i| x[i].1).collect();
            let labels = Tensor::from_slice(&labels).to_device(logits.device());
            classifier_loss(&logits, &labels)
        }
        Examples::Pairs(_) => {
            // Chosen at 2i, rejected at 2i + 1; one forward for both.
            let idx: Vec<usize> = batch.iter().flat_map(|&i| [2 * i, 2 * i + 1]).collect();
            let logits = logits_of(rm, source, &idx);
            let r = rm.reward_of_logits(&logits).view([-1, 2]); // [B, 2]
            bradley_terry_loss(&r.select(1, 0), &r.select(1, 1))
        }
    }
}

/// Classification accuracy (labelled texts: the predicted class — for one
/// label, logit > 0 — equals the label) or pairwise accuracy (pairs: the
/// chosen text gets the higher reward). NaN when there are no examples.
pub fn accuracy(rm: &ScalarRm, examples: &Examples, batch: usize) -> anyhow::Result<f64> {
    if examples.is_empty() {
        return Ok(f64::NAN);
    }
    accuracy_on(
        rm,
        examples,
        &TextFeatures::compute(rm, &examples.texts(), batch)?,
    )
}

/// [`accuracy`] from precomputed features of (at least) every text of
/// `examples`: only the head runs.
pub fn accuracy_on(
    rm: &ScalarRm,
    examples: &Examples,
    features: &TextFeatures,
) -> anyhow::Result<f64> {
    if examples.is_empty() {
        return Ok(f64::NAN);
    }
    let rows = features.rows_of(&examples.texts())?;
    let logits = tch::no_grad(|| rm.head(&features.select(&rows))); // [N, L]
    let correct = match examples {
        Examples::Labelled(x) => {
            let predicted: Vec<i64> = if logits.size()[1] == 1 {
                Vec::try_from(logits.select(1, 0).gt(0.0).to_kind(Kind::Int64))?
            } else {
                Vec::try_from(logits.argmax(1, false))?
            };
            predicted
                .iter()
                .zip(x.iter())
                .filter(|(p, (_, l))| *p == l)
                .count()
        }
        Examples::Pairs(_) => {
            let r = rm.reward_of_logits(&logits).view([-1, 2]); // [N, 2]
            let wins = r.select(1, 0).gt_tensor(&r.select(1, 1));
            wins.sum(Kind::Int64).int64_value(&[]) as usize
        }
    };
    Ok(correct as f64 / examples.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(xs: &[f64]) -> Tensor {
        Tensor::from_slice(xs)
    }

    #[test]
    fn bradley_terry_loss_by_hand() {
        // −(log σ(1) + log σ(0)) / 2 = (0.3132617 + 0.6931472) / 2
        let l = bradley_terry_loss(&t(&[1.0, 0.0]), &t(&[0.0, 0.0]));
        assert!((l.double_value(&[]) - 0.503_204_4).abs() < 1e-6);
        // Only the difference counts: a shared offset changes nothing.
        let shifted = bradley_terry_loss(&t(&[4.0, 3.0]), &t(&[3.0, 3.0]));
        assert!((shifted.double_value(&[]) - 0.503_204_4).abs() < 1e-6);
    }

    #[test]
    fn subsample_is_seeded_and_keeps_order() {
        let all = Examples::Labelled((0..10).map(|i| (i.to_string(), i)).collect());
        let a = subsample(&all, Some(4), 7);
        assert_eq!(a, subsample(&all, Some(4), 7));
        let Examples::Labelled(kept) = &a else {
            unreachable!()
        };
        assert_eq!(kept.len(), 4);
        assert!(kept.windows(2).all(|w| w[0].1 < w[1].1), "{kept:?}");
        assert_eq!(subsample(&all, Some(10), 7), all);
        assert_eq!(subsample(&all, None, 7), all);
    }

    #[test]
    fn classifier_loss_by_hand() {
        // One label: (log 2 + log(1 + e²)) / 2 for logits 0 (label 1) and 2 (label 0).
        let l = classifier_loss(
            &t(&[0.0, 2.0]).view([2, 1]),
            &Tensor::from_slice(&[1i64, 0]),
        );
        assert!((l.double_value(&[]) - 1.410_037_6).abs() < 1e-6);
        // Two labels: softmax cross-entropy, log 2 for equal logits.
        let l = classifier_loss(&t(&[0.0, 0.0]).view([1, 2]), &Tensor::from_slice(&[1i64]));
        assert!((l.double_value(&[]) - std::f64::consts::LN_2).abs() < 1e-6);
    }
}
