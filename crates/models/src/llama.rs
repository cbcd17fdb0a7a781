//! Llama (and the models that share its layout: SmolLM2, Llama-2/3 (with
//! Llama-3 RoPE scaling), TinyLlama, Mistral without sliding windows): RMSNorm, RoPE
//! with a configurable base, grouped-query attention, SwiGLU MLP, tied or
//! untied embeddings. Parameter paths equal HF's safetensors keys. Each
//! projection may carry a LoRA adapter ([`crate::lora`]).

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
    attention, split_heads, Activation, CausalLm, KvCache, Linear, RmsNorm, Rope, RopeScaling,
};
use crate::hf::RopeParameters;
use crate::lora::{self, LoraLinear};

/// The `config.json` keys Llama reads (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(flatten)]
    pub rope: RopeParameters,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_rms_eps() -> f64 {
    1e-6
}

fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks every size against [`crate::check`]'s bounds and that they fit
    /// together (heads divide the hidden size, KV heads divide heads, an even
    /// head dimension for RoPE); returns the parameter count [`Llama::new`]
    /// declares. `path` names the config in errors.
    pub fn validate(&self, path: &Path) -> Result<u64> {
        let h = dim(path, "hidden_size", self.hidden_size, MAX_HIDDEN)?;
        let nh = dim(
            path,
            "num_attention_heads",
            self.num_attention_heads,
            MAX_HEADS,
        )?;
        let nkv = dim(path, "num_key_value_heads", self.kv_heads(), MAX_HEADS)?;
        divides(path, "num_attention_heads", nh, "num_key_value_heads", nkv)?;
        if self.head_dim.is_none() {
            divides(path, "hidden_size", h, "num_attention_heads", nh)?;
        }
        let hd = dim(path, "head_dim", self.head_dim(), MAX_HIDDEN)?;
        if hd % 2 != 0 {
            return Err(ModelError::file(
                path,
                format!("head dimension {hd} is odd; RoPE rotates pairs of features"),
            ));
        }
        // nh ≤ 2^12 and hd ≤ 2^17: no overflow.
        let q = dim(path, "num_attention_heads × head_dim", nh * hd, MAX_HIDDEN)?;
        let kv = nkv * hd;
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
        finite(path, "rms_norm_eps", self.rms_norm_eps, 0.0, false)?;
        let mut layer = ParamCount::default();
        layer.add(&[h]);
        layer.add(&[h]);
        for shape in [[q, h], [kv, h], [kv, h], [h, q]] {
            layer.add(&shape);
        }
        if self.attention_bias {
            for n in [q, kv, kv, h] {
                layer.add(&[n]);
            }
        }
        for shape in [[inter, h], [inter, h], [h, inter]] {
            layer.add(&shape);
        }
        if self.mlp_bias {
            for n in [inter, inter, h] {
                layer.add(&[n]);
            }
        }
        let mut total = ParamCount::default();
        total.add_times(layer, layers);
        total.add(&[vocab, h]);
        total.add(&[h]);
        if !self.tie_word_embeddings {
            total.add(&[vocab, h]);
        }
        total.total(path)
    }
}

struct Layer {
    input_layernorm: RmsNorm,
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    post_attention_layernorm: RmsNorm,
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
}

