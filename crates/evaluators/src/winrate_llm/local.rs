//! The local judge: a causal LM built by the `hf` model plugin. One forward
//! pass per batch of left-padded judge prompts; the answer is read from the
//! next-token log-probs of the choices' tokens.

use std::sync::{Arc, Mutex};

use align_core::build::build_plugin;
use align_core::manifest::PathBase;
use align_core::{EvalContext, ModelContext, ModelSpec, PluginError, Policy, TextCodec};
use tch::{Device, Kind, Tensor};

use super::{Judge, LocalConfig};

pub struct LocalJudge {
    spec: Box<dyn ModelSpec>,
    codec: Arc<dyn TextCodec>,
    /// Token ids that spell each choice (`"A"` and `" A"` where single tokens).
    choice_ids: [Vec<i64>; 2],
    batch_size: usize,
    /// The model, built on the evaluation device at first use.
    model: Mutex<Option<(Device, Box<dyn Policy>)>>,
}

/// The single-token spellings of `choice`, bare and after a space.
fn single_tokens(codec: &dyn TextCodec, choice: &str) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for variant in [choice.to_string(), format!(" {choice}")] {
        if let [id] = codec.encode(&variant, false)?[..] {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

impl LocalJudge {
    pub fn new(
        c: &mut LocalConfig,
        base: &PathBase,
        choices: &[String; 2],
    ) -> Result<LocalJudge, PluginError> {
        let key = "backend.local.path";
        base.resolve(key, &mut c.path).map_err(|e| PluginError::Path {
            key: key.into(),
            message: format!(
                "{e} (the default judge, SmolLM2-135M-Instruct, is installed by `cargo xtask setup`)"
            ),
        })?;
        if c.batch_size == 0 {
            return Err(PluginError::invalid(
                "backend.local.batch_size",
                "must be ≥ 1",
            ));
        }
        // Resolved above, so the plugin's working-directory base is harmless.
        let settings = toml::Table::from_iter([
            (
                "path".to_string(),
                toml::Value::String(c.path.path().to_string_lossy().into_owned()),
            ),
            ("dtype".to_string(), toml::Value::String(c.dtype.clone())),
        ]);
        let spec = build_plugin::<dyn ModelSpec>("hf", toml::Value::Table(settings))
            .map_err(|e| PluginError::invalid("backend.local", e.to_string()))?;
        let codec = spec
            .codec()
            .map_err(|e| PluginError::invalid("backend.local.path", format!("{e:#}")))?
            .ok_or_else(|| {
                PluginError::invalid(
                    "backend.local.path",
                    format!(
                        "{} has no tokenizer, so it cannot read a judge prompt",
                        c.path.path().display()
                    ),
                )
            })?;
        let mut choice_ids: [Vec<i64>; 2] = Default::default();
        for (ids, choice) in choice_ids.iter_mut().zip(choices) {
            *ids = single_tokens(codec.as_ref(), choice)
                .map_err(|e| PluginError::invalid("choices", format!("{e:#}")))?;
            if ids.is_empty() {
                return Err(PluginError::invalid(
                    "choices",
                    format!("`{choice}` is not a single token of the judge's tokenizer (nor is ` {choice}`); pick one-token answers such as \"A\" and \"B\""),
                ));
            }
        }
        if choice_ids[0].iter().any(|id| choice_ids[1].contains(id)) {
            return Err(PluginError::invalid(
                "choices",
                "the two answers share a token in the judge's tokenizer",
            ));
        }
        Ok(LocalJudge {
            spec,
            codec,
            choice_ids,
            batch_size: c.batch_size,
            model: Mutex::new(None),
        })
    }

    /// P(first choice) for one batch of tokenized prompts.
    fn batch(&self, policy: &dyn Policy, rows: &[Vec<i64>]) -> anyhow::Result<Vec<f64>> {
        let device = policy.device();
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for r in rows {
            let pad = t - r.len();
            ids.extend(std::iter::repeat_n(0i64, pad).chain(r.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, r.len())));
        }
        let shape = [rows.len() as i64, t as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
        // The KV-cache prefill returns only the last position's logits.
        let last = match policy.decoder() {
            Some(mut d) => d.prefill(&ids, &mask),
            None => policy.forward(&ids, &mask).select(1, t as i64 - 1),
        }; // [B, V]
        let logp = last.log_softmax(-1, Kind::Double); // [B, V]
        let score = |choice: &[i64]| {
            let index = Tensor::from_slice(choice).to_device(device);
            logp.index_select(1, &index)
                .logsumexp([1].as_slice(), false) // [B]
        };
        let p_first = (score(&self.choice_ids[0]) - score(&self.choice_ids[1])).sigmoid();
        Ok(Vec::<f64>::try_from(p_first.to_device(Device::Cpu))?)
    }
}

impl Judge for LocalJudge {
    fn prob_first(&self, ctx: &EvalContext, prompts: &[String]) -> anyhow::Result<Vec<f64>> {
        let rows = prompts
            .iter()
            .map(|p| self.codec.encode_chat_prompt(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut model = self
            .model
            .lock()
            .map_err(|_| anyhow::anyhow!("winrate-llm: the judge model's lock is poisoned"))?;
        if model.as_ref().map(|(d, _)| *d) != Some(ctx.device) {
            let mctx = ModelContext {
                device: ctx.device,
                vocab_size: None,
                max_len: None,
                seed: 0,
            };
            let built = self
                .spec
                .build(&mctx)
                .map_err(|e| anyhow::anyhow!("winrate-llm: building the judge model: {e:#}"))?;
            *model = Some((ctx.device, built));
        }
        let (_, policy) = model.as_ref().expect("built above");
        let _guard = tch::no_grad_guard();
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(self.batch_size) {
            out.extend(self.batch(policy.as_ref(), chunk)?);
        }
        Ok(out)
    }
}
