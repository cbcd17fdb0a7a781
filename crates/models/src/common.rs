//! Pieces the decoder-only architectures share: position ids and attention
//! masks from padding masks, rotary embeddings, a growable KV cache, and the
//! generic `Policy` / `Decoder` wrappers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use align_core::{Decoder, Policy};
use tch::{nn, Device, Kind, Tensor};

/// Position ids from a padding mask `[B, T]`: the number of real tokens before
/// each position (0 on leading padding), so left- and right-padded rows get the
/// same positions as unpadded ones.
pub fn position_ids(attention_mask: &Tensor) -> Tensor {
    (attention_mask.cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}

/// Boolean attention mask `[B, 1, Tq, Tk]` (true = may attend) for the last `tq`
/// of `tk` positions: causal, never to padding keys; every query also sees
/// itself so a padding query has a non-empty row (its output is never used).
pub fn causal_mask(attention_mask: &Tensor, tq: i64) -> Tensor {
    let (b, tk) = attention_mask.size2().expect("attention_mask is [B, T]");
    let device = attention_mask.device();
    let q = Tensor::arange_start(tk - tq, tk, (Kind::Int64, device)).view([tq, 1]);
    let k = Tensor::arange(tk, (Kind::Int64, device)).view([1, tk]);
    let causal = k.le_tensor(&q); // [Tq, Tk]
    let diagonal = k.eq_tensor(&q);
    let keys = attention_mask.ne(0).view([b, 1, 1, tk]);
    causal.logical_and(&keys).logical_or(&diagonal)
}

/// How RoPE frequencies are rescaled for contexts beyond the trained one
/// (HF's `rope_type`; both kinds here keep attention unscaled).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RopeScaling {
    #[default]
    None,
    /// Every frequency divided by `factor` (positions stretched).
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies (wavelength above `original / low_freq_factor`)
    /// divided by `factor`, high ones (below `original / high_freq_factor`)
    /// kept, the band between interpolated smoothly.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// Rescales `inv_freq` `[d/2]` (f32) as transformers'
    /// `_compute_{linear_scaling,llama3}_parameters` do, op for op.
    fn apply(self, inv_freq: Tensor) -> Tensor {
        match self {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original,
            } => {
                let (low_wavelen, high_wavelen) = (original / low, original / high);
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let scaled = inv_freq.where_self(&wavelen.le(low_wavelen), &(&inv_freq / factor));
                let smooth = (wavelen.reciprocal() * original - low) / (high - low);
                let smoothed: Tensor = (-&smooth + 1.0) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen
                    .ge(high_wavelen)
                    .logical_and(&wavelen.le(low_wavelen));
                smoothed.where_self(&medium, &scaled)
            }
        }
    }
}

/// Rotary position embedding (HF's rotate-half layout) over the first
/// `dims` features of each head.
pub struct Rope {
    inv_freq: Tensor, // [dims / 2] f32
}

impl Rope {
    pub fn new(dims: i64, theta: f64, scaling: RopeScaling, device: Device) -> Rope {
        // As HF: 1 / theta^(arange(0, d, 2) / d), in f32.
        let exponent = Tensor::arange_start_step(0, dims, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / dims as f64;
        let base = Tensor::from(theta as f32).to_device(device);
        Rope {
            inv_freq: scaling.apply(base.pow(&exponent).reciprocal()),
        }
    }

    /// `cos`, `sin` `[B, 1, T, dims]` (f32) for position ids `[B, T]`.
    pub fn cos_sin(&self, position_ids: &Tensor) -> (Tensor, Tensor) {
        let freqs = position_ids.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq; // [B, T, d/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos(), emb.sin())
    }

    /// Applies the rotation to `x` `[B, H, T, D]` (the first `cos.size(-1)` features).
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let d = x.size()[3];
        let r = cos.size()[3];
        let (cos, sin) = (cos.to_kind(x.kind()), sin.to_kind(x.kind()));
        let rotate = |x: &Tensor| {
            let half = x.size()[3] / 2;
            let x1 = x.narrow(3, 0, half);
            let x2 = x.narrow(3, half, half);
            Tensor::cat(&[&(-x2), &x1], 3)
        };
        if r == d {
            x * &cos + rotate(x) * &sin
        } else {
            let rot = x.narrow(3, 0, r);
            let pass = x.narrow(3, r, d - r);
            Tensor::cat(&[&rot * &cos + rotate(&rot) * &sin, pass], 3)
        }
    }
}

