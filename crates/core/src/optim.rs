//! The optimizers the training loop steps, with their state in the open so a
//! checkpoint can save it and `--resume` restore it exactly (tch's optimizers
//! keep theirs inside C++, out of reach). Adam is `torch.optim.Adam`'s
//! algorithm (no weight decay, no amsgrad): the same updates as the tch
//! optimizer it replaces, to rounding.
//!
//! Half-precision weights (bf16 or f16, as on a GPU) are trained in mixed
//! precision: the optimizer keeps an f32 master copy of each and f32 moments,
//! updates the master and rounds it into the weight. Updated in bf16 itself,
//! a weight would lose every change below its 2⁻⁸ relative step (lr = 5e-5
//! moves nothing).

use std::collections::BTreeMap;

use align_distributed::Comm;
use tch::{nn, Tensor};

use crate::manifest::Optimizer as OptimizerKind;

/// Adam's constants (PyTorch's defaults).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// One trainable tensor and its moments (allocated on the first step, as
/// PyTorch does).
struct Param {
    name: String,
    value: Tensor,
    /// The f32 weight a half-precision `value` is rounded from.
    master: Option<Tensor>,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
}

impl Param {
    /// The weight the update applies to: the master copy, if any.
    fn weight(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.value)
    }
}

/// Whether weights of this kind get an f32 master copy.
fn is_half(kind: tch::Kind) -> bool {
    matches!(kind, tch::Kind::BFloat16 | tch::Kind::Half)
}

/// A sum over the ranks of a tensor on the training device, in place, the
/// same bits on every rank: NCCL for CUDA tensors (the runner's `nccl`
/// feature). [`Optimizer::sum_grads`] hands it the step's flat gradients.
pub trait DeviceSum: Send + Sync {
    /// Every rank's `t` summed into every rank's `t` (contiguous; the same
    /// shape and kind on every rank).
    fn sum_in_place(&self, t: &Tensor) -> anyhow::Result<()>;
}

pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    /// Optimizer steps taken (Adam's bias correction reads it).
    steps: u64,
    /// Sorted by name: the state's order does not depend on a hash map's.
    params: Vec<Param>,
    /// One buffer as large as the largest weight, per kind and device, for
    /// the update's intermediates: fresh temporaries of a 135M-parameter
    /// model cost more in page faults than the arithmetic
    /// (`benches/adam_step.py` times both beside `torch.optim.Adam`).
    scratch: Vec<Tensor>,
}

/// Adam's update of a weight from its moments at step `t` (1-based), on
/// fresh tensors (for the finiteness check's copies).
fn adam_delta(m: &Tensor, v: &Tensor, lr: f64, t: f64) -> Tensor {
    let bias_correction1 = 1.0 - BETA1.powf(t);
    let bias_correction2 = 1.0 - BETA2.powf(t);
    let denom = v.sqrt() / bias_correction2.sqrt() + EPS;
    // addcdiv's order: (value · m) / denom.
    m * -(lr / bias_correction1) / denom
}

impl Optimizer {
    /// Steps every variable of `vs` that requires a gradient.
    pub fn new(kind: OptimizerKind, vs: &nn::VarStore, lr: f64) -> anyhow::Result<Optimizer> {
        anyhow::ensure!(
            lr.is_finite() && lr > 0.0,
            "learning rate {lr} is not a finite positive number"
        );
        let named: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let params = named
            .into_iter()
            .map(|(name, value)| Param {
                name,
                master: is_half(value.kind()).then(|| {
                    let _guard = tch::no_grad_guard();
                    value.to_kind(tch::Kind::Float).detach()
                }),
                value,
                exp_avg: None,
                exp_avg_sq: None,
            })
            .collect();
        Ok(Optimizer {
            kind,
            lr,
            steps: 0,
            params,
            scratch: Vec::new(),
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.value.zero_grad();
        }
    }

    /// Whether every gradient is finite (a missing gradient counts as zero).
    pub fn grads_finite(&self) -> bool {
        let _guard = tch::no_grad_guard();
        self.params.iter().all(|p| {
            let g = p.value.grad();
            !g.defined() || g.isfinite().all().int64_value(&[]) != 0
        })
    }

    /// One update from the gradients the last `backward` left, in place:
    /// `torch.optim.Adam`'s operations (`m.lerp_(g, 1 − β1)`,
    /// `v·β2 + (1 − β2)·g²`, `w += −lr/bc1 · m / (√v/√bc2 + ε)`), each
    /// intermediate in the scratch buffer.
    pub fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let (kind, lr, t) = (self.kind, self.lr, self.steps as f64);
        let (bias_correction1, bias_correction2) = (1.0 - BETA1.powf(t), 1.0 - BETA2.powf(t));
        for i in 0..self.params.len() {
            let p = &self.params[i];
            let mut grad = p.value.grad();
            if !grad.defined() {
                continue;
            }
            if p.master.is_some() {
                grad = grad.to_kind(tch::Kind::Float);
            }
            let mut w = p.weight().shallow_clone();
            let mut s = self.scratch_like(i); // [same shape as w]
            let p = &mut self.params[i];
            match kind {
                OptimizerKind::Sgd => {
                    let _ = grad.mul_scalar_out(&s, -lr);
                    let _ = w.g_add_(&s);
                }
                OptimizerKind::Adam => {
                    let m = p.exp_avg.get_or_insert_with(|| w.zeros_like().detach());
                    let v = p.exp_avg_sq.get_or_insert_with(|| w.zeros_like().detach());
                    let _ = m.lerp_(&grad, 1.0 - BETA1);
                    let _ = grad.mul_scalar_out(&s, 1.0 - BETA2);
                    let _ = v.g_mul_scalar_(BETA2);
                    let _ = v.addcmul_(&s, &grad);
                    // s = (√v/√bc2 + ε) · (−bc1/lr), so w += m / s is the step.
                    let _ = v.sqrt_out(&s);
                    let _ = s.g_div_scalar_(bias_correction2.sqrt());
                    let _ = s.g_add_scalar_(EPS);
                    let _ = s.g_mul_scalar_(-bias_correction1 / lr);
                    let _ = w.addcdiv_(m, &s);
                }
            }
            if p.master.is_some() {
                p.value.copy_(&w); // rounded to the weight's kind
            }
        }
    }

