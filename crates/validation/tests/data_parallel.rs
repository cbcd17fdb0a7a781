//! What data-parallel ranks compute adds up to the single process's step,
//! for every estimator: a step's prompts split in two parts (1 and 3 of 4,
//! with unequal shares of the valid pairs: ties drop pairs), each part's
//! share of every mean of its loss (`loss_means`, weighed by its terms over
//! both parts' terms) has a value and gradient that, summed, equal the whole
//! step's `loss` and its gradient (f64, to 1e-12).

use align_core::{Estimator, GroupInputs, Pairs};
use tch::{Kind, Tensor};

const P: i64 = 4;
const N: i64 = 4;

/// Rewards with ties: prompt 0 has 6 ordered pairs, prompt 1 none, prompt
/// 2 three, prompt 3 five.
const REWARD: [f64; 16] = [
    0.4, -0.2, 1.1, 0.0, //
    0.5, 0.5, 0.5, 0.5, //
    0.0, 0.0, 0.0, 0.9, //
    0.3, 0.3, -1.0, 1.4,
];

fn inputs(policy: &Tensor, reference: &Tensor, rows: std::ops::Range<i64>) -> GroupInputs {
    let (first, len) = (rows.start, rows.end - rows.start);
    let t = |xs: Vec<f64>| Tensor::from_slice(&xs).view([P, N]).narrow(0, first, len);
    let wave = |a: f64, b: f64| {
        (0..P * N)
            .map(|i| a + b * ((i * 7 % 11) as f64 / 11.0))
            .collect()
    };
    GroupInputs {
        policy_logp: policy.narrow(0, first, len),
        proposal_logp: t(wave(-2.0, 1.3)),
        prior_logp: t(wave(-1.8, 1.1)),
        log_goodness: t(wave(-0.5, 1.6)),
        reward: t(REWARD.to_vec()),
        lengths: t((0..P * N).map(|i| (1 + i % 5) as f64).collect()),
        reference_policy_logp: Some(reference.narrow(0, first, len)),
    }
}

fn check(name: &str, est: &dyn Estimator) {
    let x: Vec<f64> = (0..P * N)
        .map(|i| -1.0 - 0.37 * ((i * 5 % 13) as f64 / 13.0))
        .collect();
    let policy = Tensor::from_slice(&x).view([P, N]).set_requires_grad(true);
    let reference = Tensor::from_slice(&[-2.5, -3.1, -1.9, -2.2]).set_requires_grad(true);
    // Gradients by policy_logp and reference_logp (zeros where unused).
    let grads = |loss: Tensor| -> Vec<Tensor> {
        let vars = [&policy, &reference];
        Tensor::run_backward(&[loss], &vars, false, false)
            .into_iter()
            .zip(vars)
            .map(|(g, v)| if g.defined() { g } else { v.zeros_like() })
            .collect()
    };

    let (whole, _) = est.loss(&inputs(&policy, &reference, 0..P));
    let want = whole.double_value(&[]);
    let want_grads = grads(whole);

    let parts: Vec<_> = [0..1, 1..P]
        .into_iter()
        .map(|rows| est.loss_means(&inputs(&policy, &reference, rows)).0)
        .collect();
    let terms = parts[0].counts().len();
    let totals: Vec<f64> = (0..terms)
        .map(|k| parts.iter().map(|p| p.counts()[k]).sum())
        .collect();
    let mut got = 0.0;
    let mut got_grads: Option<Vec<Tensor>> = None;
    for part in &parts {
        let share = part.share_of(&totals);
        got += share.double_value(&[]);
        let g = grads(share);
        got_grads = Some(match got_grads {
            None => g,
            Some(acc) => acc.iter().zip(&g).map(|(a, b)| a + b).collect(),
        });
    }
    assert!(
        (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
        "{name}: the parts' losses add up to {got}, the step's is {want}"
    );
    for (i, (g, w)) in got_grads.unwrap().iter().zip(&want_grads).enumerate() {
        let gap = (g - w).abs().max().double_value(&[]);
        assert!(gap <= 1e-12, "{name}: gradient {i} differs by {gap:e}");
    }
    assert!(
        want_grads[0].abs().sum(Kind::Double).double_value(&[]) > 1e-3,
        "{name}: a flat loss checks nothing"
    );
}

#[test]
fn every_estimators_shares_add_up_to_its_step() {
    for baseline in [brain::Baseline::SelfNormalized, brain::Baseline::Importance] {
        for length_normalize in [false, true] {
            let est = brain::Brain(brain::BrainConfig {
                n: N,
                baseline,
                target: brain::Target::Softmax,
                refresh_every: 0,
                length_normalize,
                prior_fraction: 0.0,
            });
            check(&format!("brain {baseline:?} {length_normalize}"), &est);
        }
    }
    for pairs in [Pairs::BestVsWorst, Pairs::All] {
        let est = dpo::Dpo(dpo::DpoConfig {
            source: dpo::PairSource::SftSampleRank,
            beta: 0.7,
            label_smoothing: 0.1,
            n: N,
            pairs,
        });
        check(&format!("dpo {pairs:?}"), &est);
    }
    for pairs in [rso::RsoPairs::Consecutive, rso::RsoPairs::All] {
        let est = rso::Rso(rso::RsoConfig {
            candidates: 64,
            accepted: N,
            beta: 0.5,
            gamma: 0.9,
            loss: rso::RsoLoss::SigmoidNorm,
            pairs,
        });
        check(&format!("rso {pairs:?}"), &est);
    }
    let est = slic::Slic(slic::SlicConfig {
        delta: 1.0,
        lambda: 0.3,
        m: N,
        pairs: Pairs::All,
    });
    check("slic", &est);
}

/// The default (one mean over the prompts) is wrong for a pair mean: the
/// check above can fail.
#[test]
fn a_pair_mean_weighed_by_prompts_does_not_add_up() {
    struct ByPrompts(dpo::Dpo);
    impl Estimator for ByPrompts {
        fn plan(&self) -> align_core::DataPlan {
            self.0.plan()
        }
        fn loss(&self, inputs: &GroupInputs) -> (Tensor, align_core::Metrics) {
            self.0.loss(inputs)
        }
    }
    let est = ByPrompts(dpo::Dpo(dpo::DpoConfig {
        source: dpo::PairSource::SftSampleRank,
        beta: 0.7,
        label_smoothing: 0.0,
        n: N,
        pairs: Pairs::All,
    }));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check("dpo", &est)));
    assert!(caught.is_err());
}