/// Keys and values of every layer for one decoding session, `[B, H_kv, cap, D]`
/// buffers that grow by doubling so a step appends without copying the past.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Positions filled in every layer.
    pub len: i64,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache {
            layers: (0..layers).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Appends `k`, `v` `[B, H_kv, T, D]` at position `len` of `layer` and
    /// returns the keys and values so far `[B, H_kv, len + T, D]`. Call
    /// [`KvCache::advance`] once every layer has appended.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let need = self.len + t;
        let slot = &mut self.layers[layer];
        let grow = match slot {
            Some((kb, _)) => kb.size()[2] < need,
            None => true,
        };
        if grow {
            let cap = match slot {
                Some((kb, _)) => (kb.size()[2] * 2).max(need + 64),
                None => need + 64,
            };
            let new = |x: &Tensor, old: Option<&Tensor>| {
                let mut s = x.size();
                s[2] = cap;
                let buf = Tensor::zeros(&s, (x.kind(), x.device()));
                if let Some(old) = old {
                    buf.narrow(2, 0, self.len)
                        .copy_(&old.narrow(2, 0, self.len));
                }
                buf
            };
            let old = slot.take();
            *slot = Some((
                new(k, old.as_ref().map(|o| &o.0)),
                new(v, old.as_ref().map(|o| &o.1)),
            ));
        }
        let (kb, vb) = slot.as_ref().expect("allocated above");
        kb.narrow(2, self.len, t).copy_(k);
        vb.narrow(2, self.len, t).copy_(v);
        (kb.narrow(2, 0, need), vb.narrow(2, 0, need))
    }

    pub fn advance(&mut self, t: i64) {
        self.len += t;
    }
}

/// A decoder-only transformer body: hidden states after the final norm, and
/// the output projection.
pub trait CausalLm: Send {
    /// `input_ids` `[B, T]`, `position_ids` `[B, T]`, `mask` from
    /// [`causal_mask`] `[B, 1, T, past + T]` → hidden states `[B, T, H]`.
    /// With a cache, keys and values are appended to it (and attention covers
    /// the cached positions too).
    fn hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Tensor;

    /// `[…, H]` → logits `[…, V]`.
    fn logits(&self, hidden: &Tensor) -> Tensor;

    fn num_layers(&self) -> usize;

    /// See [`Policy::set_gradient_checkpointing`].
    fn set_gradient_checkpointing(&mut self, _on: bool) -> bool {
        false
    }

    /// See [`Policy::finish_backward`].
    fn finish_backward(&self) {}

    /// Whether gradient checkpointing is on (copies keep it).
    fn gradient_checkpointing(&self) -> bool {
        false
    }
}

impl CausalLm for Box<dyn CausalLm> {
    fn hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        (**self).hidden(input_ids, position_ids, mask, cache)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        (**self).logits(hidden)
    }

    fn num_layers(&self) -> usize {
        (**self).num_layers()
    }

    fn set_gradient_checkpointing(&mut self, on: bool) -> bool {
        (**self).set_gradient_checkpointing(on)
    }

    fn finish_backward(&self) {
        (**self).finish_backward()
    }

    fn gradient_checkpointing(&self) -> bool {
        (**self).gradient_checkpointing()
    }
}

/// A decoder-only model with its parameters: implements [`Policy`].
pub struct CausalModel<M> {
    pub vs: nn::VarStore,
    pub model: M,
    pub vocab: i64,
    /// How to declare the same architecture again (for in-memory copies).
    pub recipe: Option<std::sync::Arc<crate::hf::DecoderRecipe>>,
}

