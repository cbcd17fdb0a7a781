//! RLOO's gradient is unbiased for `∇ (E_q[r] − τ·KL(q‖p))`: on a softmax
//! policy over 4 outputs, every tuple of n = 3 on-policy samples is
//! enumerated, and the probability-weighted mean of the estimator's autograd
//! gradient equals the exact gradient of the objective.

use align_core::GroupInputs;
use rloo::{rloo_loss, RlooConfig};
use tch::{Kind, Tensor};

// Far from the optimum q* ∝ p·exp(r/τ), so the gradient is large.
const THETA: [f64; 4] = [-1.0, 1.5, -0.5, 0.8];
const LOG_PRIOR: [f64; 4] = [-1.2, -1.0, -2.1, -1.4];
const REWARD: [f64; 4] = [0.4, -0.3, 1.1, 0.2];
const TAU: f64 = 0.7;
const N: usize = 3;

fn t(xs: &[f64]) -> Tensor {
    Tensor::from_slice(xs)
}

/// `−(E_q[r] − τ KL(q‖p))` and its exact gradient in θ.
fn exact_gradient() -> Tensor {
    let theta = t(&THETA).set_requires_grad(true);
    let log_q = theta.log_softmax(-1, Kind::Double);
    let j = (log_q.exp() * (t(&REWARD) - (&log_q - t(&LOG_PRIOR)) * TAU)).sum(Kind::Double);
    Tensor::run_backward(&[-j], &[&theta], false, false).remove(0)
}

/// The estimator's gradient averaged over every tuple, weighted by its
/// probability under q^n.
fn expected_estimator_gradient(config: &RlooConfig, log_goodness_scale: f64) -> Tensor {
    let m = THETA.len();
    let count = m.pow(N as u32);
    let ids: Vec<i64> = (0..count)
        .flat_map(|code| (0..N).map(move |k| ((code / m.pow(k as u32)) % m) as i64))
        .collect();
    let ys = Tensor::from_slice(&ids).view([count as i64, N as i64]); // [T, n]
                                                                      // One copy of θ per tuple, so each tuple's gradient can be read apart.
    let theta = t(&THETA)
        .unsqueeze(0)
        .repeat([count as i64, 1])
        .set_requires_grad(true); // [T, M]
    let log_q = theta.log_softmax(-1, Kind::Double); // [T, M]
    let policy_logp = log_q.gather(1, &ys, false); // [T, n]
    let pick = |xs: &[f64]| {
        t(xs)
            .index_select(0, &ys.view([-1]))
            .view([count as i64, N as i64])
    };
    let reward = pick(&REWARD);
    let inputs = GroupInputs {
        proposal_logp: policy_logp.detach(), // on-policy
        prior_logp: pick(&LOG_PRIOR),
        log_goodness: &reward * log_goodness_scale,
        lengths: reward.ones_like(),
        reward,
        policy_logp,
        reference_policy_logp: None,
    };
    let (loss, _) = rloo_loss(&inputs, config);
    // The loss is a mean over tuples: T × ∂loss/∂θ_t is tuple t's gradient.
    let per_tuple = Tensor::run_backward(&[loss], &[&theta], false, false).remove(0) * count as f64;
    let probs = log_q
        .detach()
        .gather(1, &ys, false)
        .sum_dim_intlist([-1].as_slice(), false, None)
        .exp(); // [T]: q^n of each tuple
    assert!((probs.sum(Kind::Double).double_value(&[]) - 1.0).abs() < 1e-12);
    (per_tuple * probs.unsqueeze(1)).sum_dim_intlist([0].as_slice(), false, None)
}

fn config(tau: Option<f64>) -> RlooConfig {
    RlooConfig {
        n: N as i64,
        tau,
        refresh_every: 1,
        clip: 0.2,
    }
}

#[test]
fn expected_gradient_is_the_regularised_objectives() {
    let exact = exact_gradient();
    let got = expected_estimator_gradient(&config(Some(TAU)), 0.0);
    assert!(
        got.allclose(&exact, 1e-10, 1e-12, false),
        "RLOO {got:?} vs exact {exact:?}"
    );
    // Not a trivial identity: the exact gradient is far from zero.
    assert!(exact.abs().max().double_value(&[]) > 0.05);
}

/// With `tau` unset the goodness model sets the target: `log G = r/τ` gives
/// the same direction, in units of τ.
#[test]
fn goodness_target_is_the_same_objective_in_units_of_tau() {
    let exact = exact_gradient() / TAU;
    let got = expected_estimator_gradient(&config(None), 1.0 / TAU);
    assert!(
        got.allclose(&exact, 1e-10, 1e-12, false),
        "RLOO {got:?} vs exact/τ {exact:?}"
    );
}
