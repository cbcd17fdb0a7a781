//! Scalar-head reward models: a transformer body and a linear head, in HF's
//! sequence-classification layouts so checkpoints move between the two:
//!
//! - BERT encoders (`BertForSequenceClassification`: `bert.*` + `classifier.*`),
//!   pooled by the mean over real tokens (the sentence-transformers
//!   convention, recorded as `"brain_rs_pooling": "mean"` in `config.json`) or
//!   by HF's pooler (`tanh(dense(h[CLS]))`, the default for checkpoints
//!   trained with transformers);
//! - decoders (`LlamaForSequenceClassification`, `GPT2…`, `GPTNeoX…`: the body
//!   + `score.weight`, no bias), read at the last real token.
//!
//! The reward of a text is the head's logit when there is one label, and the
//! log-odds of the chosen label (`logit_l − logsumexp(other logits)`) when
//! there are several.

use std::path::{Path, PathBuf};

use align_models::bert::{Bert, BertConfig};
use align_models::common::{causal_mask, position_ids, CausalLm, Linear};
use align_models::hf::{declare_decoder, is_sequence_classifier, read_json, Architecture};
use align_models::weights::Weights;
use align_models::TextTokenizer;
use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

/// How the body's hidden states `[B, T, H]` become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Mean over real tokens (encoders).
    Mean,
    /// HF BERT's pooler: `tanh(dense(h[CLS]))` (encoders).
    Pooler,
    /// The last real token (decoders).
    LastToken,
}

impl Pooling {
    fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Pooler => "pooler",
            Pooling::LastToken => "last-token",
        }
    }
}

enum Body {
    Encoder {
        bert: Bert,
        /// `bert.pooler.dense`, for [`Pooling::Pooler`].
        pooler: Option<Linear>,
    },
    Decoder {
        model: Box<dyn CausalLm>,
        architecture: Architecture,
    },
}

/// Optimizer group of the head's parameters (the body's are in group 0).
pub const HEAD_GROUP: usize = 1;

/// A reward model: body, pooling and head, with its tokenizer.
pub struct ScalarRm {
    pub vs: nn::VarStore,
    body: Body,
    head: Linear,
    pooling: Pooling,
    tokenizer: TextTokenizer,
    labels: Vec<String>,
    /// The label whose log-odds is the reward (several labels only).
    reward_label: usize,
    /// Longest tokenised text; longer ones are cut (encoders keep the start,
    /// decoders the end, where they read the score).
    pub max_len: usize,
    /// The body's `config.json`, written back (with the head's keys) on save.
    config: serde_json::Value,
    hidden: i64,
    source: PathBuf,
}

/// What a manifest expects of a reward checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Number of head outputs.
    pub num_labels: i64,
    /// Which label's log-odds is the reward, by name or index (several labels).
    pub label: Option<String>,
}

fn is_encoder(config: &serde_json::Value) -> bool {
    config["model_type"].as_str() == Some("bert")
        || config["architectures"]
            .get(0)
            .and_then(|a| a.as_str())
            .is_some_and(|a| a.starts_with("Bert"))
}

/// Label names from `config.json`'s `id2label` (ordered by id), if any.
fn config_labels(config: &serde_json::Value) -> Option<Vec<String>> {
    let map = config["id2label"].as_object()?;
    let mut labels: Vec<(i64, String)> = map
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    labels.sort();
    Some(labels.into_iter().map(|(_, v)| v).collect())
}

impl ScalarRm {
    /// A fresh head (zeros) on a pretrained body: an HF BERT directory (or a
    /// sentence-transformers one) or a decoder LM directory.
    pub fn from_backbone(
        dir: &Path,
        pooling: Option<Pooling>,
        labels: Vec<String>,
        device: Device,
    ) -> anyhow::Result<ScalarRm> {
        ensure!(!labels.is_empty(), "a reward head needs at least one label");
        let config: serde_json::Value = read_json(&dir.join("config.json"))?;
        let mut rm = ScalarRm::declare(dir, config, pooling, device)?;
        let weights = Weights::from_dir(dir)?;
        rm.load_body(&weights)?;
        let n = labels.len() as i64;
        rm.head = rm.declare_head(n);
        rm.labels = labels;
        rm.reward_label = rm.labels.len() - 1;
        Ok(rm)
    }