impl<M: CausalLm> Policy for CausalModel<M> {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let t = input_ids.size()[1];
        let positions = position_ids(attention_mask);
        let mask = causal_mask(attention_mask, t);
        let hidden = self.model.hidden(input_ids, &positions, &mask, None);
        self.model.logits(&hidden)
    }

    fn sequence_logprobs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        completion_mask: &Tensor,
    ) -> Tensor {
        let t = input_ids.size()[1];
        let positions = position_ids(attention_mask);
        let mask = causal_mask(attention_mask, t);
        let hidden = self.model.hidden(input_ids, &positions, &mask, None); // [B, T, H]
        align_core::logprob::completion_logprobs(
            &hidden,
            |h| self.model.logits(h),
            input_ids,
            completion_mask,
        )
    }

    fn vocab_size(&self) -> i64 {
        self.vocab
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn frozen_clone(&self) -> Option<anyhow::Result<Box<dyn Policy>>> {
        let recipe = self.recipe.as_ref()?;
        Some((|| {
            let mut copy = recipe.declare(&self.vs)?;
            copy.set_gradient_checkpointing(self.model.gradient_checkpointing());
            copy.var_store_mut().copy(&self.vs)?;
            copy.var_store_mut().freeze();
            Ok(copy)
        })())
    }

    fn decoder(&self) -> Option<Box<dyn Decoder + '_>> {
        Some(Box::new(CachedDecoder {
            model: &self.model,
            cache: KvCache::new(self.model.num_layers()),
        }))
    }

    fn set_gradient_checkpointing(&mut self, on: bool) -> bool {
        self.model.set_gradient_checkpointing(on)
    }

    fn finish_backward(&self) {
        self.model.finish_backward()
    }

    /// The HF files beside `model.safetensors` (the variable store's names
    /// are HF's): `dir` becomes an HF directory.
    fn export(&self, dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
        match &self.recipe {
            Some(recipe) => {
                let kind = crate::export::kind_of(self.vs.variables().values())?;
                recipe.files.write(dir, kind)
            }
            None => Ok(Vec::new()),
        }
    }

    fn save_hf(&self, dir: &std::path::Path) -> anyhow::Result<bool> {
        let Some(recipe) = &self.recipe else {
            return Ok(false);
        };
        let mut weights: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        recipe.files.save(dir, &weights)?;
        Ok(true)
    }
}

/// KV-cache decoding over a [`CausalLm`].
pub struct CachedDecoder<'a, M> {
    model: &'a M,
    cache: KvCache,
}

impl<M: CausalLm> Decoder for CachedDecoder<'_, M> {
    fn prefill(&mut self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.cache = KvCache::new(self.model.num_layers());
        let t = input_ids.size()[1];
        let positions = position_ids(attention_mask);
        let mask = causal_mask(attention_mask, t);
        let hidden = self
            .model
            .hidden(input_ids, &positions, &mask, Some(&mut self.cache));
        self.cache.advance(t);
        // Left-padded: the last position is real in every row.
        self.model.logits(&hidden.select(1, t - 1)) // [B, V]
    }

    fn step(&mut self, tokens: &Tensor, attention_mask: &Tensor) -> Tensor {
        let ids = tokens.view([-1, 1]);
        // Position of the new token = real tokens before it.
        let positions =
            (attention_mask.sum_dim_intlist([-1].as_slice(), true, Kind::Int64) - 1).clamp_min(0); // [B, 1]
        let mask = causal_mask(attention_mask, 1);
        let hidden = self
            .model
            .hidden(&ids, &positions, &mask, Some(&mut self.cache));
        self.cache.advance(1);
        self.model.logits(&hidden.select(1, 0))
    }
}

/// `[B, T, H·D]` → `[B, H, T, D]`.
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, t, _) = x.size3().expect("[B, T, C]");
    x.view([b, t, heads, -1]).transpose(1, 2)
}

/// Scaled dot-product attention: `q` `[B, H, Tq, D]`, `k`, `v` `[B, H_kv, Tk, D]`
/// (grouped when `H_kv < H`), bool `mask` → `[B, Tq, H·D]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
    let (b, h, tq, d) = q.size4().expect("[B, H, T, D]");
    let gqa = k.size()[1] != h;
    let out = Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, scale, gqa);
    out.transpose(1, 2).reshape([b, tq, h * d])
}

