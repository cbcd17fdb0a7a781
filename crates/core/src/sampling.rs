//! Sampling completions from a policy, recording for each sample its exact
//! log-density under the distribution it was drawn from (after temperature,
//! top-k, top-p) and under the unmodified model.
//!
//! Randomness comes from a per-call seed (ChaCha) and inverse-CDF sampling, so
//! a run is reproducible whatever else used LibTorch's global generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::task::Prompt;
use crate::Policy;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// 0 means greedy decoding.
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        }
    }
}

impl SamplingConfig {
    /// Checks ranges; the error names the offending key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err((
                "temperature",
                format!(
                    "must be a finite number ≥ 0 (0: greedy), got {}",
                    self.temperature
                ),
            ));
        }
        if let Some(k) = self.top_k {
            if k < 1 {
                return Err(("top_k", format!("must be ≥ 1, got {k}")));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(("top_p", format!("must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }

    /// Temperature 1 and no filtering: the sampling distribution is the model's.
    pub fn is_plain(&self) -> bool {
        self.temperature == 1.0 && self.top_k.is_none() && self.top_p.is_none()
    }

    /// Log-probs of the distribution actually sampled from: `logits` `[B, V]`
    /// → `[B, V]` (f32), with filtered tokens at −∞.
    pub fn sampling_logprobs(&self, logits: &Tensor) -> Tensor {
        let mut logits = logits.to_kind(Kind::Float);
        if self.temperature > 0.0 {
            logits /= self.temperature;
        }
        let v = logits.size()[1];
        if let Some(k) = self.top_k.filter(|&k| k < v) {
            let (kth, _) = logits.topk(k, -1, true, true); // [B, k]
            let threshold = kth.narrow(1, k - 1, 1); // [B, 1]
            logits = logits.masked_fill(&logits.lt_tensor(&threshold), f64::NEG_INFINITY);
        }
        if let Some(p) = self.top_p.filter(|&p| p < 1.0) {
            let (sorted, order) = logits.sort(-1, true); // [B, V]
            let probs = sorted.softmax(-1, Kind::Float);
            // Drop a token when the mass before it already reaches p (keeps ≥ 1).
            let before = probs.cumsum(-1, Kind::Float) - &probs;
            let drop_sorted = before.ge(p);
            let drop = drop_sorted.scatter(1, &order, &drop_sorted);
            logits = logits.masked_fill(&drop, f64::NEG_INFINITY);
        }
        logits.log_softmax(-1, Kind::Float)
    }
}

/// Prompts with their sampled completions, prompt-major: rows `p·n .. p·n+n`
/// belong to prompt `p`. Prompts are left-padded, completions right-padded.
#[derive(Debug)]
pub struct SampleBatch {
    /// `[B, T]` i64: prompt then completion.
    pub input_ids: Tensor,
    /// `[B, T]` i64: 1 on real tokens.
    pub attention_mask: Tensor,
    /// `[B, T]` i64: 1 on completion tokens (EOS included).
    pub completion_mask: Tensor,
    /// Index of each row's prompt in the list passed to [`sample`].
    pub prompt_index: Vec<usize>,
    /// `[B]` f32: log-density under the exact sampling distribution.
    pub proposal_logp: Tensor,
    /// `[B]` f32: log-density under the unmodified model (temperature 1).
    pub model_logp: Tensor,
    /// Decoded prompt and completion of each row, for text reward models;
    /// filled by [`SampleBatch::decode_texts`].
    pub texts: Option<Vec<crate::SampleText>>,
}

impl SampleBatch {
    pub fn len(&self) -> usize {
        self.prompt_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompt_index.is_empty()
    }

    /// Builds a batch from prompts and given completions (no sampling): used by
    /// exact evaluators that score an enumerated output space. `completions`
    /// `[M, L]` is paired with every prompt: rows prompt-major.
    pub fn from_completions(
        prompts: &[Prompt],
        completions: &Tensor,
        device: Device,
    ) -> SampleBatch {
        let (m, l) = completions.size2().expect("completions are [M, L]");
        let (m, l) = (m as usize, l as usize);
        let flat = Vec::<i64>::try_from(completions.to_device(Device::Cpu).view([-1]))
            .expect("i64 completions");
        let rows: Vec<Vec<i64>> = flat.chunks(l.max(1)).take(m).map(<[i64]>::to_vec).collect();
        let repeated_prompts: Vec<Prompt> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), m))
            .collect();
        let repeated_rows: Vec<Vec<i64>> = (0..prompts.len())
            .flat_map(|_| rows.iter().cloned())
            .collect();
        let mut batch = SampleBatch::from_pairs(&repeated_prompts, &repeated_rows, device);
        batch.prompt_index = (0..prompts.len())
            .flat_map(|p| std::iter::repeat_n(p, m))
            .collect();
        batch
    }
}

impl SampleBatch {
    /// One given completion per prompt (e.g. gold / SFT references): prompts
    /// left-padded, completions right-padded.
    pub fn from_pairs(prompts: &[Prompt], completions: &[Vec<i64>], device: Device) -> SampleBatch {
        assert_eq!(
            prompts.len(),
            completions.len(),
            "one completion per prompt"
        );
        let (prompt_ids, prompt_mask) = left_pad(prompts, 1, device); // [P, Tp]
        let l = completions.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(completions.len() * l);
        let mut mask = Vec::with_capacity(ids.capacity());
        for c in completions {
            ids.extend(c.iter().copied().chain(std::iter::repeat_n(0, l - c.len())));
            mask.extend(
                std::iter::repeat_n(1i64, c.len()).chain(std::iter::repeat_n(0, l - c.len())),
            );
        }
        let b = prompts.len() as i64;
        let ids = Tensor::from_slice(&ids)
            .view([b, l as i64])
            .to_device(device);
        let cmask = Tensor::from_slice(&mask)
            .view([b, l as i64])
            .to_device(device);
        let zeros = prompt_mask.zeros_like();
        SampleBatch {
            input_ids: Tensor::cat(&[prompt_ids, ids], 1),
            attention_mask: Tensor::cat(&[&prompt_mask, &cmask], 1),
            completion_mask: Tensor::cat(&[zeros, cmask], 1),
            prompt_index: (0..prompts.len()).collect(),
            proposal_logp: Tensor::zeros([b], (Kind::Float, device)),
            model_logp: Tensor::zeros([b], (Kind::Float, device)),
            texts: None,
        }
    }

    /// A batch of decoded texts only (no token ids: the id tensors are
    /// `[B, 0]`), for scoring text that was sampled elsewhere with rewards
    /// that read [`SampleBatch::texts`]. Row `i` is its own prompt `i`.
    pub fn from_texts(texts: Vec<crate::SampleText>, device: Device) -> SampleBatch {
        let b = texts.len() as i64;
        let empty = || Tensor::zeros([b, 0], (Kind::Int64, device));
        SampleBatch {
            input_ids: empty(),
            attention_mask: empty(),
            completion_mask: empty(),
            prompt_index: (0..texts.len()).collect(),
            proposal_logp: Tensor::zeros([b], (Kind::Float, device)),
            model_logp: Tensor::zeros([b], (Kind::Float, device)),
            texts: Some(texts),
        }
    }

    /// The same batch, sharing its tensors' storage.
    pub fn shallow_clone(&self) -> SampleBatch {
        SampleBatch {
            input_ids: self.input_ids.shallow_clone(),
            attention_mask: self.attention_mask.shallow_clone(),
            completion_mask: self.completion_mask.shallow_clone(),
            prompt_index: self.prompt_index.clone(),
            proposal_logp: self.proposal_logp.shallow_clone(),
            model_logp: self.model_logp.shallow_clone(),
            texts: self.texts.clone(),
        }
    }

    /// The rows at `rows` `[K]` (i64), in that order.
    pub fn select_rows(&self, rows: &Tensor) -> SampleBatch {
        let rows = rows.to_device(self.input_ids.device());
        let index = Vec::<i64>::try_from(rows.to_device(Device::Cpu)).expect("row indices are i64");
        SampleBatch {
            input_ids: self.input_ids.index_select(0, &rows),
            attention_mask: self.attention_mask.index_select(0, &rows),
            completion_mask: self.completion_mask.index_select(0, &rows),
            prompt_index: index
                .iter()
                .map(|&i| self.prompt_index[i as usize])
                .collect(),
            proposal_logp: self.proposal_logp.index_select(0, &rows),
            model_logp: self.model_logp.index_select(0, &rows),
            texts: self
                .texts
                .as_ref()
                .map(|t| index.iter().map(|&i| t[i as usize].clone()).collect()),
        }
    }

    /// Decodes every row's prompt and completion with `codec` into `texts`.
    pub fn decode_texts(&mut self, codec: &dyn crate::TextCodec) -> anyhow::Result<()> {
        let (b, t) = self.input_ids.size2()?;
        let ids = Vec::<i64>::try_from(self.input_ids.to_device(Device::Cpu).view([-1]))?;
        let attn = Vec::<i64>::try_from(self.attention_mask.to_device(Device::Cpu).view([-1]))?;
        let cmask = Vec::<i64>::try_from(self.completion_mask.to_device(Device::Cpu).view([-1]))?;
        let mut texts = Vec::with_capacity(b as usize);
        for row in 0..b as usize {
            let r = row * t as usize..(row + 1) * t as usize;
            let pick = |completion: bool| -> Vec<i64> {
                (r.clone())
                    .filter(|&i| attn[i] != 0 && (cmask[i] != 0) == completion)
                    .map(|i| ids[i])
                    .collect()
            };
            texts.push(crate::SampleText {
                prompt: codec.decode(&pick(false))?,
                completion: codec.decode(&pick(true))?,
            });
        }
        self.texts = Some(texts);
        Ok(())
    }

    /// The completion tokens of every row.
    pub fn completions(&self) -> Vec<Vec<i64>> {
        let (b, t) = self.input_ids.size2().expect("input_ids is [B, T]");
        let ids = Vec::<i64>::try_from(self.input_ids.to_device(Device::Cpu).view([-1]))
            .expect("i64 ids");
        let mask = Vec::<i64>::try_from(self.completion_mask.to_device(Device::Cpu).view([-1]))
            .expect("i64 mask");
        (0..b as usize)
            .map(|row| {
                let r = row * t as usize..(row + 1) * t as usize;
                ids[r.clone()]
                    .iter()
                    .zip(&mask[r])
                    .filter(|(_, &m)| m != 0)
                    .map(|(&i, _)| i)
                    .collect()
            })
            .collect()
    }

    /// Rows of `a` then rows of `b`, right-padding the shorter to a common
    /// length (both must share the prompt layout, e.g. the same prompts).
    pub fn cat(a: &SampleBatch, b: &SampleBatch) -> SampleBatch {
        let t = a.input_ids.size()[1].max(b.input_ids.size()[1]);
        let pad = |x: &Tensor| {
            let missing = t - x.size()[1];
            if missing == 0 {
                x.shallow_clone()
            } else {
                let rows = x.size()[0];
                Tensor::cat(
                    &[
                        x.shallow_clone(),
                        Tensor::zeros([rows, missing], (x.kind(), x.device())),
                    ],
                    1,
                )
            }
        };
        let both = |f: fn(&SampleBatch) -> &Tensor| Tensor::cat(&[pad(f(a)), pad(f(b))], 0);
        SampleBatch {
            input_ids: both(|s| &s.input_ids),
            attention_mask: both(|s| &s.attention_mask),
            completion_mask: both(|s| &s.completion_mask),
            prompt_index: a
                .prompt_index
                .iter()
                .chain(&b.prompt_index)
                .copied()
                .collect(),
            proposal_logp: Tensor::cat(&[&a.proposal_logp, &b.proposal_logp], 0),
            model_logp: Tensor::cat(&[&a.model_logp, &b.model_logp], 0),
            texts: match (&a.texts, &b.texts) {
                (Some(x), Some(y)) => Some(x.iter().chain(y).cloned().collect()),
                _ => None,
            },
        }
    }

    /// Completion lengths in tokens `[B]` (f32).
    pub fn lengths(&self) -> Tensor {
        crate::logprob::completion_lengths(&self.completion_mask)
    }
}

/// Left-pads each prompt (repeated `n` times) to a common length → ids and mask `[P·n, Tp]`.
fn left_pad(prompts: &[Prompt], n: i64, device: Device) -> (Tensor, Tensor) {
    let tp = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * n as usize * tp);
    let mut mask = Vec::with_capacity(ids.capacity());
    for p in prompts {
        for _ in 0..n {
            let pad = tp - p.ids.len();
            ids.extend(std::iter::repeat_n(0i64, pad).chain(p.ids.iter().copied()));
            mask.extend(
                std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1i64, p.ids.len())),
            );
        }
    }
    let rows = prompts.len() as i64 * n;
    (
        Tensor::from_slice(&ids)
            .view([rows, tp as i64])
            .to_device(device),
        Tensor::from_slice(&mask)
            .view([rows, tp as i64])
            .to_device(device),
    )
}

