//! GPT-2: learned positions, pre-LayerNorm blocks, `Conv1D` projections
//! (weights stored `[in, out]`), tied output embedding. Parameter paths equal
//! HF's safetensors keys (`transformer.h.0.attn.c_attn.weight`, …; checkpoints
//! saved without the `transformer.` prefix load too).

// `x = x + y`, not `x += y`: tch's `+=` is in place, and the residual stream
// is saved by the next norm for the backward pass.
#![allow(clippy::assign_op_pattern)]

use std::path::Path;

use serde::Deserialize;
use tch::{nn, Tensor};

use crate::check::{
    dim, divides, finite, ParamCount, MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS,
    MAX_POSITIONS, MAX_VOCAB,
};
use crate::error::Result;

use crate::common::{attention, split_heads, Activation, CausalLm, KvCache, LayerNorm};

#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: i64,
    pub n_positions: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
}

impl Gpt2Config {
    /// Checks every size against [`crate::check`]'s bounds (heads divide
    /// `n_embd`); returns the parameter count [`Gpt2::new`] declares.
    pub fn validate(&self, path: &Path) -> Result<u64> {
        let e = dim(path, "n_embd", self.n_embd, MAX_HIDDEN)?;
        let heads = dim(path, "n_head", self.n_head, MAX_HEADS)?;
        divides(path, "n_embd", e, "n_head", heads)?;
        let inner = dim(
            path,
            "n_inner",
            self.n_inner.unwrap_or(4 * e),
            MAX_INTERMEDIATE,
        )?;
        let layers = dim(path, "n_layer", self.n_layer, MAX_LAYERS)?;
        let vocab = dim(path, "vocab_size", self.vocab_size, MAX_VOCAB)?;
        let positions = dim(path, "n_positions", self.n_positions, MAX_POSITIONS)?;
        finite(
            path,
            "layer_norm_epsilon",
            self.layer_norm_epsilon,
            0.0,
            false,
        )?;
        let mut layer = ParamCount::default();
        for (input, output) in [(e, 3 * e), (e, e), (e, inner), (inner, e)] {
            layer.add(&[input, output]);
            layer.add(&[output]);
        }
        for _ in 0..4 {
            layer.add(&[e]); // ln_1, ln_2: weight and bias
        }
        let mut total = ParamCount::default();
        total.add_times(layer, layers);
        total.add(&[vocab, e]);
        total.add(&[positions, e]);
        total.add(&[e]);
        total.add(&[e]);
        total.total(path)
    }
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}
fn yes() -> bool {
    true
}

/// HF's `Conv1D`: `y = x W + b` with `W` `[in, out]`.
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(p: nn::Path, input: i64, output: i64) -> Conv1D {
        Conv1D {
            weight: p.zeros("weight", &[input, output]),
            bias: p.zeros("bias", &[output]),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    c_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

/// GPT-2's decoder. Its position table has `n_positions` rows: a forward
/// on a longer sequence panics at the entry with a message naming both
/// numbers ([`CausalLm::hidden`] has no error path); the `hf` plugin
/// refuses a task whose `max_len` exceeds it when the model is built.
pub struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    heads: i64,
    head_dim: i64,
    act: Activation,
    scale_by_layer: bool,
    scale_weights: bool,
}

impl Gpt2 {
    pub fn new(root: nn::Path, cfg: &Gpt2Config, act: Activation) -> Gpt2 {
        let t = root.sub("transformer");
        let e = cfg.n_embd;
        let inner = cfg.n_inner.unwrap_or(4 * e);
        let eps = cfg.layer_norm_epsilon;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let p = t.sub("h").sub(i);
                Block {
                    ln_1: LayerNorm::new(p.sub("ln_1"), e, eps),
                    c_attn: Conv1D::new(p.sub("attn").sub("c_attn"), e, 3 * e),
                    c_proj: Conv1D::new(p.sub("attn").sub("c_proj"), e, e),
                    ln_2: LayerNorm::new(p.sub("ln_2"), e, eps),
                    c_fc: Conv1D::new(p.sub("mlp").sub("c_fc"), e, inner),
                    mlp_proj: Conv1D::new(p.sub("mlp").sub("c_proj"), inner, e),
                }
            })
            .collect();
        Gpt2 {
            wte: t.sub("wte").zeros("weight", &[cfg.vocab_size, e]),
            wpe: t.sub("wpe").zeros("weight", &[cfg.n_positions, e]),
            blocks,
            ln_f: LayerNorm::new(t.sub("ln_f"), e, eps),
            heads: cfg.n_head,
            head_dim: e / cfg.n_head,
            act,
            scale_by_layer: cfg.scale_attn_by_inverse_layer_idx,
            scale_weights: cfg.scale_attn_weights,
        }
    }
}

impl Gpt2 {
    /// The longest sequence the learned position table covers (`n_positions`).
    pub fn max_positions(&self) -> i64 {
        self.wpe.size()[0]
    }
}

impl CausalLm for Gpt2 {
    fn hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        // Positions come from the padding mask, so none reaches the mask's
        // width: a sequence wider than the learned table would index past
        // it (on CUDA a device-side assert that ends the process). The
        // `hf` plugin refuses such a task at build; this names it if a
        // caller still passes one (`CausalLm::hidden` has no error path).
        let width = mask.size().last().copied().unwrap_or(0);
        let capacity = self.max_positions();
        assert!(
            width <= capacity,
            "GPT-2 forward: a sequence of {width} tokens but the model has {capacity} \
             positions (n_positions); lower the task's maximum prompt + completion tokens"
        );
        let mut x = Tensor::embedding(&self.wte, input_ids, -1, false, false)
            + Tensor::embedding(&self.wpe, position_ids, -1, false, false); // [B, T, E]
        for (i, b) in self.blocks.iter().enumerate() {
            let h = b.ln_1.forward(&x);
            let qkv = b.c_attn.forward(&h).chunk(3, -1);
            let q = split_heads(&qkv[0], self.heads);
            let k = split_heads(&qkv[1], self.heads);
            let v = split_heads(&qkv[2], self.heads);
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, &k, &v),
                None => (k, v),
            };
            let mut scale = if self.scale_weights {
                1.0 / (self.head_dim as f64).sqrt()
            } else {
                1.0
            };
            if self.scale_by_layer {
                scale /= (i + 1) as f64;
            }
            let a = attention(&q, &k, &v, mask, scale);
            x = x + b.c_proj.forward(&a);
            let h = b.ln_2.forward(&x);
            x = x + b.mlp_proj.forward(&self.act.apply(&b.c_fc.forward(&h)));
        }
        self.ln_f.forward(&x)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        crate::common::linear(hidden, &self.wte, None)
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }
}