impl Layer {
    /// The projections by their path in the layer (PEFT's module names).
    fn projections(&self) -> [(&'static str, &LoraLinear); 7] {
        [
            ("self_attn.q_proj", &self.q_proj),
            ("self_attn.k_proj", &self.k_proj),
            ("self_attn.v_proj", &self.v_proj),
            ("self_attn.o_proj", &self.o_proj),
            ("mlp.gate_proj", &self.gate_proj),
            ("mlp.up_proj", &self.up_proj),
            ("mlp.down_proj", &self.down_proj),
        ]
    }

    fn projections_mut(&mut self) -> [(&'static str, &mut LoraLinear); 7] {
        [
            ("self_attn.q_proj", &mut self.q_proj),
            ("self_attn.k_proj", &mut self.k_proj),
            ("self_attn.v_proj", &mut self.v_proj),
            ("self_attn.o_proj", &mut self.o_proj),
            ("mlp.gate_proj", &mut self.gate_proj),
            ("mlp.up_proj", &mut self.up_proj),
            ("mlp.down_proj", &mut self.down_proj),
        ]
    }
}

pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    act: Activation,
    rope: Rope,
    /// What [`Rope::new`] was given (copies build their own tables).
    rope_args: (f64, RopeScaling),
    /// Gradient checkpointing on: training forwards keep the layers' inputs
    /// only, and wait in `pending` for [`CausalLm::finish_backward`].
    checkpointing: bool,
    pending: std::sync::Mutex<Vec<Segment>>,
}

/// A checkpointed training forward awaiting its backward through the layers.
struct Segment {
    /// Each layer's input `[B, T, H]`, without graph.
    inputs: Vec<Tensor>,
    /// The last layer's output: a leaf that the loss's backward reaches.
    output: Tensor,
    /// The embedding lookup, with its graph (to the embedding weight).
    embedded: Tensor,
    /// What the layers read besides their input.
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    dropout_key: Option<u64>,
}

impl Llama {
    /// Declares every parameter under `root` (zeros; load weights afterwards).
    pub fn new(
        root: nn::Path,
        cfg: &LlamaConfig,
        act: Activation,
        theta: f64,
        scaling: RopeScaling,
    ) -> Llama {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
        let model = root.sub("model");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = model.sub("layers").sub(i);
                let attn = p.sub("self_attn");
                let mlp = p.sub("mlp");
                let ab = cfg.attention_bias;
                Layer {
                    input_layernorm: RmsNorm::new(p.sub("input_layernorm"), h, cfg.rms_norm_eps),
                    q_proj: LoraLinear::new(attn.sub("q_proj"), h, nh * hd, ab),
                    k_proj: LoraLinear::new(attn.sub("k_proj"), h, nkv * hd, ab),
                    v_proj: LoraLinear::new(attn.sub("v_proj"), h, nkv * hd, ab),
                    o_proj: LoraLinear::new(attn.sub("o_proj"), nh * hd, h, ab),
                    post_attention_layernorm: RmsNorm::new(
                        p.sub("post_attention_layernorm"),
                        h,
                        cfg.rms_norm_eps,
                    ),
                    gate_proj: LoraLinear::new(
                        mlp.sub("gate_proj"),
                        h,
                        cfg.intermediate_size,
                        cfg.mlp_bias,
                    ),
                    up_proj: LoraLinear::new(
                        mlp.sub("up_proj"),
                        h,
                        cfg.intermediate_size,
                        cfg.mlp_bias,
                    ),
                    down_proj: LoraLinear::new(
                        mlp.sub("down_proj"),
                        cfg.intermediate_size,
                        h,
                        cfg.mlp_bias,
                    ),
                }
            })
            .collect();
        let embed_tokens = model
            .sub("embed_tokens")
            .zeros("weight", &[cfg.vocab_size, h]);
        let lm_head = (!cfg.tie_word_embeddings)
            .then(|| root.sub("lm_head").zeros("weight", &[cfg.vocab_size, h]));
        Llama {
            embed_tokens,
            layers,
            norm: RmsNorm::new(model.sub("norm"), h, cfg.rms_norm_eps),
            lm_head,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            act,
            rope: Rope::new(hd, theta, scaling, root.device()),
            rope_args: (theta, scaling),
            checkpointing: false,
            pending: Default::default(),
        }
    }

    /// Every projection (the layers' seven linear maps) by its module path,
    /// e.g. `model.layers.0.self_attn.q_proj`, in layer order.
    pub fn projections(&self) -> Vec<(String, &LoraLinear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7);
        for (i, l) in self.layers.iter().enumerate() {
            for (name, p) in l.projections() {
                out.push((format!("model.layers.{i}.{name}"), p));
            }
        }
        out
    }

    /// [`Llama::projections`], mutably (to attach or replace adapters).
    pub fn projections_mut(&mut self) -> Vec<(String, &mut LoraLinear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7);
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (name, p) in l.projections_mut() {
                out.push((format!("model.layers.{i}.{name}"), p));
            }
        }
        out
    }

    /// The same architecture with every base weight replaced by
    /// `f(name, weight)` (names as declared, e.g. `model.norm.weight`) and no
    /// adapters: `Tensor::shallow_clone` shares the weights, a copy copies
    /// them.
    pub fn map_weights(&self, f: &mut dyn FnMut(&str, &Tensor) -> Tensor) -> Llama {
        fn linear(
            f: &mut dyn FnMut(&str, &Tensor) -> Tensor,
            name: &str,
            l: &LoraLinear,
        ) -> LoraLinear {
            LoraLinear::plain(Linear {
                weight: f(&format!("{name}.weight"), &l.base.weight),
                bias: l.base.bias.as_ref().map(|b| f(&format!("{name}.bias"), b)),
            })
        }
        fn norm(f: &mut dyn FnMut(&str, &Tensor) -> Tensor, name: &str, n: &RmsNorm) -> RmsNorm {
            RmsNorm {
                weight: f(&format!("{name}.weight"), &n.weight),
                eps: n.eps,
            }
        }
        let embed_tokens = f("model.embed_tokens.weight", &self.embed_tokens);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_layernorm: norm(f, &format!("{p}.input_layernorm"), &l.input_layernorm),
                q_proj: linear(f, &format!("{p}.self_attn.q_proj"), &l.q_proj),
                k_proj: linear(f, &format!("{p}.self_attn.k_proj"), &l.k_proj),
                v_proj: linear(f, &format!("{p}.self_attn.v_proj"), &l.v_proj),
                o_proj: linear(f, &format!("{p}.self_attn.o_proj"), &l.o_proj),
                post_attention_layernorm: norm(
                    f,
                    &format!("{p}.post_attention_layernorm"),
                    &l.post_attention_layernorm,
                ),
                gate_proj: linear(f, &format!("{p}.mlp.gate_proj"), &l.gate_proj),
                up_proj: linear(f, &format!("{p}.mlp.up_proj"), &l.up_proj),
                down_proj: linear(f, &format!("{p}.mlp.down_proj"), &l.down_proj),
            });
        }
        let norm = norm(f, "model.norm", &self.norm);
        let lm_head = self.lm_head.as_ref().map(|t| f("lm_head.weight", t));
        let (theta, scaling) = self.rope_args;
        Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            act: self.act,
            rope: Rope::new(self.head_dim, theta, scaling, self.embed_tokens.device()),
            rope_args: self.rope_args,
            // Inherited: it acts only where the layers train (the copy that
            // becomes the trained policy), never on a frozen prior or proposal.
            checkpointing: self.checkpointing,
            pending: Default::default(),
        }
    }

    /// Every base weight (no adapter) by its HF name, sharing storage.
    pub fn base_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.map_weights(&mut |name, t| {
            out.push((name.to_string(), t.shallow_clone()));
            t.shallow_clone()
        });
        out
    }
}

