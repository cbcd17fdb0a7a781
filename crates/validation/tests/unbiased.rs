//! BRAIn's gradient is an unbiased estimate of the gradient of the
//! self-normalised KL: the Monte-Carlo mean over many draws matches the exact
//! gradient computed by enumerating every tuple of samples.

use brain::Baseline;
use validation::discrete::{monte_carlo, to_vec, Toy};

#[test]
fn exact_expectation_of_brain_gradient_is_the_sn_kl_gradient() {
    // Enumerating tuples: the expectation of the per-tuple gradient equals the
    // gradient of the enumerated objective (linearity; checks both code paths).
    let toy = Toy::standard();
    let expected = to_vec(&toy.expected_gradient(Baseline::SelfNormalized));
    let exact = to_vec(&toy.exact_sn_kl_gradient());
    for (e, x) in expected.iter().zip(&exact) {
        assert!(
            (e - x).abs() < 1e-12,
            "E[g] = {expected:?}, ∇ E[KL(α‖β)] = {exact:?}"
        );
    }
}

#[test]
fn monte_carlo_mean_matches_within_statistical_tolerance() {
    let toy = Toy::standard();
    let exact = to_vec(&toy.exact_sn_kl_gradient());
    let mc = monte_carlo(&toy, Baseline::SelfNormalized, 200_000, 11);
    let (mean, se) = (to_vec(&mc.mean), to_vec(&mc.standard_error));
    // Each coordinate within 4.5 standard errors (a false alarm on any of the
    // 4 coordinates has probability < 3e-5 under a normal approximation).
    for i in 0..mean.len() {
        let z = (mean[i] - exact[i]) / se[i];
        assert!(
            z.abs() < 4.5,
            "coordinate {i}: MC {} vs exact {} (z = {z:.2}, se {})",
            mean[i],
            exact[i],
            se[i]
        );
    }
    // And the tolerance is tight enough to catch a wrong estimator: DPG's
    // expected gradient is measurably different from ∇ sn-KL on this toy.
    let dpg = to_vec(&toy.expected_gradient(Baseline::None));
    let far = (0..mean.len()).any(|i| ((dpg[i] - exact[i]) / se[i]).abs() > 10.0);
    assert!(
        far,
        "the check could not tell DPG {dpg:?} from BRAIn {exact:?}"
    );
}
