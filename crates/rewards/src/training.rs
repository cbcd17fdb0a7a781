//! Training scalar reward models: the Bradley–Terry pairwise loss on
//! preference pairs and the logistic (classifier) loss on labelled texts, one
//! flat loop for both, and the held-out accuracies.
//!
//! With `freeze_backbone` the body's pooled features are computed once and
//! only the head trains (a logistic regression on sentence embeddings);
//! otherwise everything is fine-tuned with AdamW, linear warm-up and decay.

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
    /// Train the head only, on features computed once.
    #[serde(default)]
    pub freeze_backbone: bool,
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
        if self.weight_decay < 0.0 {
            return Some(("weight_decay", "must be ≥ 0".into()));
        }
        if self.max_grad_norm <= 0.0 {
            return Some(("max_grad_norm", "must be > 0".into()));
        }
        None
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

/// Head outputs `[B, L]` of the texts with indices `idx` into `ids` (or
/// into the precomputed `features`).
fn logits_of(rm: &ScalarRm, ids: &[Vec<i64>], features: Option<&Tensor>, idx: &[usize]) -> Tensor {
    let f = match features {
        Some(f) => {
            let i: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            f.index_select(0, &Tensor::from_slice(&i).to_device(f.device()))
        }
        None => {
            let rows: Vec<&[i64]> = idx.iter().map(|&i| ids[i].as_slice()).collect();
            let (x, mask) = rm.pad(&rows);
            rm.features(&x, &mask)
        }
    };
    rm.head(&f) // [B, L]
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
    let ids = rm.encoder().encode_all(&train.texts())?;
    let features = s.freeze_backbone.then(|| {
        let start = std::time::Instant::now();
        let f = features_of(rm, &ids, 64);
        eprintln!(
            "computed the frozen body's features of {} texts in {:.1} s",
            ids.len(),
            start.elapsed().as_secs_f64()
        );
        f
    });
    if s.freeze_backbone {
        for (_, mut v) in rm.vs.variables() {
            let _ = v.requires_grad_(false);
        }
        for mut p in rm.head_parameters() {
            let _ = p.requires_grad_(true);
        }
    }
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
            let loss = match train {
                Examples::Labelled(x) => {
                    let logits = logits_of(rm, &ids, features.as_ref(), batch);
                    let labels: Vec<i64> = batch.iter().map(|&i| x[i].1).collect();
                    let labels = Tensor::from_slice(&labels).to_device(logits.device());
                    classifier_loss(&logits, &labels)
                }
                Examples::Pairs(_) => {
                    // Chosen at 2i, rejected at 2i + 1; one forward for both.
                    let idx: Vec<usize> = batch.iter().flat_map(|&i| [2 * i, 2 * i + 1]).collect();
                    let logits = logits_of(rm, &ids, features.as_ref(), &idx);
                    let r = rm.reward_of_logits(&logits).view([-1, 2]); // [B, 2]
                    bradley_terry_loss(&r.select(1, 0), &r.select(1, 1))
                }
            };
            opt.set_lr(s.lr * schedule(step));
            opt.set_lr_group(HEAD_GROUP, head_lr * schedule(step));
            opt.backward_step_clip_norm(&loss, s.max_grad_norm);
            let l = loss.double_value(&[]);
            loss_sum += l * batch.len() as f64;
            step += 1;
            progress(step, total, l);
        }
        reports.push(EpochReport {
            epoch,
            train_loss: loss_sum / train.len() as f64,
            val_accuracy: accuracy(rm, val, s.batch_size.max(32))?,
        });
    }
    Ok(reports)
}

/// Classification accuracy (labelled texts: the predicted class — for one
/// label, logit > 0 — equals the label) or pairwise accuracy (pairs: the
/// chosen text gets the higher reward). NaN when there are no examples.
pub fn accuracy(rm: &ScalarRm, examples: &Examples, batch: usize) -> anyhow::Result<f64> {
    if examples.is_empty() {
        return Ok(f64::NAN);
    }
    let texts = examples.texts();
    let correct = match examples {
        Examples::Labelled(x) => {
            let ids = rm.encoder().encode_all(&texts)?;
            let logits = tch::no_grad(|| {
                let f = features_of(rm, &ids, batch);
                rm.head(&f)
            });
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
            // A text is usually in several pairs: score each once.
            let mut unique: Vec<&str> = texts.clone();
            unique.sort_unstable();
            unique.dedup();
            let r = rm.score_texts(&unique, batch)?;
            let reward = |t: &str| r[unique.binary_search(&t).expect("scored above")];
            texts
                .chunks(2)
                .filter(|c| reward(c[0]) > reward(c[1]))
                .count()
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