/// An activation by its HF `hidden_act` name.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    Gelu,
    GeluTanh,
    Silu,
    Relu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Option<Activation> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Silu => x.silu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// A linear layer with HF's parameter names (`weight` `[out, in]`, optional `bias`).
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: nn::Path, input: i64, output: i64, bias: bool) -> Linear {
        Linear {
            weight: p.zeros("weight", &[output, input]),
            bias: bias.then(|| p.zeros("bias", &[output])),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        linear(x, &self.weight, self.bias.as_ref())
    }
}

/// `x · Wᵀ + b` for `x` `[…, in]`, `weight` `[out, in]`. A decoding step
/// has only a few rows (one token per sequence); for those, on the CPU
/// without autograd, [`align_kernels`] reads each weight once instead of
/// having BLAS repack it on every call (1.4–3× on SmolLM2's shapes in f32:
/// `cargo bench -p align-models --bench linear`), and reads bf16 weights
/// as they are stored, half the bytes of f32, with f32 products and sums.
/// Same product, different summation order.
///
/// bf16 weights also take f32 activations (`x` f32, `weight` bf16: the
/// result is f32, as if the weight were widened first), on every route.
/// On the CPU without autograd, more rows than [`FEW_ROWS`] with bf16
/// weights are multiplied in f32 by LibTorch's f32 GEMM on widened copies
/// (its bf16 CPU GEMM is 3–5× slower than its f32 one on AVX2 machines
/// without bf16 instructions), the result rounded to `x`'s kind as
/// LibTorch's bf16 GEMM rounds its f32 sums.
///
/// That route is the `cpu-decode-kernel` feature (on by default); without
/// it, or after [`set_decode_kernel`]`(false)`, every call is LibTorch's.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    // Why a second route: on few-row GEMMs MKL repacks the whole weight
    // matrix on every call, so a decoding step read each weight twice and
    // spent a third of its time copying. The kernel sums each dot product
    // in another order than MKL, so its outputs differ from LibTorch's in
    // the last bits, and which route a call takes depends on its row count
    // (≤ FEW_ROWS): sampling and full-sequence scoring of the same tokens
    // can differ by that rounding. `tests/decode_kernel.rs` checks that both
    // routes sample the same tokens with the same log-probs.
    #[cfg(feature = "cpu-decode-kernel")]
    if DECODE_KERNEL.load(Ordering::Relaxed) {
        if let Some(y) = few_rows_linear(x, weight, bias) {
            return y;
        }
        if let Some(y) = widened_bf16_linear(x, weight, bias) {
            return y;
        }
    }
    if x.kind() == Kind::Float && weight.kind() == Kind::BFloat16 {
        // f32 activations, bf16 weights: LibTorch wants one kind.
        let bias = bias.map(|b| b.to_kind(Kind::Float));
        return x.linear(&weight.to_kind(Kind::Float), bias.as_ref());
    }
    x.linear(weight, bias)
}

/// Whether [`linear`] may take the decoding kernel (default: yes).
static DECODE_KERNEL: AtomicBool = AtomicBool::new(true);

/// How many products the decoding kernel has computed in this process.
static DECODE_KERNEL_CALLS: AtomicUsize = AtomicUsize::new(0);

/// How many of those read bf16 weights.
static DECODE_KERNEL_BF16_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Lets [`linear`] take the decoding kernel (`true`, the default) or forces
/// LibTorch for every product (`false`), process-wide; returns the previous
/// setting. For comparing both routes in one binary. Without the
/// `cpu-decode-kernel` feature the kernel is never taken, whatever this says.
pub fn set_decode_kernel(enabled: bool) -> bool {
    DECODE_KERNEL.swap(enabled, Ordering::Relaxed)
}

/// Whether [`linear`] can take the decoding kernel here: the
/// `cpu-decode-kernel` feature is on and this CPU has AVX2 and FMA (whatever
/// [`set_decode_kernel`] says).
pub fn decode_kernel_available() -> bool {
    #[cfg(feature = "cpu-decode-kernel")]
    {
        align_kernels::simd_available()
    }
    #[cfg(not(feature = "cpu-decode-kernel"))]
    {
        false
    }
}

