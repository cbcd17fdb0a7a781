//! Every loss's autograd gradient matches a central finite difference (f64).

use align_core::{GroupInputs, Pairs};
use tch::{Kind, Tensor};

const P: i64 = 2;
const N: i64 = 4;

fn inputs(policy: &Tensor, reference: Option<&Tensor>) -> GroupInputs {
    let t = |xs: &[f64]| Tensor::from_slice(xs).view([P, N]);
    GroupInputs {
        policy_logp: policy.shallow_clone(),
        proposal_logp: t(&[-1.4, -0.8, -2.2, -1.9, -0.6, -1.1, -2.7, -1.5]),
        prior_logp: t(&[-1.2, -1.0, -2.0, -1.7, -0.9, -1.3, -2.2, -1.0]),
        log_goodness: t(&[0.4, -0.2, 1.1, 0.0, -0.5, 0.8, 0.3, 1.4]),
        reward: t(&[0.4, -0.2, 1.1, 0.0, -0.5, 0.8, 0.3, 1.4]),
        lengths: t(&[3.0, 5.0, 2.0, 4.0, 6.0, 1.0, 3.0, 2.0]),
        reference_policy_logp: reference.map(Tensor::shallow_clone),
    }
}

/// Checks ∂loss/∂policy_logp (and ∂/∂reference_logp when given) against
/// (f(x + h) − f(x − h)) / 2h for every coordinate.
fn check(name: &str, loss: impl Fn(&GroupInputs) -> Tensor, with_reference: bool) {
    let x0: Vec<f64> = vec![-1.0, -1.7, -2.4, -0.9, -0.7, -1.6, -2.1, -1.2];
    let r0: Vec<f64> = vec![-2.5, -3.1];
    let policy = Tensor::from_slice(&x0).view([P, N]).set_requires_grad(true);
    let reference = Tensor::from_slice(&r0).set_requires_grad(true);
    let l = loss(&inputs(&policy, with_reference.then_some(&reference)));
    let mut vars = vec![&policy];
    if with_reference {
        vars.push(&reference);
    }
    let grads = Tensor::run_backward(&[l], &vars, false, false);
    let h = 1e-6;
    let eval = |x: &[f64], r: &[f64]| {
        let p = Tensor::from_slice(x).view([P, N]);
        let rf = Tensor::from_slice(r);
        loss(&inputs(&p, with_reference.then_some(&rf))).double_value(&[])
    };
    for i in 0..x0.len() {
        let (mut up, mut down) = (x0.clone(), x0.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (eval(&up, &r0) - eval(&down, &r0)) / (2.0 * h);
        let ad = grads[0].view([-1]).double_value(&[i as i64]);
        assert!(
            (fd - ad).abs() < 1e-7 * (1.0 + fd.abs()),
            "{name}: ∂/∂policy_logp[{i}] autograd {ad} vs finite difference {fd}"
        );
    }
    if with_reference {
        for i in 0..r0.len() {
            let (mut up, mut down) = (r0.clone(), r0.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (eval(&x0, &up) - eval(&x0, &down)) / (2.0 * h);
            let ad = grads[1].double_value(&[i as i64]);
            assert!(
                (fd - ad).abs() < 1e-7 * (1.0 + fd.abs()),
                "{name}: ∂/∂reference_logp[{i}] autograd {ad} vs finite difference {fd}"
            );
        }
    }
}

#[test]
fn brain_every_variant() {
    use brain::{brain_loss, Baseline, Target};
    for baseline in [
        Baseline::SelfNormalized,
        Baseline::None,
        Baseline::Importance,
    ] {
        for target in [Target::Softmax, Target::Argmax] {
            check(
                &format!("brain {baseline:?} {target:?}"),
                |i| brain_loss(i, baseline, target).0,
                false,
            );
        }
    }
}

#[test]
fn brain_length_normalised() {
    use align_core::Estimator;
    let config = brain::BrainConfig {
        n: N,
        baseline: brain::Baseline::SelfNormalized,
        target: brain::Target::Softmax,
        refresh_every: 0,
        length_normalize: true,
        prior_fraction: 0.0,
    };
    let est = brain::Brain(config);
    check("brain length-normalised", |i| est.loss(i).0, false);
}

#[test]
fn dpo_with_label_smoothing_and_both_pairings() {
    for pairs in [Pairs::BestVsWorst, Pairs::All] {
        for label_smoothing in [0.0, 0.1] {
            let config = dpo::DpoConfig {
                source: dpo::PairSource::SftSampleRank,
                beta: 0.7,
                label_smoothing,
                n: N,
                pairs,
            };
            check(
                &format!("dpo {pairs:?} ε={label_smoothing}"),
                |i| dpo::dpo_group_loss(i, &config).0,
                false,
            );
        }
    }
}

#[test]
fn rso_both_losses() {
    for loss in [rso::RsoLoss::SigmoidNorm, rso::RsoLoss::HingeNorm] {
        for pairs in [rso::RsoPairs::Consecutive, rso::RsoPairs::All] {
            // γ large enough that the hinge is active on some pairs and not others.
            let config = rso::RsoConfig {
                candidates: 64,
                accepted: N,
                beta: 0.5,
                gamma: 0.9,
                loss,
                pairs,
            };
            check(
                &format!("rso {loss:?} {pairs:?}"),
                |i| rso::rso_loss(i, &config).0,
                false,
            );
        }
    }
}

#[test]
fn slic() {
    let config = slic::SlicConfig {
        delta: 1.0,
        lambda: 0.3,
        m: N,
        pairs: Pairs::All,
    };
    check("slic", |i| slic::slic_loss(i, &config).0, true);
}

#[test]
fn losses_are_not_trivially_flat() {
    // Guard against a check that passes because everything is zero.
    let policy = Tensor::from_slice(&[-1.0, -1.7, -2.4, -0.9, -0.7, -1.6, -2.1, -1.2])
        .view([P, N])
        .set_requires_grad(true);
    let (l, _) = brain::brain_loss(
        &inputs(&policy, None),
        brain::Baseline::SelfNormalized,
        brain::Target::Softmax,
    );
    l.backward();
    assert!(policy.grad().abs().sum(Kind::Double).double_value(&[]) > 0.1);
}