    /// A view of the scratch buffer shaped like parameter `i`'s weight.
    fn scratch_like(&mut self, i: usize) -> Tensor {
        let w = self.params[i].weight();
        let (kind, device) = (w.kind(), w.device());
        let found = self
            .scratch
            .iter()
            .position(|b| b.kind() == kind && b.device() == device);
        let at = match found {
            Some(at) => at,
            None => {
                let largest = self
                    .params
                    .iter()
                    .map(|p| p.weight())
                    .filter(|w| w.kind() == kind && w.device() == device)
                    .map(Tensor::numel)
                    .max()
                    .unwrap_or(0);
                self.scratch
                    .push(Tensor::empty([largest as i64], (kind, device)));
                self.scratch.len() - 1
            }
        };
        let w = self.params[i].weight();
        self.scratch[at]
            .narrow(0, 0, w.numel() as i64)
            .view(w.size().as_slice())
    }

    /// Whether the next [`step`](Self::step) would leave every weight and
    /// moment finite, decided before anything changes: a step that would
    /// not is skipped, and the weights stay those of the last good step.
    ///
    /// It reads four extremes per tensor (|g|, |w|, |m|, v: one pass each;
    /// for 135M parameters on the 2-core dev machine 0.12 s, against 8–12 s
    /// for computing the update on copies: `benches/update_check.py`) and
    /// bounds the
    /// update from them, instead of computing it twice: |m'| ≤ β1·max|m| +
    /// (1−β1)·max|g|, the denominator is at least ε, so |Δw| ≤ lr/bc1 ·
    /// |m'| / ε; v' ≤ β2·max v + (1−β2)·max|g|². The bound is loose: it
    /// refuses a finite update only when lr·|m'| passes about 10²⁸ (or |g|
    /// about 10¹⁸), so half-precision weights, whose range ends at 65504,
    /// get the exact check on copies instead.
    pub fn update_is_finite(&self) -> bool {
        let _guard = tch::no_grad_guard();
        let (lr, t) = (self.lr, (self.steps + 1) as f64);
        // One pass, no temporary (abs().max() would allocate a copy).
        let max_abs = |x: &Tensor| {
            let (lo, hi) = x.aminmax(None, false);
            (-lo.double_value(&[])).max(hi.double_value(&[]))
        };
        // Far enough below f32's 3.4e38 that the bound's own arithmetic is safe.
        const LIMIT: f64 = 1e37;
        self.params.iter().all(|p| {
            let grad = p.value.grad();
            if !grad.defined() {
                return true;
            }
            if p.value.kind() == tch::Kind::Half {
                return self.update_is_finite_exactly(p, &grad);
            }
            // A bf16 weight has f32's range: its f32 master bounds it.
            let (g, w) = (max_abs(&grad), max_abs(p.weight()));
            if !(g.is_finite() && w.is_finite()) {
                return false;
            }
            let step = match self.kind {
                OptimizerKind::Sgd => lr * g,
                OptimizerKind::Adam => {
                    let m = p.exp_avg.as_ref().map_or(0.0, &max_abs);
                    let v = p.exp_avg_sq.as_ref().map_or(0.0, &max_abs);
                    let v_next = BETA2 * v + (1.0 - BETA2) * g * g;
                    if v_next.is_nan() || v_next >= LIMIT {
                        return false;
                    }
                    let m_next = BETA1 * m + (1.0 - BETA1) * g;
                    lr / (1.0 - BETA1.powf(t)) * m_next / EPS
                }
            };
            w + step < LIMIT
        })
    }

