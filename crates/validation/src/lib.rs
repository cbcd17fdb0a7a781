//! Numerical checks of the estimators on toys where the answer is known:
//!
//! - [`discrete`]: a policy that is a softmax over `M` outputs, where every
//!   tuple of `n` samples can be enumerated, so the exact gradient of the
//!   self-normalised KL and of KL(posterior‖policy) are computable and the
//!   Monte-Carlo gradients of BRAIn, DPG and GDC++ can be compared with them.
//! - [`gaussian`]: the Gaussian toy of the BRAIn paper (posterior N(0,1),
//!   policy N(1,1), proposal N(μ,1), n = 8): gradient variance against proposal
//!   mismatch.
//!
//! Every gradient here is the autograd gradient of the estimator crates' own
//! loss functions, so these checks test the code that trains.

pub mod discrete;
pub mod gaussian;

use brain::{brain_loss, Baseline, Target};
use tch::{Kind, Tensor};

/// The three weightings ALGORITHMS.md compares.
pub const VARIANTS: [(&str, Baseline); 3] = [
    ("BRAIn (self-normalized)", Baseline::SelfNormalized),
    ("DPG (none)", Baseline::None),
    ("GDC++ (importance)", Baseline::Importance),
];

/// Per-replicate gradients: `policy_logp` `[R, n]` is a function of the
/// parameters `theta` `[R, d]` (one copy per replicate); BRAIn's loss is a
/// mean over replicates, so R × ∂loss/∂θ_r is replicate r's own gradient.
pub fn per_replicate_gradients(
    theta: &Tensor,
    policy_logp: &Tensor,
    proposal_logp: &Tensor,
    target_logp: &Tensor,
    baseline: Baseline,
) -> Tensor {
    let r = policy_logp.size()[0];
    let inputs = align_core::GroupInputs {
        policy_logp: policy_logp.shallow_clone(),
        proposal_logp: proposal_logp.shallow_clone(),
        prior_logp: target_logp.shallow_clone(),
        log_goodness: target_logp.zeros_like(),
        reward: target_logp.zeros_like(),
        lengths: target_logp.ones_like(),
        reference_policy_logp: None,
    };
    let (loss, _) = brain_loss(&inputs, baseline, Target::Softmax);
    let grad = Tensor::run_backward(&[loss], &[theta], false, false).remove(0);
    grad * r as f64
}

/// Mean `[d]`, and total variance (trace of the covariance) of `[R, d]` draws.
pub fn mean_and_variance(draws: &Tensor) -> (Tensor, f64) {
    let mean = draws.mean_dim([0].as_slice(), false, Kind::Double);
    let var = draws
        .var_dim([0].as_slice(), true, false)
        .sum(Kind::Double)
        .double_value(&[]);
    (mean, var)
}