    /// A trained reward model from an HF directory written by [`ScalarRm::save`]
    /// or by transformers (`*ForSequenceClassification`). Fails, naming both,
    /// when its label count or head shape differs from `expect`.
    pub fn from_checkpoint(
        dir: &Path,
        expect: &Expect,
        device: Device,
    ) -> anyhow::Result<ScalarRm> {
        let config_path = dir.join("config.json");
        let config: serde_json::Value = read_json(&config_path)?;
        ensure!(
            is_sequence_classifier(&config),
            "{}: not a reward model: `architectures` should name a `…ForSequenceClassification` \
             model (to put a new head on this model, train one with `runner train-rm`)",
            config_path.display()
        );
        let pooling = config["brain_rs_pooling"]
            .as_str()
            .map(|p| serde_json::from_value::<Pooling>(serde_json::json!(p)))
            .transpose()
            .with_context(|| format!("{}: `brain_rs_pooling`", config_path.display()))?;
        let labels = config_labels(&config);
        let mut rm = ScalarRm::declare(dir, config, pooling, device)?;
        let weights = Weights::from_dir(dir)?;
        let head_name = rm.head_name();
        let weight_key = format!("{head_name}.weight");
        let head = weights
            .get(&weight_key)
            .with_context(|| format!("{}: no head tensor `{weight_key}`", weights.origin()))?;
        let (rows, cols) = head.size2().context("head weight is not 2-D")?;
        if let Some(labels) = &labels {
            ensure!(
                labels.len() as i64 == expect.num_labels,
                "{} declares {} label(s) ({}) but the manifest asks for num_labels = {}",
                config_path.display(),
                labels.len(),
                labels.join(", "),
                expect.num_labels
            );
        }
        ensure!(
            rows == expect.num_labels && cols == rm.hidden,
            "{}: head `{weight_key}` is [{rows}, {cols}] ({rows} label(s)) but the manifest asks \
             for num_labels = {} on hidden size {}, i.e. [{}, {}]",
            weights.origin(),
            expect.num_labels,
            rm.hidden,
            expect.num_labels,
            rm.hidden
        );
        rm.head = rm.declare_head(rows);
        rm.load_body(&weights)?;
        rm.labels = labels.unwrap_or_else(|| (0..rows).map(|i| format!("LABEL_{i}")).collect());
        rm.reward_label = match &expect.label {
            Some(l) => rm
                .labels
                .iter()
                .position(|n| n == l)
                .or_else(|| l.parse().ok().filter(|&i: &usize| i < rm.labels.len()))
                .with_context(|| {
                    format!(
                        "{}: no label `{l}` (labels: {})",
                        config_path.display(),
                        rm.labels.join(", ")
                    )
                })?,
            None if rows <= 2 => rm.labels.len() - 1,
            None => bail!(
                "{}: {rows} labels ({}); say which one is good with `label = \"…\"`",
                config_path.display(),
                rm.labels.join(", ")
            ),
        };
        Ok(rm)
    }

    /// Declares the body (no head yet) that `dir/config.json` (`config`) describes.
    fn declare(
        dir: &Path,
        config: serde_json::Value,
        pooling: Option<Pooling>,
        device: Device,
    ) -> anyhow::Result<ScalarRm> {
        let config_path = dir.join("config.json");
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (body, hidden, vocab, pooling) = if is_encoder(&config) {
            let (cfg, act) = BertConfig::load(dir)?;
            let pooling = pooling.unwrap_or(
                if config["brain_rs_pooling"].is_null() && is_sequence_classifier(&config) {
                    Pooling::Pooler
                } else {
                    Pooling::Mean
                },
            );
            ensure!(
                pooling != Pooling::LastToken,
                "{}: BERT reward models pool by `mean` or `pooler`, not `last-token`",
                config_path.display()
            );
            let bert = Bert::new(root.sub("bert"), &cfg, act);
            let pooler = (pooling == Pooling::Pooler).then(|| {
                let h = cfg.hidden_size;
                Linear::new(root.sub("bert").sub("pooler").sub("dense"), h, h, true)
            });
            (
                Body::Encoder { bert, pooler },
                cfg.hidden_size,
                cfg.vocab_size,
                pooling,
            )
        } else {
            let p = pooling.unwrap_or(Pooling::LastToken);
            ensure!(
                p == Pooling::LastToken,
                "{}: decoder reward models read the last token; pooling `{}` is for encoders",
                config_path.display(),
                p.name()
            );
            let body = declare_decoder(&config_path, &config, root, false)?;
            (
                Body::Decoder {
                    model: body.model,
                    architecture: body.architecture,
                },
                body.hidden_size,
                body.vocab_size,
                p,
            )
        };
        ensure!(
            dir.join("tokenizer.json").is_file(),
            "{}: no tokenizer.json (a reward model scores text)",
            dir.display()
        );
        let tokenizer = TextTokenizer::from_dir(dir, vocab)?;
        Ok(ScalarRm {
            vs,
            body,
            head: Linear {
                weight: Tensor::zeros([0], (Kind::Float, device)),
                bias: None,
            },
            pooling,
            tokenizer,
            labels: Vec::new(),
            reward_label: 0,
            max_len: 256,
            config,
            hidden,
            source: dir.to_path_buf(),
        })
    }