impl Llama {
    /// Layer `i` on the residual stream `x` `[B, T, H]` → `[B, T, H]`.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: &Tensor,
        dropout_key: Option<u64>,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let l = &self.layers[i];
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // One dropout mask per projection.
        let dk = |j: u64| dropout_key.map(|key| lora::mix(key, i as u64 * 8 + j));
        let h = l.input_layernorm.forward(x);
        let q = split_heads(&l.q_proj.forward(&h, dk(0)), self.heads); // [B, nh, T, D]
        let k = split_heads(&l.k_proj.forward(&h, dk(1)), self.kv_heads);
        let v = split_heads(&l.v_proj.forward(&h, dk(2)), self.kv_heads);
        let q = Rope::apply(&q, cos, sin);
        let k = Rope::apply(&k, cos, sin);
        let (k, v) = match cache {
            Some(c) => c.append(i, &k, &v),
            None => (k, v),
        };
        let a = attention(&q, &k, &v, mask, scale); // [B, T, nh·D]
        let x = x + l.o_proj.forward(&a, dk(3));
        let h = l.post_attention_layernorm.forward(&x);
        let gate = self.act.apply(&l.gate_proj.forward(&h, dk(4)));
        &x + l
            .down_proj
            .forward(&(gate * l.up_proj.forward(&h, dk(5))), dk(6))
    }

    /// Whether any layer weight (or adapter) is trained.
    fn layers_train(&self) -> bool {
        self.layers.iter().any(|l| {
            l.input_layernorm.weight.requires_grad()
                || l.post_attention_layernorm.weight.requires_grad()
                || l.projections().iter().any(|(_, p)| {
                    p.base.weight.requires_grad()
                        || p.adapter.as_ref().is_some_and(|a| a.a.requires_grad())
                })
        })
    }
}