/// How many products [`linear`] (or [`few_rows_linear`]) has computed with
/// the decoding kernel in this process, for tests and diagnostics.
pub fn decode_kernel_calls() -> usize {
    DECODE_KERNEL_CALLS.load(Ordering::Relaxed)
}

/// How many of [`decode_kernel_calls`] read bf16 weights.
pub fn decode_kernel_bf16_calls() -> usize {
    DECODE_KERNEL_BF16_CALLS.load(Ordering::Relaxed)
}

/// At most this many rows take [`few_rows_linear`].
pub const FEW_ROWS: i64 = 32;

/// The decoding route of [`linear`], or `None` where it does not apply:
/// more than [`FEW_ROWS`] rows, not on the CPU, a CPU without AVX2/FMA,
/// gradients to record, or kinds other than f32 `x`, `weight` (and `bias`)
/// or bf16 `weight` with f32 or bf16 `x` (`bias` f32 or bf16). The result
/// has `x`'s kind; it is computed in f32 (a bf16 `x` is widened first, the
/// result rounded back once).
#[cfg(feature = "cpu-decode-kernel")]
pub fn few_rows_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let (out, inp) = weight.size2().ok()?;
    // A mismatched input goes to LibTorch, whose error names both shapes.
    if x.size().last() != Some(&inp) {
        return None;
    }
    let rows = x.numel() as i64 / inp.max(1);
    let cpu = |t: &Tensor| t.device() == Device::Cpu;
    let bf16 = weight.kind() == Kind::BFloat16;
    let kinds_fit = match (x.kind(), weight.kind()) {
        (Kind::Float, Kind::Float) => bias.is_none_or(|b| b.kind() == Kind::Float),
        (Kind::Float | Kind::BFloat16, Kind::BFloat16) => {
            bias.is_none_or(|b| matches!(b.kind(), Kind::Float | Kind::BFloat16))
        }
        _ => false,
    };
    if !(1..=FEW_ROWS).contains(&rows)
        || out == 0
        || inp == 0
        || !kinds_fit
        || !cpu(x)
        || !cpu(weight)
        || !bias.is_none_or(cpu)
        || !align_kernels::simd_available()
    {
        return None;
    }
    let tracked =
        x.requires_grad() || weight.requires_grad() || bias.is_some_and(|b| b.requires_grad());
    if tracked && grad_enabled() {
        return None;
    }
    let half_x = x.kind() == Kind::BFloat16;
    let x = x.contiguous();
    let weight = weight.contiguous();
    // f32 bias (a copy only where it is bf16: `out` values).
    let bias = bias.map(|b| b.to_kind(Kind::Float).contiguous());
    // The result in `x`'s kind: bf16 `x` gives bf16 results, each rounded
    // once from its f32 sum by the kernel.
    let y = Tensor::empty([rows, out], (x.kind(), Device::Cpu));
    // SAFETY: contiguous CPU tensors of the stated sizes and kinds (checked
    // above, all non-empty; bf16 elements are 16-bit patterns, `Bf16` is
    // `repr(transparent)` over `u16`), kept alive by the bindings above for
    // the whole call; `y` is fresh, so nothing else aliases it.
    unsafe {
        use align_kernels::Bf16;
        // `t`'s elements as `T`s (`T` of `t`'s element size and layout).
        unsafe fn view<T>(t: &Tensor) -> &[T] {
            std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel())
        }
        #[allow(clippy::mut_from_ref)] // `y` is fresh: no other view of it
        unsafe fn view_mut<T>(t: &Tensor) -> &mut [T] {
            std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, t.numel())
        }
        let (rows, inp, out) = (rows as usize, inp as usize, out as usize);
        let bs = bias.as_ref().map(|b| view::<f32>(b));
        let threads = tch::get_num_threads().max(1) as usize;
        let team = |tasks: usize, task: &(dyn Fn(usize) + Sync)| {
            crate::openmp::for_each_task(threads, tasks, task)
        };
        // `for_each_task` runs each task once.
        use align_kernels::{linear_few_rows_bf16_with as half, linear_few_rows_with as full};
        match (bf16, half_x) {
            (false, _) => full(
                view(&x),
                rows,
                inp,
                view(&weight),
                out,
                bs,
                view_mut(&y),
                team,
            ),
            (true, false) => half::<f32, f32>(
                view(&x),
                rows,
                inp,
                view(&weight),
                out,
                bs,
                view_mut(&y),
                team,
            ),
            (true, true) => half::<Bf16, Bf16>(
                view(&x),
                rows,
                inp,
                view(&weight),
                out,
                bs,
                view_mut(&y),
                team,
            ),
        }
    }
    DECODE_KERNEL_CALLS.fetch_add(1, Ordering::Relaxed);
    if bf16 {
        DECODE_KERNEL_BF16_CALLS.fetch_add(1, Ordering::Relaxed);
    }
    let mut shape = x.size();
    *shape.last_mut().expect("x has a feature dim") = out;
    Some(y.view(shape.as_slice()))
}