    /// Loads every declared parameter (body, and head if declared).
    fn load_body(&self, weights: &Weights) -> anyhow::Result<()> {
        let prefixes: &[&str] = match &self.body {
            Body::Encoder { .. } => &["bert."],
            Body::Decoder { architecture, .. } => match architecture {
                Architecture::Gpt2 => &["transformer."],
                _ => &[],
            },
        };
        weights.load_into(&self.vs, prefixes)?;
        Ok(())
    }

    /// HF's name for the head: `classifier` (BERT, with bias) or `score`.
    fn head_name(&self) -> &'static str {
        match self.body {
            Body::Encoder { .. } => "classifier",
            Body::Decoder { .. } => "score",
        }
    }

    /// The head's parameters go in optimizer group [`HEAD_GROUP`], so
    /// training can give them their own learning rate.
    fn declare_head(&self, labels: i64) -> Linear {
        let bias = matches!(self.body, Body::Encoder { .. });
        let p = self.vs.root().set_group(HEAD_GROUP).sub(self.head_name());
        Linear::new(p, self.hidden, labels, bias)
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The head's parameters (weight, and bias if any).
    pub fn head_parameters(&self) -> Vec<Tensor> {
        let mut p = vec![self.head.weight.shallow_clone()];
        p.extend(self.head.bias.as_ref().map(Tensor::shallow_clone));
        p
    }

    /// Token ids of `text`, with the tokenizer's usual special tokens, cut to
    /// `max_len`.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<i64>> {
        self.encoder().encode(text)
    }

    /// The longest text the body can read: `max_len`, cut to its position
    /// table when it has one (longer texts are truncated, never fed past it).
    pub fn context(&self) -> usize {
        match align_models::hf::max_positions(&self.config) {
            Some((n, _)) if n > 0 => self.max_len.min(n as usize),
            _ => self.max_len,
        }
    }

    /// The text → ids half of the model, shareable across threads.
    pub fn encoder(&self) -> RmEncoder<'_> {
        RmEncoder {
            tokenizer: &self.tokenizer,
            max_len: self.context(),
            keep_end: matches!(self.body, Body::Decoder { .. }),
        }
    }

    /// Right-padded `[B, T]` ids and mask on the model's device.
    pub fn pad(&self, rows: &[&[i64]]) -> (Tensor, Tensor) {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
        let mut ids = vec![0i64; rows.len() * t];
        let mut mask = vec![0i64; rows.len() * t];
        for (i, r) in rows.iter().enumerate() {
            ids[i * t..i * t + r.len()].copy_from_slice(r);
            mask[i * t..i * t + r.len()].fill(1);
        }
        let shape = [rows.len() as i64, t as i64];
        let device = self.vs.device();
        (
            Tensor::from_slice(&ids).view(shape).to_device(device),
            Tensor::from_slice(&mask).view(shape).to_device(device),
        )
    }

    /// Pooled features `[B, H]` of right-padded `ids`, `mask` `[B, T]`.
    pub fn features(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        match &self.body {
            Body::Encoder { bert, pooler } => {
                let h = bert.forward(ids, mask, None); // [B, T, H]
                match (self.pooling, pooler) {
                    (Pooling::Pooler, Some(dense)) => dense.forward(&h.select(1, 0)).tanh(),
                    _ => Bert::mean_pool(&h, mask),
                }
            }
            Body::Decoder { model, .. } => {
                let t = ids.size()[1];
                let h = model.hidden(ids, &position_ids(mask), &causal_mask(mask, t), None); // [B, T, H]
                                                                                             // The last real token: the rightmost 1 of the mask.
                let last =
                    (Tensor::arange(t, (Kind::Int64, ids.device())) * mask).argmax(-1, false); // [B]
                let idx = last.view([-1, 1, 1]).expand([-1, 1, self.hidden], false);
                h.gather(1, &idx, false).squeeze_dim(1)
            }
        }
    }

    /// Head outputs `[B, L]` of pooled `features` `[B, H]`.
    pub fn head(&self, features: &Tensor) -> Tensor {
        self.head
            .forward(&features.to_kind(self.head.weight.kind()))
    }

    /// Rewards `[B]` from head outputs `[B, L]`: the logit (one label) or the
    /// chosen label's log-odds.
    pub fn reward_of_logits(&self, logits: &Tensor) -> Tensor {
        let l = logits.size()[1];
        if l == 1 {
            return logits.select(1, 0);
        }
        let k = self.reward_label as i64;
        let chosen = logits.select(1, k);
        let others = Tensor::cat(
            &[logits.narrow(1, 0, k), logits.narrow(1, k + 1, l - k - 1)],
            1,
        );
        chosen - others.logsumexp([1].as_slice(), false)
    }

    /// Rewards of `texts`, `batch_size` at a time (sorted by length so a batch
    /// pads little), in input order.
    pub fn score_texts(&self, texts: &[&str], batch_size: usize) -> anyhow::Result<Vec<f32>> {
        let ids = self.encoder().encode_all(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![0f32; texts.len()];
        let _guard = tch::no_grad_guard();
        for chunk in order.chunks(batch_size.max(1)) {
            let rows: Vec<&[i64]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let (x, mask) = self.pad(&rows);
            let r = self.reward_of_logits(&self.head(&self.features(&x, &mask)));
            let r = Vec::<f32>::try_from(r.to_kind(Kind::Float).to_device(Device::Cpu))?;
            for (&i, v) in chunk.iter().zip(r) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Writes an HF directory: `config.json` (the body's, with the
    /// `…ForSequenceClassification` architecture, labels and pooling),
    /// `model.safetensors`, and the tokenizer files. `extra` keys are added to
    /// `config.json`. The directory appears whole or not at all.
    pub fn save(
        &self,
        out: &Path,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<()> {
        self.save_with(out, extra, |_| Ok(()))
    }

    /// [`ScalarRm::save`], with `finish(tmp)` run on the filled temporary
    /// directory just before it replaces `out`: it may add files, or fail to
    /// leave `out` untouched.
    pub fn save_with(
        &self,
        out: &Path,
        extra: &serde_json::Map<String, serde_json::Value>,
        finish: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut config = self.config.clone();
        let arch = match &self.body {
            Body::Encoder { .. } => "BertForSequenceClassification",
            Body::Decoder { architecture, .. } => match architecture {
                Architecture::Llama => "LlamaForSequenceClassification",
                Architecture::Gpt2 => "GPT2ForSequenceClassification",
                Architecture::GptNeoX => "GPTNeoXForSequenceClassification",
            },
        };
        config["architectures"] = serde_json::json!([arch]);
        config["id2label"] = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), serde_json::json!(l)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        config["label2id"] = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), serde_json::json!(i)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        config["brain_rs_pooling"] = serde_json::json!(self.pooling.name());
        if matches!(self.body, Body::Decoder { .. }) && config["pad_token_id"].is_null() {
            // transformers finds the last real token by the pad id.
            let pad = self.tokenizer.eos_token_id().unwrap_or(0);
            config["pad_token_id"] = serde_json::json!(pad);
        }
        for (k, v) in extra {
            config[k] = v.clone();
        }

        align_core::io::write_dir_atomic(out, |tmp| {
            std::fs::write(
                tmp.join("config.json"),
                serde_json::to_string_pretty(&config)? + "\n",
            )?;
            let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            let named: Vec<(&str, Tensor)> = vars
                .iter()
                .map(|(n, t)| (n.as_str(), t.detach().to_device(Device::Cpu).contiguous()))
                .collect();
            Tensor::write_safetensors(&named, tmp.join("model.safetensors"))?;
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.txt",
            ] {
                let src = self.source.join(f);
                if src.is_file() {
                    std::fs::copy(&src, tmp.join(f))
                        .with_context(|| format!("copying {}", src.display()))?;
                }
            }
            finish(tmp)
        })
    }
}

/// Tokenises texts for a [`ScalarRm`].
#[derive(Clone, Copy)]
pub struct RmEncoder<'a> {
    tokenizer: &'a TextTokenizer,
    max_len: usize,
    /// Cut from the start (decoders read the score at the end) rather than
    /// the end (encoders: keep `[CLS] …` and the closing `[SEP]`).
    keep_end: bool,
}

impl RmEncoder<'_> {
    /// Token ids of every text, in order, tokenised in parallel.
    pub fn encode_all(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<i64>>> {
        use rayon::prelude::*;
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<i64>> {
        let mut ids = self.tokenizer.encode(text, true)?;
        if ids.len() > self.max_len {
            if self.keep_end {
                ids.drain(..ids.len() - self.max_len);
            } else {
                let last = *ids.last().expect("non-empty");
                ids.truncate(self.max_len - 1);
                ids.push(last);
            }
        }
        Ok(ids)
    }
}