    /// The update worked out on copies, for weights whose range is too
    /// small for the bound.
    fn update_is_finite_exactly(&self, p: &Param, grad: &Tensor) -> bool {
        let (lr, t) = (self.lr, (self.steps + 1) as f64);
        let finite = |x: &Tensor| x.isfinite().all().int64_value(&[]) != 0;
        // What the weight would hold: the master's update rounded to it.
        let rounded = |w: Tensor| w.to_kind(p.value.kind());
        let w = p.weight();
        let grad = grad.to_kind(w.kind());
        match self.kind {
            OptimizerKind::Sgd => finite(&rounded(w + &grad * -lr)),
            OptimizerKind::Adam => {
                let zeros = || w.zeros_like();
                let m = p.exp_avg.as_ref().map_or_else(zeros, |m| m.copy());
                let v = p.exp_avg_sq.as_ref().map_or_else(zeros, |v| v.copy());
                let m = m * BETA1 + &grad * (1.0 - BETA1);
                let v = v * BETA2 + &grad * &grad * (1.0 - BETA2);
                finite(&m) && finite(&v) && finite(&rounded(w + adam_delta(&m, &v, lr, t)))
            }
        }
    }

    /// Data parallelism: rank 0's weights (and f32 masters) into every
    /// rank's, byte for byte, in one buffer; run before the first step.
    pub fn broadcast_weights(&mut self, comm: &dyn Comm) {
        if comm.size() == 1 {
            return;
        }
        let _guard = tch::no_grad_guard();
        let tensors: Vec<Tensor> = self
            .params
            .iter()
            .flat_map(|p| std::iter::once(&p.value).chain(p.master.as_ref()))
            .map(Tensor::shallow_clone)
            .collect();
        let bytes = |t: &Tensor| {
            t.to_device(tch::Device::Cpu)
                .contiguous()
                .view([-1])
                .view_dtype(tch::Kind::Uint8)
        };
        let mut buf = Vec::<u8>::try_from(Tensor::cat(
            &tensors.iter().map(bytes).collect::<Vec<_>>(),
            0,
        ))
        .expect("u8 bytes");
        comm.broadcast(&mut buf);
        let mut at = 0;
        for mut t in tensors {
            let len = t.numel() * t.kind().elt_size_in_bytes();
            let theirs = Tensor::from_slice(&buf[at..at + len])
                .view_dtype(t.kind())
                .view(t.size().as_slice())
                .to_device(t.device());
            t.copy_(&theirs);
            at += len;
        }
    }

    /// Data parallelism: every rank's gradients (of its share of the step's
    /// loss, `Estimator::loss_means`) summed over the ranks into every
    /// rank's gradients, the same bits on every rank: the finiteness check
    /// and the step that read them then agree. A gradient that no rank has
    /// stays undefined (the step skips it).
    ///
    /// The gradients travel as one flat buffer: with `device`, on the
    /// training device in the gradients' own kind (bf16 in a bf16 run), and
    /// `device` sums it there (NCCL, for CUDA: its ring rounds each partial
    /// sum to bf16, so on more than 2 ranks a gradient may differ from the
    /// host sum in its last bits); else in host memory as f32, rounded once,
    /// summed by `comm`. `device` sums even in a world of one (a check of
    /// that path); without it a world of one has nothing to do.
    pub fn sum_grads(
        &mut self,
        comm: &dyn Comm,
        device: Option<&dyn DeviceSum>,
    ) -> anyhow::Result<()> {
        if comm.size() == 1 && device.is_none() {
            return Ok(());
        }
        let (kind, at) = match device {
            Some(_) => {
                let first = self
                    .params
                    .first()
                    .map_or(tch::Kind::Float, |p| p.value.kind());
                let kind = if self.params.iter().all(|p| p.value.kind() == first) {
                    first
                } else {
                    tch::Kind::Float
                };
                let place = self
                    .params
                    .first()
                    .map_or(tch::Device::Cpu, |p| p.value.device());
                (kind, place)
            }
            None => (tch::Kind::Float, tch::Device::Cpu),
        };
        let mut flat = self.flat_grads(kind, at); // [Σ numel + tensors]
        match device {
            Some(d) => d.sum_in_place(&flat)?,
            None => {
                let mut host = Vec::<f32>::try_from(&flat).expect("f32 gradients");
                comm.sum_f32(&mut host);
                flat = Tensor::from_slice(&host);
            }
        }
        self.set_flat_grads(&flat);
        Ok(())
    }