/// [`linear`]'s route for bf16 weights on the CPU beyond [`FEW_ROWS`]
/// rows without autograd (a prefill, full-sequence scoring): LibTorch's
/// f32 GEMM on widened copies of `x`, `weight` and `bias`, rounded to `x`'s
/// kind. `None` elsewhere.
#[cfg(feature = "cpu-decode-kernel")]
fn widened_bf16_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let on_cpu = [Some(x), Some(weight), bias]
        .into_iter()
        .flatten()
        .all(|t| t.device() == Device::Cpu);
    let kinds_fit = weight.kind() == Kind::BFloat16
        && matches!(x.kind(), Kind::Float | Kind::BFloat16)
        && bias.is_none_or(|b| matches!(b.kind(), Kind::Float | Kind::BFloat16));
    if !on_cpu || !kinds_fit || x.size().last() != weight.size().last() {
        return None;
    }
    let tracked =
        x.requires_grad() || weight.requires_grad() || bias.is_some_and(|b| b.requires_grad());
    if tracked && grad_enabled() {
        return None;
    }
    let wide = |t: &Tensor| t.to_kind(Kind::Float);
    let bias = bias.map(wide);
    Some(
        wide(x)
            .linear(&wide(weight), bias.as_ref())
            .to_kind(x.kind()),
    )
}

/// Whether autograd records operations now (tch has no getter: setting the
/// mode returns the previous one, which is restored at once).
pub(crate) fn grad_enabled() -> bool {
    // SAFETY: plain calls into LibTorch's thread-local grad mode.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

/// LayerNorm with `weight` and `bias`.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    pub dim: i64,
}

