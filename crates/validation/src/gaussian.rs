//! The BRAIn paper's Gaussian toy: posterior N(0, 1), policy q_θ = N(θ, 1) at
//! θ = 1, proposal N(μ, 1), n = 8 samples. The exact gradient of
//! KL(posterior ‖ q_θ) = θ²/2 is θ = 1.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::{mean_and_variance, per_replicate_gradients};
use brain::Baseline;

fn log_normal(y: &Tensor, mean: &Tensor) -> Tensor {
    -(y - mean).square() * 0.5 - 0.5 * (2.0 * std::f64::consts::PI).ln()
}

/// Gradient draws `[R]` of one estimator for proposal mean `mu`.
pub fn gradient_draws(
    mu: f64,
    theta: f64,
    n: usize,
    replicates: usize,
    baseline: Baseline,
    seed: u64,
) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Box–Muller from the seeded stream, so the table is identical everywhere.
    let normals: Vec<f64> = (0..replicates * n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    let shape = [replicates as i64, n as i64];
    let y = Tensor::from_slice(&normals).view(shape) + mu; // [R, n] ~ N(μ, 1)
    let theta_t = Tensor::full(
        [replicates as i64, 1],
        theta,
        (Kind::Double, tch::Device::Cpu),
    )
    .set_requires_grad(true);
    let policy_logp = log_normal(&y, &theta_t); // [R, n]
    let proposal_logp = log_normal(&y, &Tensor::from(mu));
    let target_logp = log_normal(&y, &Tensor::from(0.0));
    per_replicate_gradients(
        &theta_t,
        &policy_logp,
        &proposal_logp,
        &target_logp,
        baseline,
    )
    .view([-1])
}

/// `(mean, variance)` of an estimator's gradient for proposal mean `mu`.
pub fn gradient_stats(
    mu: f64,
    n: usize,
    replicates: usize,
    baseline: Baseline,
    seed: u64,
) -> (f64, f64) {
    let g = gradient_draws(mu, 1.0, n, replicates, baseline, seed).unsqueeze(1);
    let (mean, var) = mean_and_variance(&g);
    (mean.double_value(&[0]), var)
}