impl CausalLm for Llama {
    fn hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        // Only a training forward with adapter dropout has a key (see `lora`).
        let key = lora::dropout_key(self.projections().into_iter().map(|(_, p)| p), input_ids);
        let (cos, sin) = self.rope.cos_sin(position_ids); // [B, 1, T, D]
        let embedded = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false); // [B, T, H]
        if self.checkpointing
            && cache.is_none()
            && crate::common::grad_enabled()
            && self.layers_train()
        {
            // The layers run without a graph, keeping their inputs; the
            // backward recomputes them one at a time (`finish_backward`).
            let mut inputs = Vec::with_capacity(self.layers.len());
            let mut x = embedded.detach();
            {
                let _guard = tch::no_grad_guard();
                for i in 0..self.layers.len() {
                    let next = self.layer(i, &x, (&cos, &sin), mask, key, None);
                    inputs.push(x);
                    x = next;
                }
            }
            let output = x.set_requires_grad(true);
            self.pending
                .lock()
                .expect("no panic holds the checkpoint list")
                .push(Segment {
                    inputs,
                    output: output.shallow_clone(),
                    embedded,
                    cos,
                    sin,
                    mask: mask.shallow_clone(),
                    dropout_key: key,
                });
            return self.norm.forward(&output);
        }
        let mut x = embedded;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, (&cos, &sin), mask, key, cache.as_deref_mut());
        }
        self.norm.forward(&x)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        crate::common::linear(
            hidden,
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            None,
        )
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn set_gradient_checkpointing(&mut self, on: bool) -> bool {
        self.checkpointing = on;
        true
    }

    fn gradient_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// Each pending forward, its layers last to first: the layer again from
    /// its saved input, with a graph, and backward with the gradient that
    /// reached its output (`(y · g).sum()` has gradient `g` at `y` exactly);
    /// the weights' gradients accumulate as in one whole backward pass.
    fn finish_backward(&self) {
        let segments = std::mem::take(
            &mut *self
                .pending
                .lock()
                .expect("no panic holds the checkpoint list"),
        );
        for s in segments.into_iter().rev() {
            let mut grad = s.output.grad(); // [B, T, H]
            if !grad.defined() {
                continue; // the loss did not read this forward
            }
            for (i, input) in s.inputs.iter().enumerate().rev() {
                let x = input.detach().set_requires_grad(true);
                let y = self.layer(i, &x, (&s.cos, &s.sin), &s.mask, s.dropout_key, None);
                (y * &grad).sum(sum_kind(&grad)).backward();
                grad = x.grad();
            }
            if s.embedded.requires_grad() {
                (&s.embedded * &grad).sum(sum_kind(&grad)).backward();
            }
        }
    }
}

/// The kind a sum of `t`'s elements is taken in (f32 at least).
fn sum_kind(t: &Tensor) -> tch::Kind {
    match t.kind() {
        tch::Kind::Double => tch::Kind::Double,
        _ => tch::Kind::Float,
    }
}