/// Calls of [`sample`] in this process (tests count them).
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times [`sample`] ran in this process.
pub fn calls() -> usize {
    CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Draws `n` completions per prompt from `policy` (up to `max_new_tokens`,
/// stopping a row at `eos`). Deterministic given `seed`.
pub fn sample(
    policy: &dyn Policy,
    prompts: &[Prompt],
    n: i64,
    max_new_tokens: i64,
    eos: Option<i64>,
    config: &SamplingConfig,
    seed: u64,
) -> SampleBatch {
    let part = Part::whole(prompts.len());
    sample_part(policy, prompts, n, max_new_tokens, eos, config, seed, part)
}

/// Which part of a larger [`sample`] call a [`sample_part`] call draws: its
/// prompts are prompts `first .. first + len` of a call over `total`
/// prompts (one data-parallel rank's shard of a step's prompts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub first: usize,
    pub total: usize,
}

impl Part {
    /// A call over all `prompts` prompts.
    pub fn whole(prompts: usize) -> Part {
        Part {
            first: 0,
            total: prompts,
        }
    }
}

/// [`sample`]'s draws for the rows of `part` alone: the same completions,
/// bit for bit, as the rows of those prompts in the call over all of
/// `part.total` prompts, for the same seed.
///
/// The call's one ChaCha stream gives token `t` of row `r` (of `B = P·n`)
/// its uniform at word `t·B + r` (every draw takes one 32-bit word), so a
/// part seeks to word `t·B + first·n` before each token's draws and reads
/// the words its rows would have read. Seeking keeps a single process's
/// draws what they always were, independent of how the step is sharded
/// (per-prompt streams would have changed every committed result).
#[allow(clippy::too_many_arguments)]
pub fn sample_part(
    policy: &dyn Policy,
    prompts: &[Prompt],
    n: i64,
    max_new_tokens: i64,
    eos: Option<i64>,
    config: &SamplingConfig,
    seed: u64,
    part: Part,
) -> SampleBatch {
    assert!(
        part.first + prompts.len() <= part.total,
        "prompts {}..{} of a call over {}",
        part.first,
        part.first + prompts.len(),
        part.total
    );
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _guard = tch::no_grad_guard();
    let device = policy.device();
    let (prompt_ids, prompt_mask) = left_pad(prompts, n, device);
    let b = prompt_ids.size()[0];
    let tp = prompt_ids.size()[1];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let mut ids = prompt_ids;
    let mut attn = prompt_mask;
    let mut done = Tensor::zeros([b], (Kind::Bool, device)); // [B]
    let mut proposal_logp = Tensor::zeros([b], (Kind::Float, device));
    let mut model_logp = Tensor::zeros([b], (Kind::Float, device));
    let mut decoder = policy.decoder();
    let mut pending: Option<Tensor> = None; // the last sampled tokens [B], not yet fed
    let (rows_before, rows_total) = (
        part.first as u128 * n as u128,
        part.total as u128 * n as u128,
    );
    for t in 0..max_new_tokens {
        let last = match (&mut decoder, &pending) {
            (Some(d), None) => d.prefill(&ids, &attn),
            (Some(d), Some(tokens)) => d.step(tokens, &attn),
            (None, _) => policy.forward(&ids, &attn).select(1, ids.size()[1] - 1),
        }; // [B, V]
        let raw = last.log_softmax(-1, Kind::Float); // [B, V]
        let (token, step_logq) = if config.temperature == 0.0 {
            (
                raw.argmax(-1, true),
                Tensor::zeros([b, 1], (Kind::Float, device)),
            )
        } else {
            // Plain sampling draws from the model itself: reuse its log-probs.
            let logq = if config.is_plain() {
                raw.shallow_clone()
            } else {
                config.sampling_logprobs(&last)
            }; // [B, V]
            let cdf = logq.exp().cumsum(-1, Kind::Float); // [B, V]
            rng.set_word_pos(t as u128 * rows_total + rows_before);
            let u: Vec<f32> = (0..b)
                .map(|_| rng.random_range(f32::EPSILON..1.0))
                .collect();
            let u = Tensor::from_slice(&u).to_device(device).unsqueeze(1)
                * cdf.narrow(1, cdf.size()[1] - 1, 1);
            let token = cdf
                .lt_tensor(&u)
                .sum_dim_intlist([-1].as_slice(), true, Kind::Int64); // [B, 1]
            let step = logq.gather(1, &token, false);
            (token, step)
        };
        let alive = done.logical_not(); // [B]
        let alive_f = alive.to_kind(Kind::Float);
        proposal_logp += step_logq.squeeze_dim(1) * &alive_f;
        model_logp += raw.gather(1, &token, false).squeeze_dim(1) * &alive_f;
        let token = token
            .squeeze_dim(1)
            .where_self(&alive, &Tensor::zeros_like(&done).to_kind(Kind::Int64)); // [B]
        ids = Tensor::cat(&[&ids, &token.unsqueeze(1)], 1);
        attn = Tensor::cat(&[attn, alive.to_kind(Kind::Int64).unsqueeze(1)], 1);
        pending = Some(token.shallow_clone());
        if let Some(eos) = eos {
            done = done.logical_or(&token.eq(eos).logical_and(&alive));
            if done.all().int64_value(&[]) != 0 {
                break;
            }
        }
    }
    let t = ids.size()[1];
    let completion_mask = Tensor::cat(
        &[
            Tensor::zeros([b, tp], (Kind::Int64, device)),
            attn.narrow(1, tp, t - tp),
        ],
        1,
    );
    SampleBatch {
        input_ids: ids,
        attention_mask: attn,
        completion_mask,
        prompt_index: (0..prompts.len())
            .flat_map(|p| std::iter::repeat_n(p, n as usize))
            .collect(),
        proposal_logp,
        model_logp,
        texts: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5-token model whose next-token logits are a row of `.1` per token.
    struct Bigram(tch::nn::VarStore, Tensor);

    impl Policy for Bigram {
        fn forward(&self, ids: &Tensor, _mask: &Tensor) -> Tensor {
            self.1
                .index_select(0, &ids.view([-1]))
                .view([ids.size()[0], ids.size()[1], 5])
        }
        fn vocab_size(&self) -> i64 {
            5
        }
        fn var_store(&self) -> &tch::nn::VarStore {
            &self.0
        }
        fn var_store_mut(&mut self) -> &mut tch::nn::VarStore {
            &mut self.0
        }
    }

    /// The density the sampler records equals the density recomputed by the
    /// log-prob kernel under the same sampling settings, and the unmodified
    /// model density equals `policy_logprobs`.
    #[test]
    fn recorded_densities_match_rescoring() {
        use crate::logprob::{policy_logprobs, sampling_logprobs};
        tch::manual_seed(3);
        let model = Bigram(
            tch::nn::VarStore::new(Device::Cpu),
            Tensor::randn([5, 5], (Kind::Float, Device::Cpu)) * 2.0,
        );
        let prompts = vec![
            Prompt {
                ids: vec![1, 2],
                text: None,
            },
            Prompt {
                ids: vec![3],
                text: None,
            },
        ];
        let config = SamplingConfig {
            temperature: 0.7,
            top_k: Some(3),
            top_p: Some(0.9),
        };
        let batch = sample(&model, &prompts, 6, 4, Some(4), &config, 9);
        let rescored = sampling_logprobs(&model, &batch, &config);
        assert!(
            batch.proposal_logp.allclose(&rescored, 1e-5, 1e-5, false),
            "{batch:?} vs {rescored:?}"
        );
        assert!(batch
            .model_logp
            .allclose(&policy_logprobs(&model, &batch), 1e-5, 1e-5, false));
    }

    /// Seeking the stream to word `k` gives the draw the `k`-th sequential
    /// draw would have: each uniform takes one word, so [`sample`]'s seeks
    /// leave a single process's draws as they were before parts existed.
    #[test]
    fn a_uniform_takes_one_word() {
        let mut sequential = ChaCha8Rng::seed_from_u64(17);
        for k in 0..100u128 {
            let a: f32 = sequential.random_range(f32::EPSILON..1.0);
            let mut seeking = ChaCha8Rng::seed_from_u64(17);
            seeking.set_word_pos(k);
            assert_eq!(a, seeking.random_range(f32::EPSILON..1.0), "word {k}");
        }
    }

    /// A call split into parts (a step's prompts sharded over ranks) draws
    /// the same completions and densities, bit for bit, as the whole call.
    #[test]
    fn parts_draw_what_the_whole_call_draws() {
        tch::manual_seed(4);
        let model = Bigram(
            tch::nn::VarStore::new(Device::Cpu),
            Tensor::randn([5, 5], (Kind::Float, Device::Cpu)),
        );
        let prompts: Vec<Prompt> = [vec![1, 2], vec![3], vec![0, 2, 1], vec![2]]
            .into_iter()
            .map(|ids| Prompt { ids, text: None })
            .collect();
        for config in [
            SamplingConfig::default(),
            SamplingConfig {
                temperature: 0.8,
                top_k: Some(3),
                top_p: None,
            },
        ] {
            let whole = sample(&model, &prompts, 3, 6, Some(4), &config, 21);
            let mut completions = Vec::new();
            let mut logq = Vec::new();
            let mut logp = Vec::new();
            for range in [0..1, 1..3, 3..4] {
                let part = Part {
                    first: range.start,
                    total: prompts.len(),
                };
                let b = sample_part(&model, &prompts[range], 3, 6, Some(4), &config, 21, part);
                completions.extend(b.completions());
                logq.push(b.proposal_logp);
                logp.push(b.model_logp);
            }
            assert_eq!(completions, whole.completions(), "{config:?}");
            assert!(Tensor::cat(&logq, 0).equal(&whole.proposal_logp));
            assert!(Tensor::cat(&logp, 0).equal(&whole.model_logp));
            // And the parts are not all the same draw: the test can fail.
            let other = sample(&model, &prompts, 3, 6, Some(4), &config, 22);
            assert_ne!(other.completions(), whole.completions());
        }
    }

    #[test]
    fn text_batches_carry_texts_and_no_ids() {
        let texts = vec![
            crate::SampleText {
                prompt: "a".into(),
                completion: "b".into(),
            };
            3
        ];
        let batch = SampleBatch::from_texts(texts.clone(), Device::Cpu);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.input_ids.size(), [3, 0]);
        assert_eq!(batch.prompt_index, [0, 1, 2]);
        assert_eq!(batch.texts, Some(texts));
    }

    #[test]
    fn top_k_and_top_p_renormalise_over_kept_tokens() {
        let logits = Tensor::from_slice(&[2.0f32, 1.0, 0.0, -1.0]).view([1, 4]);
        let k2 = SamplingConfig {
            top_k: Some(2),
            ..Default::default()
        }
        .sampling_logprobs(&logits);
        let p = k2.exp();
        let e = [2.0f64.exp(), 1.0f64.exp()];
        assert!((p.double_value(&[0, 0]) - e[0] / (e[0] + e[1])).abs() < 1e-6);
        assert_eq!(p.double_value(&[0, 2]), 0.0);
        // softmax = [0.644, 0.237, 0.087, 0.032]: top-p 0.7 keeps the first two.
        let p7 = SamplingConfig {
            top_p: Some(0.7),
            ..Default::default()
        }
        .sampling_logprobs(&logits)
        .exp();
        assert!(p7.double_value(&[0, 1]) > 0.0);
        assert_eq!(p7.double_value(&[0, 2]), 0.0);
    }
}
