//! GPT-NeoX (Pythia): fused per-head QKV projection, partial rotary
//! embeddings (`rotary_pct`), parallel or sequential residual, untied output
//! embedding (`embed_out`). Parameter paths equal HF's safetensors keys.

// `x = x + y`, not `x += y`: tch's `+=` is in place, and the residual stream
// is saved by the next norm for the backward pass.
#![allow(clippy::assign_op_pattern)]

use std::path::Path;

use serde::Deserialize;
use tch::{nn, Tensor};

use crate::check::{
    dim, divides, finite, ParamCount, MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS,
    MAX_VOCAB,
};
use crate::error::{ModelError, Result};

use crate::common::{
    attention, Activation, CausalLm, KvCache, LayerNorm, Linear, Rope, RopeScaling,
};
use crate::hf::RopeParameters;

#[derive(Debug, Clone, Deserialize)]
pub struct GptNeoXConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default = "yes")]
    pub attention_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub rope: RopeParameters,
}

impl GptNeoXConfig {
    /// Checks every size against [`crate::check`]'s bounds (heads divide
    /// the hidden size, `rotary_pct` in [0, 1] giving an even rotary
    /// dimension); returns the parameter count [`GptNeoX::new`] declares.
    pub fn validate(&self, path: &Path, rotary_pct: f64) -> Result<u64> {
        let h = dim(path, "hidden_size", self.hidden_size, MAX_HIDDEN)?;
        let heads = dim(
            path,
            "num_attention_heads",
            self.num_attention_heads,
            MAX_HEADS,
        )?;
        divides(path, "hidden_size", h, "num_attention_heads", heads)?;
        if !(0.0..=1.0).contains(&rotary_pct) {
            return Err(ModelError::file(
                path,
                format!("`rotary_pct` is {rotary_pct}; it must be between 0 and 1"),
            ));
        }
        let rotary = (((h / heads) as f64) * rotary_pct) as i64;
        if rotary % 2 != 0 {
            return Err(ModelError::file(
                path,
                format!(
                    "the rotary dimension ({rotary} = head dim {} × rotary_pct {rotary_pct}) is odd; \
                     RoPE rotates pairs of features",
                    h / heads
                ),
            ));
        }
        let inter = dim(
            path,
            "intermediate_size",
            self.intermediate_size,
            MAX_INTERMEDIATE,
        )?;
        let layers = dim(
            path,
            "num_hidden_layers",
            self.num_hidden_layers,
            MAX_LAYERS,
        )?;
        let vocab = dim(path, "vocab_size", self.vocab_size, MAX_VOCAB)?;
        finite(path, "layer_norm_eps", self.layer_norm_eps, 0.0, false)?;
        let mut layer = ParamCount::default();
        for _ in 0..4 {
            layer.add(&[h]); // two LayerNorms: weight and bias
        }
        for (input, output, bias) in [
            (h, 3 * h, self.attention_bias),
            (h, h, self.attention_bias),
            (h, inter, true),
            (inter, h, true),
        ] {
            layer.add(&[output, input]);
            if bias {
                layer.add(&[output]);
            }
        }
        let mut total = ParamCount::default();
        total.add_times(layer, layers);
        total.add(&[vocab, h]);
        total.add(&[h]);
        total.add(&[h]);
        if !self.tie_word_embeddings {
            total.add(&[vocab, h]);
        }
        total.total(path)
    }
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

struct Layer {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    query_key_value: Linear,
    dense: Linear,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

pub struct GptNeoX {
    embed_in: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    embed_out: Option<Tensor>,
    heads: i64,
    head_dim: i64,
    parallel: bool,
    act: Activation,
    rope: Rope,
}

impl GptNeoX {
    pub fn new(
        root: nn::Path,
        cfg: &GptNeoXConfig,
        act: Activation,
        theta: f64,
        rotary_pct: f64,
        scaling: RopeScaling,
    ) -> GptNeoX {
        let n = root.sub("gpt_neox");
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let head_dim = h / cfg.num_attention_heads;
        let rotary = (head_dim as f64 * rotary_pct) as i64;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = n.sub("layers").sub(i);
                let bias = cfg.attention_bias;
                Layer {
                    input_layernorm: LayerNorm::new(p.sub("input_layernorm"), h, eps),
                    post_attention_layernorm: LayerNorm::new(
                        p.sub("post_attention_layernorm"),
                        h,
                        eps,
                    ),
                    query_key_value: Linear::new(
                        p.sub("attention").sub("query_key_value"),
                        h,
                        3 * h,
                        bias,
                    ),
                    dense: Linear::new(p.sub("attention").sub("dense"), h, h, bias),
                    dense_h_to_4h: Linear::new(
                        p.sub("mlp").sub("dense_h_to_4h"),
                        h,
                        cfg.intermediate_size,
                        true,
                    ),
                    dense_4h_to_h: Linear::new(
                        p.sub("mlp").sub("dense_4h_to_h"),
                        cfg.intermediate_size,
                        h,
                        true,
                    ),
                }
            })
            .collect();
        let embed_in = n.sub("embed_in").zeros("weight", &[cfg.vocab_size, h]);
        let embed_out = (!cfg.tie_word_embeddings)
            .then(|| root.sub("embed_out").zeros("weight", &[cfg.vocab_size, h]));
        GptNeoX {
            embed_in,
            layers,
            final_layer_norm: LayerNorm::new(n.sub("final_layer_norm"), h, eps),
            embed_out,
            heads: cfg.num_attention_heads,
            head_dim,
            parallel: cfg.use_parallel_residual,
            act,
            rope: Rope::new(rotary, theta, scaling, root.device()),
        }
    }
}

impl CausalLm for GptNeoX {
    fn hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let (b, t) = input_ids.size2().expect("[B, T]");
        let (cos, sin) = self.rope.cos_sin(position_ids);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut x = Tensor::embedding(&self.embed_in, input_ids, -1, false, false);
        for (i, l) in self.layers.iter().enumerate() {
            let h = l.input_layernorm.forward(&x);
            // [B, T, H·3D] → [B, H, T, 3D]: q, k, v interleaved per head.
            let qkv = l
                .query_key_value
                .forward(&h)
                .view([b, t, self.heads, 3 * self.head_dim])
                .transpose(1, 2);
            let parts = qkv.chunk(3, -1);
            let q = Rope::apply(&parts[0], &cos, &sin);
            let k = Rope::apply(&parts[1], &cos, &sin);
            let v = parts[2].shallow_clone();
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, &k, &v),
                None => (k, v),
            };
            let a = l.dense.forward(&attention(&q, &k, &v, mask, scale));
            let mlp = |y: &Tensor| {
                l.dense_4h_to_h
                    .forward(&self.act.apply(&l.dense_h_to_4h.forward(y)))
            };
            if self.parallel {
                let m = mlp(&l.post_attention_layernorm.forward(&x));
                x = x + a + m;
            } else {
                x = x + a;
                let m = mlp(&l.post_attention_layernorm.forward(&x));
                x = x + m;
            }
        }
        self.final_layer_norm.forward(&x)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        crate::common::linear(
            hidden,
            self.embed_out.as_ref().unwrap_or(&self.embed_in),
            None,
        )
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
