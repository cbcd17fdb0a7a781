//! Autoregressive policies (priors, proposals and the model being trained).

use tch::{nn, Device, Tensor};

/// An autoregressive model over token ids.
pub trait Policy: Send {
    /// Next-token logits at every position: position `t` predicts token `t + 1`.
    /// `input_ids` `[B, T]` i64, `attention_mask` `[B, T]` (1 = real token; padding
    /// may be on either side) → `[B, T, V]`.
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor;

    /// `log π(y|x)` of each row: the sum of the log-probs of the tokens
    /// `completion_mask` `[B, T]` marks, under `attention_mask` → `[B]` f32
    /// (f64 for f64 models). Models that can compute logits for the
    /// completion positions alone override it (the prompt's logits are never
    /// read); the default takes every position's from [`Policy::forward`].
    fn sequence_logprobs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        completion_mask: &Tensor,
    ) -> Tensor {
        let logits = self.forward(input_ids, attention_mask); // [B, T, V]
        crate::logprob::sequence_logprobs(&logits, input_ids, completion_mask)
    }

    fn vocab_size(&self) -> i64;

    fn var_store(&self) -> &nn::VarStore;

    fn var_store_mut(&mut self) -> &mut nn::VarStore;

    fn device(&self) -> Device {
        self.var_store().device()
    }

    /// Incremental decoding with a KV cache, for models that have one. The
    /// sampler falls back to full recomputation (`forward` on the whole prefix
    /// each step) when this returns `None`.
    fn decoder(&self) -> Option<Box<dyn Decoder + '_>> {
        None
    }

    /// A frozen copy of this policy (same architecture, its current weights)
    /// made in memory, for models that can; `None` makes [`frozen_copy`]
    /// rebuild the model from its spec (e.g. reading the checkpoint again)
    /// and copy the weights over. A model with LoRA adapters shares its
    /// frozen base weights with the copy and copies only the adapters (a
    /// prior without adapters gives a copy with fresh ones at zero: the
    /// same function), so the copy's variable store holds the adapters only.
    fn frozen_clone(&self) -> Option<anyhow::Result<Box<dyn Policy>>> {
        None
    }

    /// Writes what this model saves beside its variable store (saved as
    /// `dir/model.safetensors`) when a run finishes into `dir`; returns the
    /// names written there. A LoRA policy: its PEFT adapter directory, and
    /// the merged model if asked for; a fully fine-tuned HF model: its
    /// `config.json` and tokenizer files, making `dir` an HF directory.
    fn export(&self, _dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Writes the whole model (LoRA adapters merged in) into the existing
    /// directory `dir` as an HF directory that transformers and inference
    /// servers load: `config.json`, `model.safetensors` and the tokenizer
    /// files. `false`: this model has no HF form (nothing written).
    fn save_hf(&self, _dir: &std::path::Path) -> anyhow::Result<bool> {
        Ok(false)
    }

    /// Completes the backward pass of the training forwards made since the
    /// last call. A model with gradient checkpointing keeps only its layers'
    /// inputs: `loss.backward()` stops at the last layer's output, and this
    /// recomputes each layer, last first, to carry the gradient through it
    /// into the weights. Call it after `loss.backward()` and before reading
    /// any gradient; other models have nothing to do.
    fn finish_backward(&self) {}

    /// Gradient checkpointing: training forwards keep each layer's input
    /// only and recompute the layer in [`Policy::finish_backward`], trading
    /// one more forward for the activations' memory. Returns whether this
    /// model has it (the others ignore the call).
    fn set_gradient_checkpointing(&mut self, _on: bool) -> bool {
        false
    }
}

/// A decoding session over one batch: `prefill` once, then `step` per token.
pub trait Decoder {
    /// Runs the (left-padded) prompts `[B, T]` and returns the next-token
    /// logits `[B, V]` at the last position.
    fn prefill(&mut self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor;

    /// Appends one token per row `[B]`; `attention_mask` `[B, T+1]` covers every
    /// token so far (0 for rows that already stopped). Returns logits `[B, V]`.
    fn step(&mut self, tokens: &Tensor, attention_mask: &Tensor) -> Tensor;
}

/// What a model constructor may need from the rest of the manifest.
#[derive(Debug, Clone)]
pub struct ModelContext {
    pub device: Device,
    /// Vocabulary size the task works in, when the task defines one.
    pub vocab_size: Option<i64>,
    /// Longest sequence (prompt + completion) the task produces.
    pub max_len: Option<i64>,
    pub seed: u64,
}

/// A validated model configuration that can build fresh instances.
pub trait ModelSpec: Send + Sync {
    fn build(&self, ctx: &ModelContext) -> anyhow::Result<Box<dyn Policy>>;

    /// The model's tokenizer, for text tasks and rewards (`None`: the model
    /// works on token ids only, like the toy models).
    fn codec(&self) -> anyhow::Result<Option<std::sync::Arc<dyn crate::TextCodec>>> {
        Ok(None)
    }
}

/// A frozen copy of `source` with the same architecture (used for the prior
/// and for proposal refreshes).
pub fn frozen_copy(
    spec: &dyn ModelSpec,
    ctx: &ModelContext,
    source: &dyn Policy,
) -> anyhow::Result<Box<dyn Policy>> {
    if let Some(copy) = source.frozen_clone() {
        return copy;
    }
    let mut copy = spec.build(ctx)?;
    copy.var_store_mut().copy(source.var_store())?;
    copy.var_store_mut().freeze();
    Ok(copy)
}