impl LayerNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> LayerNorm {
        LayerNorm {
            weight: p.zeros("weight", &[dim]),
            bias: p.zeros("bias", &[dim]),
            eps,
            dim,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// RMSNorm as in HF Llama: normalise in f32, cast back, scale.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> RmsNorm {
        RmsNorm {
            weight: p.zeros("weight", &[dim]),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim([-1].as_slice(), true, Kind::Float);
        let normed = xf * (var + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

#[cfg(all(test, feature = "cpu-decode-kernel"))]
mod linear_tests {
    use super::*;

    /// The few-rows route computes `x · Wᵀ + b` for 2-D and 3-D inputs,
    /// ragged sizes included; more rows than [`FEW_ROWS`] go to LibTorch.
    #[test]
    fn few_rows_route_matches_linear() {
        if !align_kernels::simd_available() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA, so the few-rows route is off");
            return;
        }
        let _guard = tch::no_grad_guard();
        tch::manual_seed(0);
        let w = Tensor::randn([515, 37], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([515], (Kind::Float, Device::Cpu));
        for shape in [vec![16, 37], vec![4, 1, 37], vec![2, 3, 37], vec![1, 37]] {
            let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
            for bias in [None, Some(&b)] {
                let got = few_rows_linear(&x, &w, bias).expect("the route applies");
                let want = x.linear(&w, bias);
                assert_eq!(got.size(), want.size());
                let err = (got - want).abs().max().double_value(&[]);
                assert!(err < 1e-4, "{shape:?}, bias {}: {err}", bias.is_some());
            }
        }
        let many = Tensor::randn([FEW_ROWS + 1, 37], (Kind::Float, Device::Cpu));
        assert!(few_rows_linear(&many, &w, None).is_none());
        // Kinds the kernels lack go to LibTorch: f16, and bf16 `x` on f32 `W`.
        let x = Tensor::randn([4, 37], (Kind::Float, Device::Cpu));
        let f16 = |t: &Tensor| t.to_kind(Kind::Half);
        assert!(few_rows_linear(&f16(&x), &f16(&w), None).is_none());
        assert!(few_rows_linear(&x.to_kind(Kind::BFloat16), &w, None).is_none());
    }

    /// `x` `[…, 37]` f32, `W` `[515, 37]` and `b` bf16, all rounded from
    /// f32 normals, and the same `W`, `b` widened back to f32.
    fn bf16_operands(shape: &[i64]) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        let cpu = (Kind::Float, Device::Cpu);
        let w = Tensor::randn([515, 37], cpu).to_kind(Kind::BFloat16);
        let b = Tensor::randn([515], cpu).to_kind(Kind::BFloat16);
        let x = Tensor::randn(shape, cpu);
        let (wf, bf) = (w.to_kind(Kind::Float), b.to_kind(Kind::Float));
        (x, w, b, wf, bf)
    }

    /// bf16 weights: with f32 `x` the route gives f32 `x · Wᵀ + b` of the
    /// widened weights up to summation order (as f32 weights do); with bf16
    /// `x` a bf16 result, that product rounded once to bf16 (so at most one
    /// bf16 step from LibTorch's own bf16 `linear`, which also sums in f32
    /// and rounds once).
    #[test]
    fn few_rows_route_reads_bf16_weights() {
        if !align_kernels::simd_available() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA, so the few-rows route is off");
            return;
        }
        let _guard = tch::no_grad_guard();
        tch::manual_seed(1);
        let calls = decode_kernel_bf16_calls();
        for shape in [vec![16, 37], vec![4, 1, 37], vec![2, 3, 37], vec![1, 37]] {
            let (x, w, b, wf, bf) = bf16_operands(&shape);
            for (bias, bias_f) in [(None, None), (Some(&b), Some(&bf))] {
                let what = format!("{shape:?}, bias {}", bias.is_some());
                let got = few_rows_linear(&x, &w, bias).expect("the route applies");
                assert_eq!(got.kind(), Kind::Float, "{what}");
                let want = x.linear(&wf, bias_f);
                assert_eq!(got.size(), want.size(), "{what}");
                let err = (&got - &want).abs().max().double_value(&[]);
                assert!(err < 1e-4, "{what}: f32 x: {err}");
                // `linear` takes the same route (and LibTorch's, widening `W`).
                assert!(linear(&x, &w, bias).equal(&got), "{what}");

                let xh = x.to_kind(Kind::BFloat16);
                let got = few_rows_linear(&xh, &w, bias).expect("the route applies");
                assert_eq!(got.kind(), Kind::BFloat16, "{what}");
                // A bf16 step (ulp) at `v` is at most |v|/128: the rounded
                // product is within half a step of the f32 one, and within
                // one step of another rounding of it (LibTorch's).
                let exact = xh.to_kind(Kind::Float).linear(&wf, bias_f);
                let torch = xh.linear(&w, bias).to_kind(Kind::Float);
                let got = got.to_kind(Kind::Float);
                for (name, want, steps) in [
                    ("the widened product", &exact, 0.5),
                    ("LibTorch's bf16 linear", &torch, 1.0),
                ] {
                    let bound = want.abs() * (steps / 128.0) + 1e-6;
                    let over = (&got - want).abs().gt_tensor(&bound).sum(Kind::Int64);
                    assert_eq!(over.int64_value(&[]), 0, "{what}: bf16 x vs {name}");
                }
            }
        }
        // Process-wide counts (other tests run meanwhile): at least ours.
        assert!(decode_kernel_bf16_calls() - calls >= 4 * 2 * 3);
    }

    /// Beyond `FEW_ROWS` rows, bf16 weights are multiplied in f32 on widened
    /// copies (not by the kernel), for f32 and bf16 `x`.
    #[test]
    fn many_rows_with_bf16_weights_multiply_widened() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(2);
        let (x, w, b, wf, bf) = bf16_operands(&[3, FEW_ROWS, 37]);
        let got = widened_bf16_linear(&x, &w, Some(&b)).expect("bf16 weights on the CPU");
        assert!(got.equal(&x.linear(&wf, Some(&bf))));
        let xh = x.to_kind(Kind::BFloat16);
        let got = widened_bf16_linear(&xh, &w, Some(&b)).unwrap();
        let want = xh.to_kind(Kind::Float).linear(&wf, Some(&bf));
        assert!(got.equal(&want.to_kind(Kind::BFloat16)));
        assert!(
            linear(&xh, &w, Some(&b)).equal(&got),
            "`linear` takes this route"
        );
        assert!(widened_bf16_linear(&x, &wf, None).is_none(), "f32 weights");
    }

    /// With autograd on and a trainable weight, `linear` stays on LibTorch so
    /// gradients flow; under `no_grad` the same call takes the kernel.
    #[test]
    fn few_rows_route_keeps_gradients() {
        let w = Tensor::randn([8, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::randn([2, 5], (Kind::Float, Device::Cpu));
        assert!(few_rows_linear(&x, &w, None).is_none());
        let y = linear(&x, &w, None);
        y.sum(Kind::Float).backward();
        let want = x.sum_dim_intlist([0].as_slice(), false, Kind::Float); // d/dW of Σ x·Wᵀ
        assert!(w
            .grad()
            .allclose(&want.unsqueeze(0).expand([8, 5], false), 1e-5, 1e-5, false));
        let _guard = tch::no_grad_guard();
        assert_eq!(
            few_rows_linear(&x, &w, None).is_some(),
            align_kernels::simd_available()
        );
    }

    /// Training a bf16 model keeps LibTorch's autograd on both bf16 routes,
    /// and f32 activations on bf16 weights get gradients too.
    #[test]
    fn bf16_routes_keep_gradients() {
        let w = Tensor::randn([8, 5], (Kind::Float, Device::Cpu))
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        for rows in [2, FEW_ROWS + 1] {
            let x = Tensor::randn([rows, 5], (Kind::Float, Device::Cpu));
            assert!(few_rows_linear(&x, &w, None).is_none());
            assert!(widened_bf16_linear(&x, &w, None).is_none());
            let y = linear(&x, &w, None);
            assert_eq!(y.kind(), Kind::Float);
            y.sum(Kind::Float).backward();
            let want = x.sum_dim_intlist([0].as_slice(), false, Kind::Float);
            let grad = w.grad().to_kind(Kind::Float);
            let want = want.unsqueeze(0).expand([8, 5], false);
            // bf16 gradients: rounded sums.
            assert!(grad.allclose(&want, 1e-2, 1e-2, false), "{rows} rows");
            let mut g = w.grad();
            let _ = g.zero_();
        }
    }
}

#[cfg(test)]
mod rope_tests {
    use super::*;

    /// Linear scaling by 4 turns position 4p into the unscaled position p.
    #[test]
    fn linear_scaling_stretches_positions() {
        let plain = Rope::new(8, 10_000.0, RopeScaling::None, Device::Cpu);
        let scaled = Rope::new(
            8,
            10_000.0,
            RopeScaling::Linear { factor: 4.0 },
            Device::Cpu,
        );
        let p = Tensor::from_slice(&[0i64, 1, 2, 5]).view([1, 4]);
        let (cos, sin) = scaled.cos_sin(&(&p * 4));
        let (want_cos, want_sin) = plain.cos_sin(&p);
        assert!(cos.allclose(&want_cos, 1e-5, 1e-6, false));
        assert!(sin.allclose(&want_sin, 1e-5, 1e-6, false));
    }
}