    /// Every gradient end to end in `kind` on `at` (zeros for one this rank
    /// lacks), then one flag per tensor: 1 where this rank has its gradient.
    fn flat_grads(&self, kind: tch::Kind, at: tch::Device) -> Tensor {
        let _guard = tch::no_grad_guard();
        let mut parts: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| {
                let g = p.value.grad();
                if g.defined() {
                    g.to_device(at).to_kind(kind).reshape([-1])
                } else {
                    Tensor::zeros([p.value.numel() as i64], (kind, at))
                }
            })
            .collect();
        let defined: Vec<f32> = self
            .params
            .iter()
            .map(|p| f32::from(u8::from(p.value.grad().defined())))
            .collect();
        parts.push(Tensor::from_slice(&defined).to_device(at).to_kind(kind));
        Tensor::cat(&parts, 0)
    }

    /// Writes the summed [`Optimizer::flat_grads`] buffer back: each tensor
    /// some rank had a gradient for gets the sum (a fresh zero gradient to
    /// write into where this rank had none).
    fn set_flat_grads(&self, flat: &Tensor) {
        let n = self.params.len() as i64;
        let flags = Vec::<f32>::try_from(
            flat.narrow(0, flat.numel() as i64 - n, n)
                .to_kind(tch::Kind::Float)
                .to_device(tch::Device::Cpu),
        )
        .expect("f32 flags");
        let mut at = 0;
        for (p, &flag) in self.params.iter().zip(&flags) {
            let len = p.value.numel() as i64;
            if flag > 0.0 {
                if !p.value.grad().defined() {
                    // This rank's loss did not reach the tensor; another rank's did.
                    (p.value.sum(tch::Kind::Float) * 0.0).backward();
                }
                let _guard = tch::no_grad_guard();
                let mut g = p.value.grad();
                let sum = flat
                    .narrow(0, at, len)
                    .view(p.value.size().as_slice())
                    .to_device(g.device())
                    .to_kind(g.kind());
                g.copy_(&sum);
            }
            at += len;
        }
    }

    /// SHA-256 of every trained tensor's name, kind, shape and bytes (and of
    /// the f32 masters): equal on every rank of a data-parallel run.
    pub fn weights_sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for p in &self.params {
            for (what, t) in
                std::iter::once(("", &p.value)).chain(p.master.iter().map(|m| ("master.", m)))
            {
                h.update(format!("{what}{} {:?} {:?}\n", p.name, t.kind(), t.size()));
                let bytes = t
                    .to_device(tch::Device::Cpu)
                    .contiguous()
                    .view([-1])
                    .view_dtype(tch::Kind::Uint8);
                h.update(Vec::<u8>::try_from(bytes).expect("u8 bytes"));
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `zero_grad`, `backward`, `step`.
    pub fn backward_step(&mut self, loss: &Tensor) {
        self.zero_grad();
        loss.backward();
        self.step();
    }

    /// The moments by name (`exp_avg.<var>`, `exp_avg_sq.<var>`) and the
    /// f32 masters of half-precision weights (`master.<var>`), for a
    /// checkpoint; the step count goes beside them.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            if let Some(master) = &p.master {
                out.push((format!("master.{}", p.name), master.shallow_clone()));
            }
            if let (Some(m), Some(v)) = (&p.exp_avg, &p.exp_avg_sq) {
                out.push((format!("exp_avg.{}", p.name), m.shallow_clone()));
                out.push((format!("exp_avg_sq.{}", p.name), v.shallow_clone()));
            }
        }
        out
    }

    /// Restores what [`state`](Self::state) saved after `steps` steps. Every
    /// moment must name a parameter of this optimizer with its shape and kind.
    pub fn load_state(&mut self, steps: u64, state: Vec<(String, Tensor)>) -> anyhow::Result<()> {
        let mut by_name: BTreeMap<String, Tensor> = state.into_iter().collect();
        for p in &mut self.params {
            let m = by_name.remove(&format!("exp_avg.{}", p.name));
            let v = by_name.remove(&format!("exp_avg_sq.{}", p.name));
            let master = by_name.remove(&format!("master.{}", p.name));
            // Before the first step the master is the weight itself.
            let fresh = steps == 0 && master.is_none();
            anyhow::ensure!(
                fresh || master.is_some() == p.master.is_some(),
                "optimizer state of `{}` {} an f32 master copy, and the {:?} parameter {}",
                p.name,
                if master.is_some() { "has" } else { "lacks" },
                p.value.kind(),
                if p.master.is_some() {
                    "needs one"
                } else {
                    "has none"
                },
            );
            let kind = p.weight().kind();
            for t in m.iter().chain(v.iter()).chain(master.iter()) {
                anyhow::ensure!(
                    t.size() == p.value.size() && t.kind() == kind,
                    "optimizer state of `{}` is {:?} {:?}, the parameter's is {:?} {:?}",
                    p.name,
                    t.kind(),
                    t.size(),
                    kind,
                    p.value.size()
                );
            }
            anyhow::ensure!(
                m.is_some() == v.is_some(),
                "optimizer state of `{}` has one of its two moments",
                p.name
            );
            let device = p.value.device();
            if let Some(master) = master {
                p.master = Some(master.to_device(device));
            }
            p.exp_avg = m.map(|t| t.to_device(device));
            p.exp_avg_sq = v.map(|t| t.to_device(device));
        }
        if let Some(name) = by_name.keys().next() {
            anyhow::bail!("optimizer state `{name}` belongs to no parameter of this model");
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, OptimizerConfig};
    use tch::{Device, Kind};

    /// A small MLP with fixed weights (no global RNG: tests run in parallel).
    fn model(vs: &nn::VarStore) -> nn::Sequential {
        let m = nn::seq()
            .add(nn::linear(vs.root() / "a", 6, 8, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(vs.root() / "b", 8, 1, Default::default()));
        let _guard = tch::no_grad_guard();
        let mut named: Vec<_> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (_, mut t)) in named.into_iter().enumerate() {
            let n = t.numel() as i64;
            let values =
                (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7 + i as f64).sin() * 0.5;
            t.copy_(&values.view(t.size().as_slice()));
        }
        m
    }

    fn loss(m: &nn::Sequential, step: i64) -> Tensor {
        let x = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([4, 6]) / 10.0 + step as f64;
        (m.forward(&x) - 1.0).square().mean(Kind::Float)
    }

    fn params(vs: &nn::VarStore) -> Vec<f64> {
        let mut named: Vec<_> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
            .iter()
            .flat_map(|(_, t)| Vec::<f64>::try_from(t.to_kind(Kind::Double).view([-1])).unwrap())
            .collect()
    }

    /// The same updates as tch's (C++) Adam, to rounding.
    #[test]
    fn adam_matches_libtorch_adam() {
        let ours = nn::VarStore::new(Device::Cpu);
        let theirs = nn::VarStore::new(Device::Cpu);
        let (a, b) = (model(&ours), model(&theirs));
        assert_eq!(params(&ours), params(&theirs));
        let mut opt = Optimizer::new(OptimizerKind::Adam, &ours, 0.01).unwrap();
        let mut reference = nn::Adam::default().build(&theirs, 0.01).unwrap();
        for step in 0..20 {
            opt.backward_step(&loss(&a, step));
            reference.backward_step(&loss(&b, step));
        }
        let (x, y) = (params(&ours), params(&theirs));
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{p} vs {q}");
        }
        // …and it moved them: the comparison is not of two untouched models.
        let fresh = nn::VarStore::new(Device::Cpu);
        let _ = model(&fresh);
        assert!(params(&fresh)
            .iter()
            .zip(&x)
            .any(|(p, q)| (p - q).abs() > 1e-3));
    }

    /// Saving the state after k steps and loading it into a fresh optimizer
    /// continues exactly as the uninterrupted one does.
    #[test]
    fn adam_state_round_trips_exactly() {
        let straight = nn::VarStore::new(Device::Cpu);
        let a = model(&straight);
        let mut opt = Optimizer::new(OptimizerKind::Adam, &straight, 0.01).unwrap();
        for step in 0..10 {
            opt.backward_step(&loss(&a, step));
        }

        let first = nn::VarStore::new(Device::Cpu);
        let b = model(&first);
        let mut o1 = Optimizer::new(OptimizerKind::Adam, &first, 0.01).unwrap();
        for step in 0..4 {
            o1.backward_step(&loss(&b, step));
        }
        let dir = tempfile::tempdir().unwrap();
        let (weights, state) = (
            dir.path().join("w.safetensors"),
            dir.path().join("o.safetensors"),
        );
        first.save(&weights).unwrap();
        Tensor::write_safetensors(&o1.state(), &state).unwrap();
        let steps = o1.steps();
        drop(o1);

        let mut second = nn::VarStore::new(Device::Cpu);
        let c = model(&second);
        second.load(&weights).unwrap();
        let mut o2 = Optimizer::new(OptimizerKind::Adam, &second, 0.01).unwrap();
        o2.load_state(steps, Tensor::read_safetensors(&state).unwrap())
            .unwrap();
        for step in 4..10 {
            o2.backward_step(&loss(&c, step));
        }
        assert_eq!(params(&straight), params(&second));
    }

    /// A [`DeviceSum`] over a world of threads: NCCL's part, on the CPU.
    /// As NCCL's ring does, it adds the ranks' buffers one at a time, each
    /// partial sum computed in f32 and rounded to the buffer's kind (bf16:
    /// one rounding per hop), and every rank ends with the same bits.
    struct ThreadSum<'a>(&'a dyn Comm);

    impl DeviceSum for ThreadSum<'_> {
        fn sum_in_place(&self, t: &Tensor) -> anyhow::Result<()> {
            let size = self.0.size();
            let mine = Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap();
            let all = self.0.gather_f64(&mine, &vec![mine.len(); size]);
            let kind = t.kind();
            let part = |r: usize| Tensor::from_slice(&all[r * mine.len()..(r + 1) * mine.len()]);
            let mut acc = part(0).to_kind(kind);
            for r in 1..size {
                acc = (acc.to_kind(Kind::Float) + part(r).to_kind(Kind::Float)).to_kind(kind);
            }
            t.shallow_clone().copy_(&acc);
            Ok(())
        }
    }

    fn loss_of(m: &nn::Sequential, rows: std::ops::Range<i64>, kind: Kind) -> Tensor {
        let x = Tensor::arange(24, (kind, Device::Cpu)).view([4, 6]) / 10.0;
        let x = x.narrow(0, rows.start, rows.end - rows.start);
        (m.forward(&x) - 1.0).square().mean(Kind::Float)
    }

    /// `ranks` threads, each with its block of the rows, taking five Adam
    /// steps with summed gradients (through `ThreadSum` when `on_device`),
    /// with parameters in `kind`; every rank's weights and hash.
    fn data_parallel(ranks: usize, on_device: bool, kind: Kind) -> Vec<(Vec<f64>, String)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = align_distributed::local::group(ranks)
                .into_iter()
                .map(|comm| {
                    s.spawn(move || {
                        let mut vs = nn::VarStore::new(Device::Cpu);
                        let m = model(&vs);
                        let extra = vs.root().var("unused", &[3], nn::Init::Const(1.0));
                        vs.set_kind(kind);
                        if comm.rank() == 1 {
                            // Rank 1 starts elsewhere: the broadcast undoes it.
                            tch::no_grad(|| {
                                for (_, mut t) in vs.variables() {
                                    let _ = t.g_add_scalar_(0.5);
                                }
                            });
                        }
                        let mut opt = Optimizer::new(OptimizerKind::Adam, &vs, 0.01).unwrap();
                        opt.broadcast_weights(&comm);
                        let rows = distributed_rows(comm.rank(), ranks);
                        let device = ThreadSum(&comm);
                        for _ in 0..5 {
                            opt.zero_grad();
                            // Each rank's share of the step's mean.
                            let share = (rows.end - rows.start) as f64 / 4.0;
                            let mut loss = loss_of(&m, rows.clone(), kind) * share;
                            if comm.rank() == 0 {
                                loss += extra.sum(Kind::Float) * 0.0;
                            }
                            loss.backward();
                            let device = on_device.then_some(&device as &dyn DeviceSum);
                            opt.sum_grads(&comm, device).unwrap();
                            assert!(extra.grad().defined(), "rank {}", comm.rank());
                            opt.step();
                        }
                        let mut named: Vec<_> = vs.variables().into_iter().collect();
                        named.retain(|(n, _)| n != "unused");
                        named.sort_by(|a, b| a.0.cmp(&b.0));
                        let values = named
                            .iter()
                            .flat_map(|(_, t)| {
                                Vec::<f64>::try_from(t.to_kind(Kind::Double).view([-1])).unwrap()
                            })
                            .collect();
                        (values, opt.weights_sha256())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Rank `rank`'s rows of the four.
    fn distributed_rows(rank: usize, ranks: usize) -> std::ops::Range<i64> {
        let r = align_distributed::shard(4, rank, ranks);
        r.start as i64..r.end as i64
    }

    /// Two ranks (threads) that start from different weights and each see
    /// half of the rows: after the broadcast and the summed gradients, their
    /// weights are the same bits, and equal (to rounding) to one process
    /// stepping on all the rows; a rank whose loss misses a tensor still
    /// steps it. The sum on the device gives the host sum's bits.
    #[test]
    fn data_parallel_steps_agree_and_match_one_process() {
        let single = nn::VarStore::new(Device::Cpu);
        let a = model(&single);
        let mut opt = Optimizer::new(OptimizerKind::Adam, &single, 0.01).unwrap();
        for _ in 0..5 {
            opt.backward_step(&loss_of(&a, 0..4, Kind::Float));
        }
        let ranks = data_parallel(2, false, Kind::Float);
        assert_eq!(ranks[0].1, ranks[1].1, "the ranks' weights differ");
        assert_eq!(ranks[0].0, ranks[1].0);
        let want = params(&single);
        let moved = want
            .iter()
            .zip(&params(&{
                let fresh = nn::VarStore::new(Device::Cpu);
                let _ = model(&fresh);
                fresh
            }))
            .any(|(p, q)| (p - q).abs() > 1e-3);
        assert!(moved, "five steps moved the weights");
        for (p, q) in ranks[0].0.iter().zip(&want) {
            assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{p} vs {q}");
        }
        let on_device = data_parallel(2, true, Kind::Float);
        assert_eq!(on_device[0].1, ranks[0].1, "device sum ≠ host sum");
        assert_eq!(on_device[1].1, ranks[0].1);
    }

    /// bf16 parameters: the device sum runs in bf16 (half the bytes). On 2
    /// ranks it gives the bits of the host sum (f32, rounded once to bf16:
    /// two bf16 values add exactly in f32); on 3 it rounds each partial sum,
    /// as NCCL does, so it may differ from the host sum in the last bit of
    /// a gradient, and the ranks still agree. In a world of one the device
    /// path (what the GPU check runs through NCCL) is the identity.
    #[test]
    fn bf16_gradients_sum_on_the_device_in_bf16() {
        let host = data_parallel(2, false, Kind::BFloat16);
        let device = data_parallel(2, true, Kind::BFloat16);
        assert_eq!(host[0].1, host[1].1);
        assert_eq!(device[0].1, device[1].1);
        assert_eq!(device[0].1, host[0].1, "bf16 device sum ≠ host sum");
        let host3 = data_parallel(3, false, Kind::BFloat16);
        let device3 = data_parallel(3, true, Kind::BFloat16);
        assert!(
            device3.iter().all(|r| r.1 == device3[0].1),
            "the 3 ranks differ"
        );
        let apart = device3[0]
            .0
            .iter()
            .zip(&host3[0].0)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0, f64::max);
        eprintln!("3 ranks, bf16: device and host sums end {apart:e} apart");
        // bf16 has 8 significant bits: a rounding moves a gradient by at
        // most 2⁻⁸ of itself, and Adam's steps (lr 0.01) by about lr.
        assert!(apart <= 0.05, "3 ranks: device and host sums {apart} apart");
        let alone = data_parallel(1, false, Kind::BFloat16);
        let alone_device = data_parallel(1, true, Kind::BFloat16);
        assert_eq!(
            alone[0].1, alone_device[0].1,
            "a world of one changed the gradients"
        );
        assert_ne!(alone[0].1, host[0].1, "one rank and two see different rows");
    }

    /// The device path's buffer is in the parameters' kind: a sum that
    /// records what it was handed sees bf16.
    #[test]
    fn the_device_buffer_has_the_gradients_kind() {
        struct Seen(std::sync::Mutex<Vec<Kind>>);
        impl DeviceSum for Seen {
            fn sum_in_place(&self, t: &Tensor) -> anyhow::Result<()> {
                self.0.lock().unwrap().push(t.kind());
                Ok(())
            }
        }
        let mut vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs);
        vs.set_kind(Kind::BFloat16);
        let mut opt = Optimizer::new(OptimizerKind::Adam, &vs, 0.01).unwrap();
        opt.zero_grad();
        loss_of(&m, 0..4, Kind::BFloat16).backward();
        let before: Vec<Tensor> = vs
            .trainable_variables()
            .iter()
            .map(|t| t.grad().copy())
            .collect();
        let seen = Seen(Default::default());
        opt.sum_grads(&align_distributed::Single, Some(&seen))
            .unwrap();
        assert_eq!(*seen.0.lock().unwrap(), [Kind::BFloat16]);
        for (t, b) in vs.trainable_variables().iter().zip(&before) {
            assert!(t.grad().equal(b));
        }
    }

    #[test]
    fn sgd_is_plain_gradient_descent() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = model(&vs);
        let before = params(&vs);
        let mut opt = Optimizer::new(OptimizerKind::Sgd, &vs, 0.1).unwrap();
        opt.zero_grad();
        loss(&a, 0).backward();
        let mut grads: Vec<_> = vs.variables().into_iter().collect();
        grads.sort_by(|x, y| x.0.cmp(&y.0));
        let g: Vec<f64> = grads
            .iter()
            .flat_map(|(_, t)| {
                Vec::<f64>::try_from(t.grad().to_kind(Kind::Double).view([-1])).unwrap()
            })
            .collect();
        opt.step();
        for ((p, q), g) in params(&vs).iter().zip(&before).zip(&g) {
            assert!((p - (q - 0.1 * g)).abs() < 1e-6);
        }
    }

    #[test]
    fn non_finite_gradients_are_seen() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = model(&vs);
        let mut opt = Optimizer::new(OptimizerKind::Adam, &vs, 0.1).unwrap();
        opt.zero_grad();
        loss(&a, 0).backward();
        assert!(opt.grads_finite());
        opt.zero_grad();
        (loss(&a, 0) * f64::INFINITY).backward();
        assert!(!opt.grads_finite());
        assert!(!opt.update_is_finite());
        assert!(Optimizer::new(OptimizerKind::Adam, &vs, f64::NAN).is_err());
    }

    /// Finite gradients, and a learning rate that sends the weights to
    /// infinity: the step is seen to be bad before it changes anything.
    #[test]
    fn an_overflowing_update_is_seen_before_it_is_applied() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let vs = nn::VarStore::new(Device::Cpu);
            let a = model(&vs);
            let mut opt = Optimizer::new(kind, &vs, 1e300).unwrap();
            opt.zero_grad();
            loss(&a, 0).backward();
            assert!(opt.grads_finite());
            let before = params(&vs);
            assert!(!opt.update_is_finite(), "{kind:?}");
            assert_eq!(params(&vs), before, "checking changed nothing");
            let mut sane = Optimizer::new(kind, &vs, 0.01).unwrap();
            sane.zero_grad();
            loss(&a, 0).backward();
            assert!(sane.update_is_finite());
        }
    }

    /// Half-precision weights (largest value 65504) get the exact check:
    /// 60000 + 10⁴ overflows there, where the bound, made for f32, would
    /// let it through.
    #[test]
    fn half_precision_updates_are_checked_exactly() {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _ = vs.root().var("w", &[4], nn::Init::Const(60000.0));
        vs.half();
        let w = vs.variables()["w"].shallow_clone();
        assert_eq!(w.kind(), Kind::Half);
        for (lr, fits) in [(1e4, false), (1.0, true)] {
            let mut opt = Optimizer::new(OptimizerKind::Sgd, &vs, lr).unwrap();
            opt.zero_grad();
            (-w.sum(Kind::Float)).backward();
            assert_eq!(opt.update_is_finite(), fits, "lr {lr}");
        }
    }

    /// bf16 weights train through an f32 master with f32 moments: 100 Adam
    /// steps of lr 1e-4 on weights near 1 move them by about 0.01, the same
    /// as in f32, where updating the bf16 weights in place would round every
    /// step (1e-4, below bf16's 2⁻⁸ spacing at 1) away. The state saved
    /// after 40 steps resumes to the same weights bit for bit.
    #[test]
    fn bf16_weights_train_in_mixed_precision_and_resume_exactly() {
        let make = |kind: Kind| {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let _ = vs.root().var("w", &[64], nn::Init::Const(1.0));
            vs.set_kind(kind);
            let w = vs.variables()["w"].shallow_clone();
            assert_eq!(w.kind(), kind);
            (vs, w)
        };
        let target = (Tensor::arange(64, (Kind::Float, Device::Cpu)) / 64.0 - 0.5) * 4.0;
        let train = |vs: &nn::VarStore, w: &Tensor, opt: &mut Optimizer, steps: usize| {
            for _ in 0..steps {
                opt.zero_grad();
                (w.to_kind(Kind::Float) - &target)
                    .square()
                    .sum(Kind::Float)
                    .backward();
                assert!(opt.update_is_finite());
                opt.step();
            }
            let _ = vs;
        };
        let (vs32, w32) = make(Kind::Float);
        let mut opt32 = Optimizer::new(OptimizerKind::Adam, &vs32, 1e-4).unwrap();
        train(&vs32, &w32, &mut opt32, 100);
        let (vs16, w16) = make(Kind::BFloat16);
        let mut opt16 = Optimizer::new(OptimizerKind::Adam, &vs16, 1e-4).unwrap();
        train(&vs16, &w16, &mut opt16, 40);
        // Copies: `state` shares the optimizer's tensors, which train on.
        let state: Vec<(String, Tensor)> = opt16
            .state()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        assert!(state.iter().all(|(_, t)| t.kind() == Kind::Float));
        assert_eq!(state.len(), 3, "master and two moments");
        let saved = w16.copy();
        train(&vs16, &w16, &mut opt16, 60);
        assert_eq!(w16.kind(), Kind::BFloat16);
        // The f32 trajectory, rounded: within one bf16 spacing (2⁻⁷ in [1, 2)).
        let moved = (w16.to_kind(Kind::Float) - 1.0).abs().mean(Kind::Float);
        let apart = (w16.to_kind(Kind::Float) - &w32).abs().max();
        let (moved, apart) = (moved.double_value(&[]), apart.double_value(&[]));
        assert!(moved > 0.005, "bf16 weights moved {moved} on average");
        assert!(
            apart <= 1.0 / 128.0,
            "bf16 weights {apart} from the f32 ones"
        );

        let (vs2, mut w2) = make(Kind::BFloat16);
        tch::no_grad(|| w2.copy_(&saved));
        let mut opt2 = Optimizer::new(OptimizerKind::Adam, &vs2, 1e-4).unwrap();
        opt2.load_state(40, state).unwrap();
        train(&vs2, &w2, &mut opt2, 60);
        assert!(w2.equal(&w16), "resumed bf16 weights differ");
    }
}
