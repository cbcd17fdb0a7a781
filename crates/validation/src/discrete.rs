//! A policy `q_θ = softmax(θ)` over `M` outputs, proposal `Q`, unnormalised
//! target `p·G`; every tuple of `n` proposal samples is enumerable.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::{mean_and_variance, per_replicate_gradients};
use brain::Baseline;

pub struct Toy {
    /// Policy logits θ `[M]`.
    pub theta: Vec<f64>,
    /// Proposal probabilities `[M]`.
    pub proposal: Vec<f64>,
    /// Unnormalised log target `log p + log G` `[M]`.
    pub log_target: Vec<f64>,
    /// Samples per tuple.
    pub n: usize,
}

fn t(xs: &[f64]) -> Tensor {
    Tensor::from_slice(xs).to_kind(Kind::Double)
}

impl Toy {
    /// The default toy of the validation suite: 4 outputs, n = 3.
    pub fn standard() -> Toy {
        Toy {
            theta: vec![0.3, -0.2, 0.5, -0.6],
            proposal: vec![0.1, 0.4, 0.3, 0.2],
            log_target: vec![-1.0, 0.4, -0.3, 0.9],
            n: 3,
        }
    }

    fn m(&self) -> usize {
        self.theta.len()
    }

    /// All `M^n` tuples `[T, n]` (i64) and their probabilities under `Q^n` `[T]`.
    pub fn tuples(&self) -> (Tensor, Tensor) {
        let (m, n) = (self.m(), self.n);
        let count = m.pow(n as u32);
        let mut ids = Vec::with_capacity(count * n);
        let mut probs = Vec::with_capacity(count);
        for mut code in 0..count {
            let mut prob = 1.0;
            for _ in 0..n {
                let y = code % m;
                code /= m;
                ids.push(y as i64);
                prob *= self.proposal[y];
            }
            probs.push(prob);
        }
        (
            Tensor::from_slice(&ids).view([count as i64, n as i64]),
            t(&probs),
        )
    }

    /// `R` tuples drawn i.i.d. from `Q^n` with a fixed seed `[R, n]`.
    pub fn draws(&self, r: usize, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids: Vec<i64> = (0..r * self.n)
            .map(|_| {
                let u: f64 = rng.random();
                let mut acc = 0.0;
                self.proposal
                    .iter()
                    .position(|&q| {
                        acc += q;
                        u < acc
                    })
                    .unwrap_or(self.m() - 1) as i64
            })
            .collect();
        Tensor::from_slice(&ids).view([r as i64, self.n as i64])
    }

    /// Per-tuple estimator gradients `[R, M]` for the tuples `ys` `[R, n]`.
    pub fn gradients(&self, ys: &Tensor, baseline: Baseline) -> Tensor {
        let r = ys.size()[0];
        let theta = t(&self.theta)
            .unsqueeze(0)
            .repeat([r, 1])
            .set_requires_grad(true); // [R, M]
        let log_q = theta.log_softmax(-1, Kind::Double); // [R, M]
        let policy_logp = log_q.gather(1, ys, false); // [R, n]
        let proposal_logp = t(&self.proposal)
            .log()
            .index_select(0, &ys.view([-1]))
            .view_as(ys.to_kind(Kind::Double).as_ref());
        let target_logp = t(&self.log_target)
            .index_select(0, &ys.view([-1]))
            .view([r, self.n as i64]);
        per_replicate_gradients(
            &theta,
            &policy_logp,
            &proposal_logp.view([r, self.n as i64]),
            &target_logp,
            baseline,
        )
    }

    /// `E_{y_1:n ~ Q}[KL(α ‖ β)]` as a function of θ, by enumeration, written
    /// independently of the estimator code: `Σ α (log α − log β)`.
    fn self_normalised_kl(&self, theta: &Tensor) -> Tensor {
        let (ys, probs) = self.tuples();
        let shape = [ys.size()[0], self.n as i64];
        let flat = ys.view([-1]);
        let log_q_all = theta.log_softmax(-1, Kind::Double);
        let log_q = log_q_all.index_select(0, &flat).view(shape);
        let log_big_q = t(&self.proposal).log().index_select(0, &flat).view(shape);
        let log_w = t(&self.log_target).index_select(0, &flat).view(shape) - &log_big_q;
        let log_alpha = log_w.log_softmax(-1, Kind::Double);
        let log_beta = (log_q - log_big_q).log_softmax(-1, Kind::Double);
        let kl = (log_alpha.exp() * (log_alpha - log_beta)).sum_dim_intlist(
            [-1].as_slice(),
            false,
            None,
        );
        (kl * probs).sum(Kind::Double)
    }

    /// Exact ∇θ of the expected self-normalised KL `[M]`.
    pub fn exact_sn_kl_gradient(&self) -> Tensor {
        let theta = t(&self.theta).set_requires_grad(true);
        let f = self.self_normalised_kl(&theta);
        Tensor::run_backward(&[f], &[&theta], false, false).remove(0)
    }

    /// Exact ∇θ KL(posterior ‖ q_θ) `[M]`, posterior ∝ exp(log_target).
    pub fn exact_kl_gradient(&self) -> Tensor {
        let theta = t(&self.theta).set_requires_grad(true);
        let log_post = t(&self.log_target).log_softmax(-1, Kind::Double);
        let kl =
            (log_post.exp() * (&log_post - theta.log_softmax(-1, Kind::Double))).sum(Kind::Double);
        Tensor::run_backward(&[kl], &[&theta], false, false).remove(0)
    }

    /// Exact expectation over all tuples of an estimator's gradient `[M]`.
    pub fn expected_gradient(&self, baseline: Baseline) -> Tensor {
        let (ys, probs) = self.tuples();
        (self.gradients(&ys, baseline) * probs.unsqueeze(1)).sum_dim_intlist(
            [0].as_slice(),
            false,
            Kind::Double,
        )
    }
}

/// Monte-Carlo summary of one estimator on the toy.
pub struct McSummary {
    pub mean: Tensor,
    /// Standard error of each coordinate of the mean.
    pub standard_error: Tensor,
    /// Trace of the per-draw gradient covariance.
    pub variance: f64,
}

pub fn monte_carlo(toy: &Toy, baseline: Baseline, draws: usize, seed: u64) -> McSummary {
    let g = toy.gradients(&toy.draws(draws, seed), baseline); // [R, M]
    let (mean, variance) = mean_and_variance(&g);
    let standard_error = (g.var_dim([0].as_slice(), true, false) / draws as f64).sqrt();
    McSummary {
        mean,
        standard_error,
        variance,
    }
}

/// L2 norm of `a − b`.
pub fn distance(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).square().sum(Kind::Double).sqrt().double_value(&[])
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double)).expect("f64 tensor")
}

/// Exact mean `[M]` and total variance of an estimator's gradient over every
/// tuple (no Monte-Carlo error).
pub fn exact_moments(toy: &Toy, baseline: Baseline) -> (Tensor, f64) {
    let (ys, probs) = toy.tuples();
    let g = toy.gradients(&ys, baseline); // [T, M]
    let w = probs.unsqueeze(1);
    let mean = (&g * &w).sum_dim_intlist([0].as_slice(), false, Kind::Double);
    let second = (g.square() * &w).sum(Kind::Double).double_value(&[]);
    let variance = second - mean.square().sum(Kind::Double).double_value(&[]);
    (mean, variance)
}
